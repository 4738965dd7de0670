"""Scaled dot-product attention behind one function.

flash-attn is used when importable (and the inputs are half precision on a GPU); otherwise
PyTorch SDPA, which picks cuDNN / flash / memory-efficient kernels on GPU and its own on CPU.
`set_backend` pins one kernel (benchmarks and engines compare them); the CPU always runs SDPA's
own kernel. "int8" is not SDPA's: the logits' product in int8 (pipeline/model/int8_attention.py),
an approximation, measured beside the others before anything renders with it. "fp8" is not
either: cuDNN's FP8 attention (pipeline/model/fp8_attention.py: q, k, v, the softmax's
numerators and the output in e4m3, one scale per tensor), on the CPU its float32 emulation; it
exists so that what it costs a render (velocity, PSNR) can be measured, and nothing renders
with it by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

try:  # optional: `pip install longtake[gpu]`
    from flash_attn import flash_attn_func as _flash_attn_func
except ImportError:  # pragma: no cover - depends on the machine
    _flash_attn_func = None

# On Hopper, cuDNN's fused attention is the fastest SDPA kernel for these shapes (head dim 128,
# bf16, thousands of keys); the others remain as fallbacks in this order.
_GPU_ORDER = [
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]

BACKENDS = ("auto", "flash_attn", "cudnn", "flash", "efficient", "math", "int8", "fp8")
_SDPA = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
_backend = "auto"


def set_backend(name: str) -> None:
    """Which GPU kernel `attention` uses: "auto" (flash-attn if installed, else SDPA's cuDNN,
    flash, memory-efficient, math in that order), "flash_attn", or one SDPA kernel."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; use one of {', '.join(BACKENDS)}")
    if name == "flash_attn" and _flash_attn_func is None:
        raise ValueError("attention backend 'flash_attn' needs the flash-attn package")
    _backend = name


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention of q over (k, v), no mask.

    q: [B, Lq, H, D], k and v: [B, Lk, H, D] (any strides with a contiguous last dimension).
    Returns [B, Lq, H, D].
    """
    if (
        _flash_attn_func is not None
        and _backend in ("auto", "flash_attn")
        and q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and k.stride(-1) == 1
    ):
        return _flash_attn_func(q, k, v)
    if _backend == "int8" and q.is_cuda:
        from pipeline.model import int8_attention

        return int8_attention.attention(q, k, v)
    if _backend == "fp8":
        return _fp8(q, k, v)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if q.is_cuda:
        with _gpu_kernels():
            return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)


def _gpu_kernels():  # noqa: ANN202 - a context manager
    if _backend in _SDPA:
        return sdpa_kernel([_SDPA[_backend]])
    try:
        return sdpa_kernel(_GPU_ORDER, set_priority=True)
    except TypeError:  # PyTorch without priorities: same set, default order
        return sdpa_kernel(_GPU_ORDER)


def _fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The "fp8" backend: cuDNN's FP8 attention on a Hopper GPU (one execution context per
    device), its float32 emulation elsewhere; [B, L, H, D] in and out, q's dtype."""
    from pipeline.model import fp8_attention

    if not q.is_cuda:
        return fp8_attention.emulate(q, k, v).to(q.dtype)
    kernel = fp8_attention.kernel(q.device)
    return kernel(q.contiguous(), k.contiguous(), v.contiguous())
