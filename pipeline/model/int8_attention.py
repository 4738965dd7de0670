"""Attention with its logits' product in int8 (Q·Kᵀ), the rest as in bf16 attention.

Q·Kᵀ is half of attention's arithmetic, and Hopper's tensor cores run int8 products at twice
the bf16 rate. cuDNN's FP8 attention (pipeline/model/fp8_attention.py) rounds Q and K to e4m3
(3 mantissa bits, one scale per tensor), which alone costs ~4 % of the output each
(docs/benchmarks.md); int8 keeps 7 bits, and with one scale per token and head a value's
rounding error is at most its row's largest magnitude / 254:

    q8[i] = round(q[i] / sq[i]),  sq[i] = max|q[i, :]| / 127       (per token i, per head)
    k8[j] = round(k[j] / sk[j]),  sk[j] = max|k[j, :]| / 127
    S[i, j] = (q8[i] · k8[j]) · sq[i] · sk[j] · D^-½                 int32 products, exact
    O = softmax(S) · V                                              P in bf16, V bf16, f32 sums

The keys are smoothed first (SageAttention's observation): their mean over tokens, per head
and channel, is subtracted. That adds one constant to each query's row of logits, which
softmax does not see, and removes what every key shares from the keys' ranges.

`attention` runs a Triton kernel on CUDA (online softmax over key tiles, as flash attention
does) and `emulate` everywhere else: the same quantisation, then one softmax per row in
float32 (the reference for tests and error estimates). Triton is imported only on CUDA.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pipeline.model import fused

INT8_MAX = 127.0
LOG2E = 1.4426950408889634
"""log2(e): the kernel exponentiates base 2, the scales of q carry it."""


def smooth_keys(k: torch.Tensor) -> torch.Tensor:
    """float32 keys [B, S, H, D] minus their mean over tokens (per head and channel)."""
    k = k.float()
    return k - k.mean(dim=1, keepdim=True)


def quantize_tokens(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, L, H, D] -> (int8 [B, L, H, D], float32 scales [B, L, H]), one per token and head:
    the row's largest magnitude lands on ±127; an all-zero row gets scale 1 and zeros."""
    x = x.float()
    amax = x.abs().amax(dim=-1)
    scale = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
    q = torch.round(x / scale.unsqueeze(-1)).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def quantize(
    q: torch.Tensor, k: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernel's inputs from bf16 q [B, L, H, D] and k [B, S, H, D]: int8 q and its scales
    (softmax's D^-½ and log2(e) folded in: the kernel exponentiates base 2), int8 smoothed k
    and its scales."""
    q8, sq = quantize_tokens(q)
    k8, sk = quantize_tokens(smooth_keys(k))
    return q8, sq * (LOG2E / math.sqrt(q.shape[-1])), k8, sk


def emulate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """What the kernel computes, in float32 on any device: q [B, L, H, D], k and v
    [B, S, H, D] -> [B, L, H, D] in v's dtype."""
    q8, sq, k8, sk = quantize(q, k)
    # [B, H, L, S]: integer products summed exactly in float32 (|sum| <= D * 127² < 2^24)
    s = torch.einsum("blhd,bshd->bhls", q8.float(), k8.float())
    s = s * sq.permute(0, 2, 1).unsqueeze(-1) * sk.permute(0, 2, 1).unsqueeze(-2)
    # as the kernel: base-2 numerators (the scales hold log2(e)), rounded to bf16 for the
    # product with V, divided by their float32 sum at the end
    e = torch.exp2(s - s.amax(dim=-1, keepdim=True))  # [B, H, L, S]
    o = torch.einsum("bhls,bshd->blhd", e.to(torch.bfloat16).float(), v.float())
    denom = e.sum(dim=-1).permute(0, 2, 1).unsqueeze(-1)  # [B, L, H, 1]
    return (o / denom).to(v.dtype)


def available(device: torch.device) -> bool:
    """Whether the kernel can run here: a CUDA device of compute capability 8.0 or later
    (int8 tensor cores) and Triton importable."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 0):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


BLOCK_M = 128
BLOCK_N = 64
"""Query rows and key columns per tile of the kernel (a program handles BLOCK_M queries of
one head and walks the keys BLOCK_N at a time)."""

_kernel: Any = None


def _build() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def int8_attention_kernel(
        Q, K, V, SQ, SK, OUT,
        lq, lk, heads,
        sq_b, sq_l, sq_h, sk_b, sk_l, sk_h, sv_b, sv_l, sv_h, so_b, so_l, so_h,
        ssq_b, ssq_l, ssq_h, ssk_b, ssk_l, ssk_h,
        D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, INT: tl.constexpr,
    ):  # fmt: skip
        m_block, bh = tl.program_id(0), tl.program_id(1)
        b, h = bh // heads, bh % heads
        rows = m_block * BM + tl.arange(0, BM)
        cols = tl.arange(0, BN)
        dims = tl.arange(0, D)
        row_ok = rows < lq
        q = tl.load(
            Q + b * sq_b + h * sq_h + rows[:, None] * sq_l + dims[None, :],
            mask=row_ok[:, None], other=0,
        )  # fmt: skip
        q_scale = tl.load(SQ + b * ssq_b + h * ssq_h + rows * ssq_l, mask=row_ok, other=0.0)
        m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BM], dtype=tl.float32)
        acc = tl.zeros([BM, D], dtype=tl.float32)
        k_base = K + b * sk_b + h * sk_h
        v_base = V + b * sv_b + h * sv_h
        sk_base = SK + b * ssk_b + h * ssk_h
        for start in range(0, lk, BN):
            keys = start + cols
            key_ok = keys < lk
            k = tl.load(
                k_base + keys[:, None] * sk_l + dims[None, :], mask=key_ok[:, None], other=0
            )
            k_scale = tl.load(sk_base + keys * ssk_l, mask=key_ok, other=0.0)
            if INT:  # int32 sums of int8 products, exact
                s = tl.dot(q, tl.trans(k), out_dtype=tl.int32).to(tl.float32)  # [BM, BN]
            else:  # float q and k (benchmarks compare the same kernel in bf16)
                s = tl.dot(q, tl.trans(k))
            s = s * q_scale[:, None] * k_scale[None, :]
            s = tl.where(key_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(
                v_base + keys[:, None] * sv_l + dims[None, :], mask=key_ok[:, None], other=0.0
            )
            acc = acc * alpha[:, None]
            acc = tl.dot(p.to(v.dtype), v, acc)
            m_i = m_new
        out = acc / l_i[:, None]
        tl.store(
            OUT + b * so_b + h * so_h + rows[:, None] * so_l + dims[None, :],
            out.to(OUT.dtype.element_ty),
            mask=row_ok[:, None],
        )

    return int8_attention_kernel


def attend_quantized(
    q8: torch.Tensor,
    sq: torch.Tensor,
    k8: torch.Tensor,
    sk: torch.Tensor,
    v: torch.Tensor,
    block_m: int = BLOCK_M,
    block_n: int = BLOCK_N,
    num_warps: int = 8,
    num_stages: int = 3,
) -> torch.Tensor:
    """The kernel on inputs already quantised (`quantize`): q8 [B, L, H, D] int8, sq [B, L, H],
    k8 [B, S, H, D] int8, sk [B, S, H], v [B, S, H, D] bf16 -> [B, L, H, D] in v's dtype.
    Any strides with a contiguous last dimension. (q8 and k8 may be bf16 too, with their
    scales: the same kernel with bf16 logits, which benchmarks compare.)"""
    global _kernel
    if _kernel is None:
        _kernel = _build()
    b, lq, heads, dim = q8.shape
    lk = k8.shape[1]
    if not (q8.stride(-1) == k8.stride(-1) == v.stride(-1) == 1):
        raise ValueError("the last dimension of q, k and v must be contiguous")
    out = torch.empty(b, lq, heads, dim, dtype=v.dtype, device=v.device)
    grid = (-(-lq // block_m), b * heads)
    _kernel[grid](
        q8, k8, v, sq, sk, out,
        lq, lk, heads,
        q8.stride(0), q8.stride(1), q8.stride(2),
        k8.stride(0), k8.stride(1), k8.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        sq.stride(0), sq.stride(1), sq.stride(2),
        sk.stride(0), sk.stride(1), sk.stride(2),
        D=dim, BM=block_m, BN=block_n, INT=q8.dtype == torch.int8,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return out


quantize_compiled = fused.gpu_compiled(quantize)
"""`quantize` as one compiled graph on a GPU (the keys' mean, both quantisations)."""


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention of q [B, L, H, D] over k, v [B, S, H, D] (bf16), Q·Kᵀ in int8."""
    if not available(q.device):
        return emulate(q, k, v)
    return attend_quantized(*quantize_compiled(q, k), v)
