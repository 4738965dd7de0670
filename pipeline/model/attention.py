"""Scaled dot-product attention behind one function.

flash-attn is used when importable (and the inputs are half precision on a GPU); otherwise
PyTorch SDPA, which picks cuDNN / flash / memory-efficient kernels on GPU and its own on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # optional: `pip install longtake[gpu]`
    from flash_attn import flash_attn_func as _flash_attn_func
except ImportError:  # pragma: no cover - depends on the machine
    _flash_attn_func = None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention of q over (k, v), no mask.

    q: [B, Lq, H, D], k and v: [B, Lk, H, D] (any strides with a contiguous last dimension).
    Returns [B, Lq, H, D].
    """
    if (
        _flash_attn_func is not None
        and q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and k.stride(-1) == 1
    ):
        return _flash_attn_func(q, k, v)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)
