"""Attention in FP8 (e4m3, one scale per tensor) through cuDNN's fused FP8 SDPA.

Hopper's tensor cores run FP8 products at twice the bf16 rate, and attention is about 40 % of
a DiT step on an H200 (docs/benchmarks.md, "Where a step's time goes"). torch's SDPA takes no
float8 inputs, so the kernel is reached through the cuDNN frontend (the optional
`nvidia-cudnn-frontend` package, `pip install longtake[cudnn]`). The DiT's precision
"fp8-attention" runs its self-attention here (`attend`: q quantised as it is made, the keys and
values already in e4m3 in their caches); `CudnnFp8Attention.__call__` quantises bf16 inputs
itself, for measurements (`pipeline.model.attention`'s "fp8" backend).

What one call computes, every tensor x held as x8 = e4m3(x · m_x) with a power-of-two
multiplier m_x (exact to apply and to undo) chosen from the tensor's largest magnitude:

    S  = (Q8 · K8ᵀ) · attn_scale / (m_q · m_k)       float32, per head
    P  = softmax(S), its numerators quantised as e4m3(· P_SCALE) before the product with V
    O  = (P8 · V8) / m_v                              float32
    O8 = e4m3(O · m_o)                                (on Hopper the kernel writes O in FP8)

Every row of O is a convex combination of V's rows, so |O| ≤ max |V| and m_o = m_v can never
saturate. `emulate` computes the same on any device in float32 (one softmax per row, where the
kernel's is online, block by block): the reference for tests and for error estimates.
"""

from __future__ import annotations

import math
from typing import Any

import torch

E4M3_MAX = 448.0
P_SCALE = 256.0
"""The softmax numerators lie in (0, 1]: a power of two below E4M3_MAX keeps them off the top of
the range (where e4m3 rounds coarsest) and well above its subnormals."""


def pow2_multiplier(amax: torch.Tensor) -> torch.Tensor:
    """The largest power of two m with amax · m ≤ E4M3_MAX (float32, on amax's device; 1 for an
    all-zero tensor). Computed on the device: no host synchronisation."""
    amax = amax.float().clamp_min(torch.finfo(torch.float32).tiny)
    return torch.exp2(torch.floor(torch.log2(E4M3_MAX / amax))).clamp(max=2.0**100)


def quantize(x: torch.Tensor, multiplier: torch.Tensor | float) -> torch.Tensor:
    """e4m3(x · multiplier), saturating at ±E4M3_MAX."""
    return (x.float() * multiplier).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def quantize_per_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 tensor, its multiplier m: x ≈ x8 / m)."""
    m = pow2_multiplier(x.abs().amax())
    return quantize(x, m), m


ROUNDINGS = frozenset({"q", "k", "v", "p", "o"})
"""The tensors FP8 attention holds in e4m3: the inputs, the softmax numerators, the output."""


def emulate(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_scale: float | None = None,
    rounded: frozenset[str] = ROUNDINGS,
) -> torch.Tensor:
    """What FP8 attention computes, in float32: q [B, Lq, H, D], k and v [B, Lk, H, D], any
    float dtype. Returns O [B, Lq, H, D] float32 (after its own e4m3 rounding). `rounded`: the
    tensors rounded to e4m3 (all of ROUNDINGS, as the kernel does; fewer to see where the
    error comes from), the others kept in float32."""
    unknown = set(rounded) - ROUNDINGS
    if unknown:
        raise ValueError(
            f"unknown tensors {sorted(unknown)}; FP8 attention rounds {sorted(ROUNDINGS)}"
        )

    def held(t: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor | float]:
        return quantize_per_tensor(t) if name in rounded else (t.float(), 1.0)

    (q8, mq), (k8, mk), (v8, mv) = held(q, "q"), held(k, "k"), held(v, "v")
    o = _attend_float(q8, k8, v8, mq, mk, mv, attn_scale, round_p="p" in rounded)
    if "o" in rounded:  # the output's own rounding, at m_o = m_v (or v's own multiplier)
        mo = mv if "v" in rounded else pow2_multiplier(v.abs().amax())
        o = quantize(o, mo).float() / mo
    return o


def _attend_float(
    q8: torch.Tensor,
    k8: torch.Tensor,
    v8: torch.Tensor,
    mq: torch.Tensor | float,
    mk: torch.Tensor | float,
    mv: torch.Tensor | float,
    attn_scale: float | None = None,
    round_p: bool = True,
) -> torch.Tensor:
    """The kernel's arithmetic in float32 on held tensors [B, L, H, D] (e4m3 or float32) and
    their multipliers: O [B, Lq, H, D] float32, before its own rounding."""
    scale = 1.0 / math.sqrt(q8.shape[-1]) if attn_scale is None else attn_scale
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q8, k8, v8))  # [B, H, L, D]
    s = qf @ kf.transpose(-1, -2) * (scale / (mq * mk))
    s = s - s.amax(dim=-1, keepdim=True)
    numerators = s.exp()  # (0, 1]
    p8 = quantize(numerators, P_SCALE).float() if round_p else numerators * P_SCALE
    o = (p8 @ vf) / (numerators.sum(dim=-1, keepdim=True) * P_SCALE) / mv
    return o.transpose(1, 2)


def factors_of(mq: torch.Tensor, mk: torch.Tensor, mv: torch.Tensor) -> torch.Tensor:
    """The kernel's factors [4] float32 from the multipliers of q, k and v (0-dim each):
    (1/m_q, 1/m_k, 1/m_v, m_v), the last the output's multiplier."""
    return torch.stack([mq.reciprocal(), mk.reciprocal(), mv.reciprocal(), mv])


def attend(
    q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor, factors: torch.Tensor
) -> torch.Tensor:
    """Attention of e4m3 queries q8 [1, Lq, H, D] over e4m3 keys and values [1, Lk, H, D]
    (each contiguous), held with multipliers m_q, m_k, m_v; factors [4] float32 =
    (1/m_q, 1/m_k, 1/m_v, m_v). Returns O8 e4m3 [1, Lq, H, D], held with multiplier m_v
    (O ≈ O8 / m_v). cuDNN's kernel on a Hopper GPU, the float32 emulation on the CPU."""
    if q8.is_cuda:
        return kernel(q8.device).run(q8, k8, v8, factors)
    descale = factors[:3]
    o = _attend_float(q8, k8, v8, 1 / descale[0], 1 / descale[1], 1 / descale[2])
    return quantize(o, factors[3])


_kernels: dict[torch.device, CudnnFp8Attention] = {}


def kernel(device: torch.device) -> CudnnFp8Attention:
    """One execution context per device, made at its first use."""
    context = _kernels.get(device)
    if context is None:
        require(device)
        context = _kernels[device] = CudnnFp8Attention(device)
    return context


def require(device: torch.device) -> None:
    """ValueError unless FP8 attention can run on `device` (the CPU's emulation always can)."""
    if device.type == "cpu" or available(device):
        return
    raise ValueError(
        f"FP8 attention needs a Hopper GPU and the cuDNN frontend (pip install "
        f"longtake[cudnn]); {device} has neither or not both"
    )


def available(device: torch.device) -> bool:
    """Whether `CudnnFp8Attention` can run on `device`: a Hopper GPU and the cuDNN frontend."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] != 9:
        return False
    torch.backends.cudnn.version()  # torch loads its libcudnn, which the frontend then finds
    try:
        import cudnn  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


class CudnnFp8Attention:
    """cuDNN's FP8 SDPA forward for q [B, Lq, H, D], k and v [B, Lk, H, D] (bf16 in and out,
    quantised per tensor on the way in). One execution plan per shape, built at its first
    call; the scales stay on the device."""

    def __init__(self, device: torch.device):
        import cudnn

        self.cudnn = cudnn
        self.device = device
        self.handle = cudnn.create_handle()
        self._plans: dict[tuple[Any, ...], tuple[Any, dict[str, Any], torch.Tensor]] = {}
        self._p_scale = torch.full((1, 1, 1, 1), P_SCALE, device=device)
        self._p_descale = self._p_scale.reciprocal()
        # the kernel's amax outputs (of S and O), which nothing reads
        self._amax = torch.empty(2, 1, 1, 1, 1, device=device)

    def __del__(self) -> None:
        handle = getattr(self, "handle", None)
        try:
            if handle is not None:
                self.cudnn.destroy_handle(handle)
        except TypeError:  # at interpreter exit the frontend's functions may be gone
            pass

    def _plan(self, q: torch.Tensor, k: torch.Tensor) -> tuple[Any, dict[str, Any], torch.Tensor]:
        key = (tuple(q.shape), tuple(k.shape))
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        cudnn = self.cudnn
        e4m3, f32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
        graph = cudnn.pygraph(
            io_data_type=e4m3, intermediate_data_type=f32, compute_data_type=f32, handle=self.handle
        )

        def bhsd(shape: torch.Size, name: str) -> Any:  # [B, L, H, D] memory seen as BHSD
            b, n, h, d = shape
            return graph.tensor(
                name=name, dim=(b, h, n, d), stride=(n * h * d, d, h * d, 1), data_type=e4m3
            )

        tq, tk, tv = bhsd(q.shape, "q"), bhsd(k.shape, "k"), bhsd(k.shape, "v")
        scalars = {
            n: graph.tensor(name=n, dim=(1, 1, 1, 1), stride=(1, 1, 1, 1), data_type=f32)
            for n in ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")
        }
        common = dict(q=tq, k=tk, v=tv, attn_scale=1.0 / math.sqrt(q.shape[-1]), **scalars)
        try:  # newer frontends take generate_stats, older ones is_inference
            o, _, amax_s, amax_o = graph.sdpa_fp8(**common, generate_stats=False)
        except TypeError:
            o, _, amax_s, amax_o = graph.sdpa_fp8(**common, is_inference=True)
        b, n, h, d = q.shape
        o.set_output(True).set_dim((b, h, n, d)).set_stride((n * h * d, d, h * d, 1))
        o.set_data_type(e4m3)
        for amax in (amax_s, amax_o):
            amax.set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1))
            amax.set_data_type(f32)
        graph.validate()
        graph.build_operation_graph()
        graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        graph.check_support()
        graph.build_plans()
        workspace = torch.empty(graph.get_workspace_size(), dtype=torch.uint8, device=self.device)
        named = {"q": tq, "k": tk, "v": tv, "o": o, "amax_s": amax_s, "amax_o": amax_o, **scalars}
        plan = self._plans[key] = (graph, named, workspace)
        return plan

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """bf16 q [B, Lq, H, D], k and v [B, Lk, H, D] (contiguous), quantised per tensor here;
        returns O in q's dtype."""
        (q8, mq), (k8, mk), (v8, mv) = (quantize_per_tensor(t) for t in (q, k, v))
        return (self.run(q8, k8, v8, factors_of(mq, mk, mv)).float() / mv).to(q.dtype)

    def run(
        self, q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor, factors: torch.Tensor
    ) -> torch.Tensor:
        """The kernel alone (`attend`'s contract): e4m3 inputs [B, L, H, D] (contiguous) and
        factors [4] float32 = (1/m_q, 1/m_k, 1/m_v, m_v); returns O8 e4m3, held with m_v."""
        graph, t, workspace = self._plan(q8, k8)
        out = torch.empty(q8.shape, dtype=torch.float8_e4m3fn, device=self.device)
        f = factors.view(4, 1, 1, 1, 1)  # four [1, 1, 1, 1] views: no copies
        pack = {
            t["q"]: q8,
            t["k"]: k8,
            t["v"]: v8,
            t["descale_q"]: f[0],
            t["descale_k"]: f[1],
            t["descale_v"]: f[2],
            t["descale_s"]: self._p_descale,
            t["scale_s"]: self._p_scale,
            t["scale_o"]: f[3],
            t["o"]: out,
            t["amax_s"]: self._amax[0],
            t["amax_o"]: self._amax[1],
        }
        stream = torch.cuda.current_stream(self.device).cuda_stream
        self.cudnn.set_stream(handle=self.handle, stream=stream)
        graph.execute(pack, workspace, handle=self.handle)
        return out
