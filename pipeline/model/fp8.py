"""FP8 (float8 e4m3) linear layers: the arithmetic of the DiT's `fp8` precision.

A weight W [N, K] is quantised once, after loading (and the LoRA merge), with one scale per
output channel; an activation X [M, K] is quantised as it is made, with one scale per token
(row). Both use the same rule:

    scale = max(|row|) / 448          (448: the largest finite e4m3 value)
    q     = clamp(row / scale, -448, 448) rounded to e4m3

so a row's largest value lands on ±448 and nothing overflows (values past ±448 at a given scale
saturate). An all-zero row gets a tiny positive scale and quantises to zeros. The product is

    Y [M, N] = (Xq @ Wq^T) * x_scale [M, 1] * w_scale [1, N] + bias,   accumulated in float32

computed by `torch._scaled_mm` (row-wise scales, output in the model's dtype) where this torch
offers it for the device, else by an exact emulation: dequantise to float32, multiply, cast.
The CPU of the tests runs `_scaled_mm` where torch supports it there (torch 2.13 does); the
quantisation arithmetic is the same code on every device (on GPU it is compiled into the
elementwise step before each linear, pipeline/model/fused.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
AMAX_FLOOR = 1e-12
"""The smallest row maximum a scale is made from: an all-zero row quantises to zeros."""


def row_scales(x: torch.Tensor) -> torch.Tensor:
    """Scales of the rows of float32 x [..., K]: max(|row|) / 448, as [..., 1] float32."""
    return x.abs().amax(dim=-1, keepdim=True).clamp(min=AMAX_FLOOR) / E4M3_MAX


def to_e4m3(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 x [..., K] divided by its scales [..., 1], saturated to ±448, rounded to e4m3."""
    return (x / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] (any float dtype) -> (e4m3 [..., K], float32 scales [..., 1])."""
    x = x.float()
    scale = row_scales(x)
    return to_e4m3(x, scale), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float32 values e4m3 q [..., K] with scales [..., 1] stand for."""
    return q.float() * scale


@dataclass(frozen=True)
class Fp8Rows:
    """An activation quantised per token: data e4m3 [..., K], scale float32 [..., 1]."""

    data: torch.Tensor
    scale: torch.Tensor


@dataclass(frozen=True)
class Fp8Weight:
    """A weight quantised per output channel: data e4m3 [N, K], scale float32 [1, N]."""

    data: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def quantize(cls, weight: torch.Tensor) -> Fp8Weight:
        data, scale = quantize_rows(weight)  # one row per output channel
        return cls(data.contiguous(), scale.reshape(1, -1).contiguous())

    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size() + self.scale.numel() * 4


_KERNEL: dict[tuple[str, torch.dtype], str] = {}


def kernel(device: torch.device, out_dtype: torch.dtype) -> str:
    """How products run on this device: "scaled_mm" (with the bias in its epilogue),
    "scaled_mm+bias" (the bias added after), or "emulated" (this torch has no kernel here)."""
    key = (device.type, out_dtype)
    if key not in _KERNEL:
        # float32 named: this may run in a DiT's loading thread while another thread declares
        # modules (torch's default dtype is global)
        a = torch.ones(16, 32, device=device, dtype=torch.float32).to(E4M3)
        sa = torch.ones(16, 1, device=device, dtype=torch.float32)
        sb = torch.ones(1, 16, device=device, dtype=torch.float32)
        bias = torch.zeros(16, device=device, dtype=out_dtype)
        _KERNEL[key] = "emulated"
        for name, kw in (("scaled_mm", {"bias": bias}), ("scaled_mm+bias", {})):
            try:
                torch._scaled_mm(a, a.t(), scale_a=sa, scale_b=sb, out_dtype=out_dtype, **kw)
            except (RuntimeError, NotImplementedError, TypeError):
                continue
            _KERNEL[key] = name
            break
    return _KERNEL[key]


def linear(
    x: Fp8Rows, w: Fp8Weight, bias: torch.Tensor | None, out_dtype: torch.dtype
) -> torch.Tensor:
    """x [..., K] (quantised per token) @ w [N, K]^T + bias -> [..., N] in out_dtype."""
    lead = x.data.shape[:-1]
    a = x.data.reshape(-1, x.data.shape[-1])  # [M, K]
    sa = x.scale.reshape(-1, 1)  # [M, 1]
    how = kernel(a.device, out_dtype)
    if how == "emulated":  # the same products in float32
        y = F.linear(dequantize(a, sa), dequantize(w.data, w.scale.reshape(-1, 1)))
        if bias is not None:
            y = y + bias.float()
        return y.to(out_dtype).reshape(*lead, -1)
    # use_fast_accum stays off: Hopper's fast FP8 accumulation drops the low bits of long sums
    # (docs/benchmarks.md, "Precision fp8-attention")
    y = torch._scaled_mm(
        a,
        w.data.t(),  # [K, N], column-major as the kernel wants it
        scale_a=sa,
        scale_b=w.scale,
        bias=bias if how == "scaled_mm" else None,
        out_dtype=out_dtype,
    )
    if bias is not None and how != "scaled_mm":
        y = y + bias
    return y.reshape(*lead, -1)
