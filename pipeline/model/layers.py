"""Transformer building blocks of the S2V DiT (checkpoint names: `blocks.N.*`, `head.*`).

Precision follows the reference: linear layers and attention run in the weights' dtype (bf16 on
GPU), while norms, the adaptive modulation and the residual sums are computed in float32.

Self-attention reads and writes a KV cache it is handed (`KVCache`, implemented in
pipeline/cache.py), as a decoder with a cache does: the cache knows where the call's tokens sit
(their RoPE rotations), stores their keys and values, and hands back every key and value the
queries attend to.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.model import fused
from pipeline.model.attention import attention
from pipeline.model.rope import apply_rope


class KVCache(Protocol):
    """The self-attention cache of one call of the model (one block at one step, or the sink)."""

    @property
    def freqs(self) -> torch.Tensor:
        """RoPE rotations of this call's tokens: [L, 1, D/2, 2]."""
        ...

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store layer `layer`'s new keys (not yet rotated) and values [1, L, H, D]; return the
        keys (rotated) and values the queries attend to: [1, S, H, D] each."""
        ...


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused.rms_norm(x, self.weight, self.eps)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6, layer: int = 0):
        super().__init__()
        self.num_heads = num_heads
        self.layer = layer  # which of the cache's layers this one reads and writes
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """x [1, L, C] -> [1, L, C]."""
        q = self.norm_q(self.q(x)).unflatten(2, (self.num_heads, -1))  # [1, L, H, D]
        k = self.norm_k(self.k(x)).unflatten(2, (self.num_heads, -1))  # [1, L, H, D]
        v = self.v(x).unflatten(2, (self.num_heads, -1))  # [1, L, H, D]
        keys, values = cache.update(self.layer, k, v)  # [1, S, H, D]: sink, ring, these tokens
        q = apply_rope(q, cache.freqs)  # the queries sit where the new keys sit
        return self.o(attention(q, keys, values).flatten(2))


class CrossAttention(nn.Module):
    """Attention from tokens to a fixed context (text, or one frame's audio tokens)."""

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of a context [B, Lc, C]; computed once, reused by every call."""
        k = self.norm_k(self.k(context)).unflatten(2, (self.num_heads, -1))
        v = self.v(context).unflatten(2, (self.num_heads, -1))
        return k, v

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x [B, L, C]; k, v [B, Lc, H, D] -> [B, L, C]."""
        q = self.norm_q(self.q(x)).unflatten(2, (self.num_heads, -1))
        return self.o(attention(q, k, v).flatten(2))


class TransformerBlock(nn.Module):
    """Self-attention, text cross-attention and FFN, modulated by the timestep (AdaLN)."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, eps: float = 1e-6, layer: int = 0):
        super().__init__()
        self.eps = eps
        self.self_attn = SelfAttention(dim, num_heads, eps, layer)
        self.norm3 = nn.LayerNorm(dim, eps=eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(dim, num_heads, eps)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim)
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        time_mod: torch.Tensor,
        cache: KVCache,
        text_kv: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """x [1, L, C] in the weights' dtype; time_mod [6, C] float32 (one timestep for all L)."""
        dtype, eps = x.dtype, self.eps
        shift1, scale1, gate1, shift2, scale2, gate2 = (
            self.modulation[0].float() + time_mod
        ).unbind(0)  # [C] each
        h = x.float()  # the residual stream, float32 inside the block

        y = self.self_attn(fused.modulated_norm(h, shift1, scale1, eps, dtype), cache)
        h = fused.gated_residual(h, y, gate1)

        c = fused.affine_norm(h, self.norm3.weight, self.norm3.bias, eps, dtype)
        h = fused.residual(h, self.cross_attn(c, *text_kv))

        y = self.ffn(fused.modulated_norm(h, shift2, scale2, eps, dtype))
        return fused.gated_residual(h, y, gate2).to(dtype)


class Head(nn.Module):
    """Final AdaLN + projection to patch velocities."""

    def __init__(self, dim: int, out_dim: int, patch_size: tuple[int, int, int], eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.head = nn.Linear(dim, out_dim * patch_size[0] * patch_size[1] * patch_size[2])
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        """x [B, L, C]; time_emb [C] float32 -> [B, L, prod(patch) * out_dim] float32."""
        shift, scale = (self.modulation[0].float() + time_emb).unbind(0)
        h = fused.modulated_norm(x.float(), shift, scale, self.eps, torch.float32)
        return F.linear(h, self.head.weight.float(), self.head.bias.float())
