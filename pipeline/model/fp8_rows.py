"""The steps that end in FP8 rows, each one Triton kernel with a row held whole per program.

Before each FP8 linear a block normalises (or activates) its rows and quantises them per token
(pipeline/model/fp8.py): a row's largest magnitude must be known before any of it is cast.
Compiled by inductor, a LayerNorm followed by that maximum is four kernels over 5120-wide rows
(the statistics, the normalised and modulated rows, their maximum, the cast: the scheduler does
not fuse one row reduction into the next), each reading the row again from GPU memory; the
residual sum before it is one more (docs/benchmarks.md, "Where a step's time goes"). Here one
program holds a row in registers and does all of it: the residual sum (written out: it is the
residual stream), the LayerNorm's statistics (two passes over the registers: mean, then the
centred variance), the affine or AdaLN modulation, the row's maximum, the scale and the cast.

    norm_fp8(h, y, gate, a, b, eps, modulated)   h' = h + y * gate (y, gate optional)
                                                 n  = LN(h') * (1 + a) + b   (modulated)
                                                    = LN(h') * a + b         (affine)
                                                 -> (h', e4m3 rows of n, scales)
    act_fp8(x, gelu)                             n = gelu_tanh(x) or x -> (e4m3 rows, scales)
    merge_fp8(o8, stats, factors)                n = the chunks of an FP8 attention merged
                                                    (fp8_attention.merge_rows) -> (rows, scales)

The quantisation rule is fp8.quantize_rows': scale = max(|row|, 1e-12) / 448, values divided
and saturated to ±448, rounded to nearest e4m3. The results equal the compiled functions' up to
float32 rounding in the statistics (a different order of sums), which can move a value across
an e4m3 rounding boundary. CUDA only; `usable` says where (rows must be contiguous: elsewhere
the compiled steps run). On by default: on an H200 the GELU and plain quantisation take half
the compiled kernels' time and the velocity's error against bf16 is unchanged
(docs/benchmarks.md); the merge of an FP8 attention's eight chunks at 720×400 takes 0.10 ms a
layer where inductor's took 0.28 (ops/bench/fp8_attention.py, 2026-12-04).
`set_enabled(False)` goes back to the compiled steps (ops/bench/step_profile.py --fp8-rows
compares both).
"""

from __future__ import annotations

from typing import Any

import torch

from pipeline.model import fp8

_enabled = True
_kernels: dict[str, Any] = {}
_triton: bool | None = None  # importable (found out once)


def set_enabled(enabled: bool) -> None:
    """Use these kernels where they can run (the default), or the compiled steps everywhere."""
    global _enabled
    _enabled = enabled


def usable(x: torch.Tensor) -> bool:
    """Whether the kernels run for x: on CUDA with Triton importable, rows contiguous."""
    global _triton
    if not (_enabled and x.is_cuda and x.is_contiguous()):
        return False
    if _triton is None:
        try:
            import triton  # noqa: F401

            _triton = True
        except ImportError:
            _triton = False
    return _triton


def _build() -> dict[str, Any]:
    import triton
    import triton.language as tl

    @triton.jit
    def norm_rows_fp8(
        H, Y, GATE, A, B, H_OUT, Q, S,
        n_cols, eps,
        HAS_Y: tl.constexpr, HAS_GATE: tl.constexpr, MODULATED: tl.constexpr,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        ok = cols < n_cols
        at = row * n_cols + cols
        h = tl.load(H + at, mask=ok, other=0.0).to(tl.float32)
        if HAS_Y:
            y = tl.load(Y + at, mask=ok, other=0.0).to(tl.float32)
            if HAS_GATE:
                y = y * tl.load(GATE + cols, mask=ok, other=0.0)
            h = h + y
            tl.store(H_OUT + at, h, mask=ok)
        mean = tl.sum(h, axis=0) / n_cols
        centred = tl.where(ok, h - mean, 0.0)
        var = tl.sum(centred * centred, axis=0) / n_cols
        n = centred * tl.rsqrt(var + eps)
        a = tl.load(A + cols, mask=ok, other=0.0).to(tl.float32)
        b = tl.load(B + cols, mask=ok, other=0.0).to(tl.float32)
        if MODULATED:  # AdaLN: LN(h) * (1 + scale) + shift
            a = a + 1.0
        n = tl.where(ok, n * a + b, 0.0)
        scale = tl.maximum(tl.max(tl.abs(n), axis=0), 1e-12) / 448.0
        q = tl.minimum(tl.maximum(n / scale, -448.0), 448.0)
        tl.store(Q + at, q.to(tl.float8e4nv), mask=ok)
        tl.store(S + row, scale)

    @triton.jit
    def act_rows_fp8(X, Q, S, n_cols, GELU: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        ok = cols < n_cols
        at = row * n_cols + cols
        x = tl.load(X + at, mask=ok, other=0.0).to(tl.float32)
        if GELU:  # tanh GELU: 0.5 (1 + tanh(z)) = sigmoid(2 z)
            z = 0.7978845608028654 * (x + 0.044715 * x * x * x)
            x = x * tl.sigmoid(2.0 * z)
        x = tl.where(ok, x, 0.0)
        scale = tl.maximum(tl.max(tl.abs(x), axis=0), 1e-12) / 448.0
        q = tl.minimum(tl.maximum(x / scale, -448.0), 448.0)
        tl.store(Q + at, q.to(tl.float8e4nv), mask=ok)
        tl.store(S + row, scale)

    @triton.jit
    def merge_rows_fp8(
        O8, STATS, FACTORS, Q, S,
        n_tokens, n_heads, head_dim,
        CHUNKS: tl.constexpr, HEADS: tl.constexpr, DIM: tl.constexpr,
    ):  # fmt: skip
        # one token's row [H, D] of every chunk: o8 [c, L, H, D] e4m3, stats [c, H, L] float32;
        # the chunk loop unrolled, so that every chunk's loads are in flight at once
        row = tl.program_id(0).to(tl.int64)
        h = tl.arange(0, HEADS)
        d = tl.arange(0, DIM)
        ok_h = h < n_heads
        ok = ok_h[:, None] & (d < head_dim)[None, :]
        n_cols = n_heads * head_dim
        at = h[:, None] * head_dim + d[None, :]  # [HEADS, DIM] within the row
        lse_at = h * n_tokens + row
        top = tl.full((HEADS,), float("-inf"), tl.float32)
        for c in tl.static_range(CHUNKS):
            lse = tl.load(STATS + c * n_heads * n_tokens + lse_at, mask=ok_h, other=0.0)
            top = tl.maximum(top, lse)
        acc = tl.zeros((HEADS, DIM), tl.float32)
        total = tl.zeros((HEADS,), tl.float32)
        for c in tl.static_range(CHUNKS):
            lse = tl.load(STATS + c * n_heads * n_tokens + lse_at, mask=ok_h, other=0.0)
            w = tl.exp(lse - top)  # [HEADS]: one weight a head, not a column
            o = tl.load(O8 + (c * n_tokens + row) * n_cols + at, mask=ok, other=0.0)
            acc += o.to(tl.float32) * w[:, None]
            total += w
        n = tl.where(ok, acc * (tl.load(FACTORS + 2) / total)[:, None], 0.0)
        scale = tl.maximum(tl.max(tl.max(tl.abs(n), axis=1), axis=0), 1e-12) / 448.0
        q = tl.minimum(tl.maximum(n / scale, -448.0), 448.0)
        tl.store(Q + row * n_cols + at, q.to(tl.float8e4nv), mask=ok)
        tl.store(S + row, scale)

    return {"norm": norm_rows_fp8, "act": act_rows_fp8, "merge": merge_rows_fp8}


def _kernel(name: str) -> Any:
    if not _kernels:
        _kernels.update(_build())
    return _kernels[name]


def _pow2(n: int) -> int:
    """n padded to a power of two (at least 2): a Triton block's extent."""
    return 1 << max(n - 1, 1).bit_length()


def _launch_shape(n_cols: int) -> tuple[int, int]:
    """(BLOCK, warps) for rows of n_cols: the row padded to a power of two, ~16 float32
    values a thread (5120: 8192 and 16 warps; 13 824: 16 384 and 32)."""
    block = _pow2(n_cols)
    return block, max(4, min(32, block // 512))


def norm_fp8(
    h: torch.Tensor,
    y: torch.Tensor | None,
    gate: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    eps: float,
    modulated: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 h [..., C] (plus y * gate: y [..., C] any float dtype, gate [C] float32) ->
    (the sum, float32 [..., C] (h itself without y); e4m3 rows [..., C]; scales [..., 1]).
    a, b [C]: the modulation's scale and shift (modulated) or the LayerNorm's weight and
    bias."""
    n_cols = h.shape[-1]
    rows = h.numel() // n_cols
    q = torch.empty(h.shape, device=h.device, dtype=fp8.E4M3)
    s = torch.empty((*h.shape[:-1], 1), device=h.device, dtype=torch.float32)
    out = torch.empty_like(h) if y is not None else h
    block, warps = _launch_shape(n_cols)
    _kernel("norm")[(rows,)](
        h, h if y is None else y.contiguous(), a if gate is None else gate,
        a.contiguous(), b.contiguous(), out, q, s,
        n_cols, eps,
        HAS_Y=y is not None, HAS_GATE=gate is not None, MODULATED=modulated,
        BLOCK=block, num_warps=warps,
    )  # fmt: skip
    return out, q, s


def act_fp8(x: torch.Tensor, gelu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] (any float dtype) -> (e4m3 rows of gelu_tanh(x) or x, scales [..., 1])."""
    n_cols = x.shape[-1]
    q = torch.empty(x.shape, device=x.device, dtype=fp8.E4M3)
    s = torch.empty((*x.shape[:-1], 1), device=x.device, dtype=torch.float32)
    block, warps = _launch_shape(n_cols)
    _kernel("act")[(x.numel() // n_cols,)](x, q, s, n_cols, GELU=gelu, BLOCK=block, num_warps=warps)
    return q, s


MERGE_WARPS = 8
"""Warps of a merge program: on an H200 4, 8 and 16 came within 0.02 ms a layer of each other
(ops/bench/fp8_attention.py times all three)."""


def merge_fp8(
    o8: torch.Tensor, stats: torch.Tensor, factors: torch.Tensor, warps: int = MERGE_WARPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """`fp8_attention.merge_rows` in one pass: the chunks' outputs o8 [c, L, H, D] e4m3 (held
    at m_v), weighed by their log-sum-exps stats [c, H, L, 1] float32, descaled by
    factors[2] = 1/m_v and quantised per token: (e4m3 [1, L, H·D], scales [1, L, 1]).
    One program a token, every chunk's row of it read once, one weight a head and chunk."""
    chunks, tokens, heads, dim = o8.shape
    q = torch.empty(1, tokens, heads * dim, device=o8.device, dtype=fp8.E4M3)
    s = torch.empty(1, tokens, 1, device=o8.device, dtype=torch.float32)
    _kernel("merge")[(tokens,)](
        o8, stats.contiguous(), factors, q, s,
        tokens, heads, dim,
        CHUNKS=chunks,
        HEADS=_pow2(heads),
        DIM=_pow2(dim),
        num_warps=warps,
    )  # fmt: skip
    return q, s
