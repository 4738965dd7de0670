"""The DiT's elementwise glue (norms, modulation, gates, RoPE), fused on GPU.

Between its matrix products a block runs a dozen memory-bound elementwise steps in float32;
eager PyTorch spends one kernel, and one round trip through GPU memory, on each. On CUDA these
functions are compiled with `torch.compile` (one kernel each); on the CPU they run eagerly, as
written. `set_compile(False)` turns compilation off (benchmarks compare both); tests compile on
the CPU too, with dynamo's eager backend (the same graphs, made without code generation).

The `*_fp8` variants end in the per-token quantisation of the FP8 linear layers
(pipeline/model/fp8.py): the step before a linear writes its e4m3 input and scales directly,
in the same kernel, instead of a bf16 tensor that a separate kernel would read back.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from pipeline.model import fp8, fp8_attention, fp8_rows

_F = TypeVar("_F", bound=Callable[..., Any])
_enabled = True
_devices: frozenset[str] = frozenset({"cuda"})
_backend = "inductor"
_forget: list[Callable[[], None]] = []  # drop each function's compiled version


def set_compile(
    enabled: bool, devices: Iterable[str] = ("cuda",), backend: str = "inductor"
) -> None:
    """Compile the glue (or not) on these device types, with this torch.compile backend."""
    global _enabled, _devices, _backend
    _enabled, _devices, _backend = enabled, frozenset(devices), backend
    for forget in _forget:
        forget()


RECOMPILE_LIMIT = 256
"""Compiled graphs kept per function. Each shape a function meets (a block, the sink, the
prompt, the audio layers; at every output size a worker renders; with gradients on or off)
is a graph of its own: at torch's default of 8 a long-lived process ran out of them and
fell back to eager kernels (seen on an H200, 2026-12-02), which also changes the bits a
stream renders. A worker may render each of the 14 sizes (pipeline.params), with a handful
of graphs per size for a function and for each piece of the compiled decoder."""


_settings_version = 0
"""Bumped whenever a compiler setting made here changes: every thread applies it again."""
_configured: ContextVar[int] = ContextVar("longtake_compiler_configured", default=-1)
_persistent_rows: bool | None = None  # None: inductor's own heuristics, never touched
_inductor_settings: dict[str, Any] = {}  # experiments' extra settings (set_inductor_settings)


def configure_compiler() -> None:
    """Settings every compiled function here needs, applied in the calling thread; a cheap
    check once they are (compiled code calls it before each call that may compile).

    - torch.compile's per-function graph limit raised to RECOMPILE_LIMIT (never lowered).
    - Inductor's deterministic mode: a reduction kernel's launch configuration (its block
      sizes and warps, which set the order of its sums) is chosen from its shape alone,
      never by timing candidates on the device. Timed choices can depend on what else the
      GPU does meanwhile (a resumed process's decoder compiles while its checkpoint streams
      in), and the kernels chosen differ in rounding; without timing, every process
      compiles the same kernels for the same graphs.
    - `set_persistent_rows` and `set_inductor_settings`, where they were called.

    torch keeps a setting made by assigning to its config per thread (a context variable):
    made in one thread, it does not reach a graph compiled in another (the engine's decoder
    thread compiled with torch's limit of 8 graphs). Hence per thread, before every compile.
    Inductor's deterministic mode is also handed to each compile (`compile_options`): an
    assignment does not even last in its own thread."""
    if _configured.get() == _settings_version:
        return
    cfg = torch._dynamo.config
    # the setting's name since torch 2.6; before it, cache_size_limit
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, name, max(int(getattr(cfg, name)), RECOMPILE_LIMIT))
    import torch._inductor.config as inductor

    if hasattr(inductor, "deterministic"):  # torch >= 2.8
        inductor.deterministic = True
    if _persistent_rows is not None and hasattr(inductor, "inductor_choices_class"):
        from torch._inductor.choices import InductorChoices
        from torch._inductor.virtualized import V

        inductor.inductor_choices_class = _row_choices if _persistent_rows else None
        V.set_choices_handler(_row_choices() if _persistent_rows else InductorChoices())
    for key, value in _inductor_settings.items():
        setattr(inductor, key, value)
    _configured.set(_settings_version)


def compile_options(backend: str) -> dict[str, Any] | None:
    """The inductor settings to compile with, given to torch.compile itself (`options`): the
    compile applies them to its own code generation, whatever the thread's settings are by
    then. (Assigned to inductor's config instead, deterministic mode does not last: dynamo
    restores torch's deterministic-algorithms flag after tracing each frame, and
    `torch.use_deterministic_algorithms` sets inductor's `deterministic` along with it, so a
    process compiled its first graph of each function in deterministic mode and the later
    ones not.) None for other backends, which take no inductor settings."""
    if backend != "inductor":
        return None
    import torch._inductor.config as inductor

    options = {"deterministic": True} if hasattr(inductor, "deterministic") else {}
    return options | _inductor_settings


def compile_static(fn: Callable[..., Any], backend: str | None = None) -> Any:
    """`fn` compiled as everything here is compiled: one graph, static shapes, `backend`
    (default: the glue's, `compile_backend`) with `compile_options`."""
    backend = _backend if backend is None else backend
    return torch.compile(
        fn, fullgraph=True, dynamic=False, backend=backend, options=compile_options(backend)
    )


def _settings_changed() -> None:
    """Every thread applies the settings again, and every function compiles again."""
    global _settings_version
    _settings_version += 1
    torch._dynamo.reset()
    for forget in _forget:
        forget()


def set_inductor_settings(settings: dict[str, Any]) -> None:
    """Extra `torch._inductor.config` settings for every compile here, in every thread (for
    experiments: ops/bench/determinism.py); every compiled function compiles again."""
    import torch._inductor.config as inductor

    for key in settings:
        if not hasattr(inductor, key):
            raise ValueError(f"torch._inductor.config has no setting {key!r}")
    _inductor_settings.clear()
    _inductor_settings.update(settings)
    _settings_changed()


PERSISTENT_ROW_MAX = 16384
"""The longest row (C = 5120 of the 14B DiT, its FFN's 13 824) a compiled reduction over the
last dimension holds in registers whole, with `set_persistent_rows`."""


@functools.cache
def _row_choices_class() -> type:
    """Inductor's heuristics, but a reduction over the last dimension of a row of at most
    PERSISTENT_ROW_MAX elements holds the row whole.

    Inductor holds rows of at most 1024 elements whole; longer rows become loops, and a chain
    such as LayerNorm -> modulation -> row maximum -> fp8 cast becomes four kernels, each
    reading the row again from memory (the fp8 step's norms, seen on an H200). Held whole,
    single reductions become one pass, but on an H200 the chain stayed four kernels (the
    scheduler does not fuse a reduction into the next over the same rows) and the step was no
    faster (docs/benchmarks.md)."""
    from torch._inductor.choices import InductorChoices
    from torch._inductor.runtime.hints import ReductionHint
    from torch._inductor.virtualized import V

    class RowChoices(InductorChoices):
        @staticmethod
        def should_use_persistent_reduction(features: Any, cooperative_reduction: bool) -> bool:
            if features.get_reduction_hint() == ReductionHint.INNER and (
                V.graph.sizevars.statically_known_leq(features.reduction_numel, PERSISTENT_ROW_MAX)
            ):
                return True
            return InductorChoices.should_use_persistent_reduction(features, cooperative_reduction)

        def uuid(self) -> str:  # part of inductor's cache key: no kernel of the default reused
            return f"longtake-persistent-rows-{PERSISTENT_ROW_MAX}"

    return RowChoices


def _row_choices() -> Any:
    """The factory inductor's config takes."""
    return _row_choices_class()()


def set_persistent_rows(enabled: bool) -> bool:
    """Compile row reductions of up to PERSISTENT_ROW_MAX elements as single passes (or go back
    to inductor's own choice); every compiled function compiles again. Returns False where
    this torch has no way to change inductor's heuristics (nothing changes then). Off: measured
    on an H200 it gained nothing; step_profile --persistent-rows compares both."""
    global _persistent_rows
    import torch._inductor.config as inductor

    if not hasattr(inductor, "inductor_choices_class"):
        return False
    _persistent_rows = enabled
    _settings_changed()
    configure_compiler()  # in this thread now, as before: callers may compile without us
    return True


def compile_backend() -> str:
    """The torch.compile backend compiled code here uses (inductor; tests: eager)."""
    return _backend


def compiles_on(device: torch.device) -> bool:
    """Whether the glue runs compiled on `device` (GPUs, unless compilation is turned off)."""
    return _enabled and device.type in _devices


def graphs_compiled() -> int:
    """How many graphs torch.compile has made in this process (all functions together)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def gpu_compiled(fn: _F) -> _F:
    """`fn`, compiled (one graph, static shapes) where `compiles_on` its first argument's device;
    eager elsewhere, or where compiling fails."""
    compiled: Callable[..., Any] | None = None

    def call(*args: Any) -> Any:
        nonlocal compiled
        if not compiles_on(args[0].device):
            return fn(*args)
        configure_compiler()  # in this thread: any call may compile (a new shape)
        if compiled is None:
            compiled = compile_static(fn)
        try:
            return compiled(*args)
        except Exception as exc:  # no working compiler here: stay correct, run eagerly
            warnings.warn(
                f"torch.compile of {fn.__name__} failed, running eagerly: {exc}", stacklevel=2
            )
            compiled = fn
            return fn(*args)

    def forget() -> None:
        nonlocal compiled
        compiled = None

    _forget.append(forget)
    call.__doc__ = fn.__doc__
    return call  # type: ignore[return-value]


# the norms' float32 arithmetic, shared by the functions below


def _affine_ln(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    return F.layer_norm(h, h.shape[-1:], weight.float(), bias.float(), eps)


def _modulated_ln(
    h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> torch.Tensor:
    return F.layer_norm(h, h.shape[-1:], eps=eps) * (1 + scale) + shift


@gpu_compiled
def modulated_norm(
    h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float, dtype: torch.dtype
) -> torch.Tensor:
    """LayerNorm (no affine) of float32 h, then AdaLN: * (1 + scale) + shift, cast to dtype."""
    return _modulated_ln(h, shift, scale, eps).to(dtype)


@gpu_compiled
def gated_residual(h: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """h + y * gate in float32 (h float32, y in the weights' dtype)."""
    return h + y.float() * gate


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm computed in float32, rounded to x's dtype, then scaled (Wan's order)."""
    return F.rms_norm(x.float(), x.shape[-1:], eps=eps).to(x.dtype) * weight


def _rope(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of x [B, L, H, D] by rot [L, 1, D/2, 2] (cos, sin); float32 math."""
    return _rope_f32(x, rot).to(x.dtype)


def _rope_f32(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """`_rope`'s rotation, left in float32."""
    xr = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xr[..., 0], xr[..., 1]
    cos, sin = rot[..., 0], rot[..., 1]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)


rms_norm = gpu_compiled(_rms_norm)
rope = gpu_compiled(_rope)


@gpu_compiled
def norm_rope_into_cache(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    wq: torch.Tensor,
    wk: torch.Tensor,
    eps: float,
    freqs: torch.Tensor,
    k_slot: torch.Tensor,
    v_slot: torch.Tensor,
    ref_keys: torch.Tensor,
    ref_freqs: torch.Tensor,
    ref_slot: torch.Tensor,
) -> torch.Tensor:
    """Self-attention's inputs and its cache writes in one graph: q and k [1, L, C] RMS-normed
    (weights wq, wk), cut into heads as k_slot [L, H, D] is and rotated by freqs
    [L, 1, D/2, 2]; the keys written into k_slot, v [1, L, C] into v_slot, and the reference
    keys ref_keys [1, R, H, D] rotated by ref_freqs [R, 1, D/2, 2] into ref_slot [R, H, D] (the
    slots: views of one step cache that do not overlap). Returns the rotated queries
    [1, L, H, D]. The arithmetic of `rms_norm` then `rope`: eager, the very same values;
    compiled, a pass over q, k and v in place of two norms, three rotations and three copies.
    """
    heads = (k_slot.shape[1], -1)
    q = _rope(_rms_norm(q, wq, eps).unflatten(2, heads), freqs)
    k = _rope(_rms_norm(k, wk, eps).unflatten(2, heads), freqs)
    ref_slot.copy_(_rope(ref_keys, ref_freqs)[0])
    k_slot.copy_(k[0])
    v_slot.copy_(v[0].unflatten(1, heads))
    return q


@gpu_compiled
def fp8_attention_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    wq: torch.Tensor,
    wk: torch.Tensor,
    eps: float,
    freqs: torch.Tensor,
    k_slot: torch.Tensor,
    v_slot: torch.Tensor,
    ref_keys: torch.Tensor,
    ref_freqs: torch.Tensor,
    ref_slot: torch.Tensor,
    kv_mults: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`norm_rope_into_cache` for an e4m3 cache (precision "fp8-attention"), the rotations
    quantised from float32: the keys (and the reference keys) written as e4m3(k · m_k), the
    values as e4m3(v · m_v), kv_mults [2] = (m_k, m_v); the queries quantised with their own
    power-of-two multiplier m_q, from their largest magnitude. Returns the queries e4m3
    [1, L, H, D] and the kernel's factors [4] float32 (1/m_q, 1/m_k, 1/m_v, m_v).
    """
    heads = (k_slot.shape[1], -1)
    qr = _rope_f32(_rms_norm(q, wq, eps).unflatten(2, heads), freqs)  # [1, L, H, D] float32
    kr = _rope_f32(_rms_norm(k, wk, eps).unflatten(2, heads), freqs)
    mk, mv = kv_mults[0], kv_mults[1]
    ref_slot.copy_(fp8_attention.quantize(_rope_f32(ref_keys, ref_freqs)[0], mk))
    k_slot.copy_(fp8_attention.quantize(kr[0], mk))
    v_slot.copy_(fp8_attention.quantize(v[0].unflatten(1, heads), mv))
    mq = fp8_attention.pow2_multiplier(qr.abs().amax())
    return fp8_attention.quantize(qr, mq), fp8_attention.factors_of(mq, mk, mv)


@gpu_compiled
def _fp8_attention_rows(
    o8: torch.Tensor, stats: torch.Tensor, factors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The arithmetic of `fp8_attention_rows`, compiled on a GPU."""
    return fp8_attention.merge_rows(o8, stats, factors)


# ---- a residual sum and the norm after it, in one graph ----------------------------------------
#
# The block adds an attention's output to the residual stream and normalises the sum for the
# next linear layer. As two compiled functions that is a kernel writing the sum and others
# reading it back for the norm's statistics; in one graph the compiler can take the statistics
# from the sum as it makes it. Each returns the new residual stream (float32) and the next
# layer's input, with the values of the two steps one after the other.


@gpu_compiled
def gated_residual_affine_norm(
    h: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`gated_residual`, then LayerNorm with its own scale and bias, in float32, cast to dtype."""
    h = h + y.float() * gate
    return h, _affine_ln(h, weight, bias, eps).to(dtype)


@gpu_compiled
def residual_modulated_norm(
    h: torch.Tensor,
    y: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """h + y (h float32), then `modulated_norm` of the sum."""
    h = h + y.float()
    return h, _modulated_ln(h, shift, scale, eps).to(dtype)


@gpu_compiled
def _gated_residual_affine_norm_fp8(
    h: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The arithmetic of `gated_residual_affine_norm_fp8`, compiled on a GPU."""
    h = h + y.float() * gate
    q, s = fp8.quantize_rows(_affine_ln(h, weight, bias, eps))
    return h, q, s


@gpu_compiled
def _residual_modulated_norm_fp8(
    h: torch.Tensor, y: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The arithmetic of `residual_modulated_norm_fp8`, compiled on a GPU."""
    h = h + y.float()
    q, s = fp8.quantize_rows(_modulated_ln(h, shift, scale, eps))
    return h, q, s


# ---- ending in FP8 rows: (e4m3 [..., K], float32 scales [..., 1]) -----------------------------


@gpu_compiled
def _modulated_norm_fp8(
    h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The arithmetic of `modulated_norm_fp8`, compiled on a GPU."""
    return fp8.quantize_rows(_modulated_ln(h, shift, scale, eps))


@gpu_compiled
def _gelu_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The arithmetic of `gelu_fp8`, compiled on a GPU."""
    return fp8.quantize_rows(F.gelu(x.float(), approximate="tanh"))


@gpu_compiled
def _quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The arithmetic of `quantize_rows`, compiled on a GPU."""
    return fp8.quantize_rows(x)


# ---- the FP8 steps: one Triton kernel each on CUDA (pipeline/model/fp8_rows.py), else the
# compiled functions above (or their eager arithmetic) ------------------------------------------


def modulated_norm_fp8(
    h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`modulated_norm` of float32 h, quantised per token for an FP8 linear."""
    if fp8_rows.usable(h):
        _, q, s = fp8_rows.norm_fp8(h, None, None, scale, shift, eps, modulated=True)
        return q, s
    return _modulated_norm_fp8(h, shift, scale, eps)


def gated_residual_affine_norm_fp8(
    h: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`gated_residual_affine_norm`, quantised per token: (sum, e4m3 rows, scales)."""
    if fp8_rows.usable(h):
        return fp8_rows.norm_fp8(h, y, gate, weight, bias, eps, modulated=False)
    return _gated_residual_affine_norm_fp8(h, y, gate, weight, bias, eps)


def residual_modulated_norm_fp8(
    h: torch.Tensor, y: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`residual_modulated_norm`, quantised per token: (sum, e4m3 rows, scales)."""
    if fp8_rows.usable(h):
        return fp8_rows.norm_fp8(h, y, None, scale, shift, eps, modulated=True)
    return _residual_modulated_norm_fp8(h, y, shift, scale, eps)


def gelu_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tanh-GELU of the FFN's hidden x (float32 arithmetic), quantised per token."""
    if fp8_rows.usable(x):
        return fp8_rows.act_fp8(x, gelu=True)
    return _gelu_fp8(x)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x quantised per token: where nothing of ours runs before a linear (after attention)."""
    if fp8_rows.usable(x):
        return fp8_rows.act_fp8(x, gelu=False)
    return _quantize_rows(x)


def fp8_attention_rows(
    o8: torch.Tensor, stats: torch.Tensor, factors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`fp8_attention.merge_rows`: the chunks' outputs of an FP8 attention merged and quantised
    per token for the o-projection, (e4m3 [1, L, C], float32 scales [1, L, 1])."""
    if fp8_rows.usable(o8):
        return fp8_rows.merge_fp8(o8, stats, factors)
    return _fp8_attention_rows(o8, stats, factors)
