"""Transformer building blocks of the S2V DiT (checkpoint names: `blocks.N.*`, `head.*`).

Precision follows the reference: linear layers and attention run in the weights' dtype (bf16 on
GPU), while norms, the adaptive modulation and the residual sums are computed in float32. In the
`fp8` precision (`TransformerBlock.to_fp8`), a block's linear layers hold float8 e4m3 weights
and take their inputs quantised per token, by the fused step before them (pipeline/model/fp8.py).
Self-attention runs in FP8 where its cache holds e4m3 (precision "fp8-attention",
pipeline/cache.py): one compiled step quantises q and writes k and v, cuDNN's FP8 kernel
attends (pipeline/model/fp8_attention.py), and its e4m3 output is the o-projection's FP8 rows.

Self-attention reads and writes a KV cache it is handed (`KVCache`, implemented in
pipeline/cache.py), as a decoder with a cache does: the cache knows where the call's tokens sit
(their RoPE rotations), stores their keys and values, and hands back every key and value the
queries attend to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.model import fp8, fp8_attention, fused
from pipeline.model.attention import attention
from pipeline.model.fp8 import Fp8Rows, Fp8Weight
from pipeline.model.rope import apply_rope


@dataclass(frozen=True)
class CacheSlots:
    """Where one layer's call writes into its step cache, and what its queries attend to:
    views of the cache (the three written ones do not overlap)."""

    k_slot: torch.Tensor  # [L, H, D]: this call's keys, rotated
    v_slot: torch.Tensor  # [L, H, D]: its values
    ref_keys: torch.Tensor  # [1, R, H, D]: the reference frame's keys, unrotated
    ref_freqs: torch.Tensor  # [R, 1, D/2, 2]: where the reference frame sits for this call
    ref_slot: torch.Tensor  # [R, H, D]: the reference keys, rotated
    keys: torch.Tensor  # [1, S, H, D]: what the queries attend to
    values: torch.Tensor  # [1, S, H, D]
    kv_mults: torch.Tensor  # [2] float32: an e4m3 cache's multipliers (keys, values)

    @property
    def fp8(self) -> bool:
        """Whether the cache holds e4m3 (then self-attention runs in FP8)."""
        return self.k_slot.dtype == torch.float8_e4m3fn


_fused_cache_writes = False


def set_fused_cache_writes(enabled: bool) -> None:
    """Normalise, rotate and write a self-attention's queries, keys and values in one compiled
    graph (`fused.norm_rope_into_cache`) where its cache offers its slots: off by default,
    for measuring (`ops/bench/step_profile.py --fused-cache-writes`)."""
    global _fused_cache_writes
    _fused_cache_writes = enabled


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


@runtime_checkable
class SlotCache(KVCache, Protocol):
    """A cache that can hand out the views a layer's call writes and reads (a block's step
    cache: the sink's prefill writes into several caches and cannot)."""

    def slots(self, layer: int) -> CacheSlots: ...


class Linear(nn.Linear):
    """nn.Linear (the same parameters, under the same names) whose weight can be quantised to
    float8 e4m3 once loaded (`to_fp8`); it then takes FP8 rows, or quantises a tensor itself."""

    weight_fp8: torch.Tensor | None
    weight_scale: torch.Tensor | None

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features)
        self.register_buffer("weight_fp8", None)
        self.register_buffer("weight_scale", None)

    def to_fp8(self) -> None:
        """Quantise the weight per output channel; the bf16 weight is freed."""
        w = Fp8Weight.quantize(self.weight.detach())
        self.weight_fp8, self.weight_scale = w.data, w.scale
        self.register_parameter("weight", None)

    def forward(self, x: torch.Tensor | Fp8Rows) -> torch.Tensor:
        """x [..., in] -> [..., out] in the weights' (or, FP8: the bias's) dtype."""
        if self.weight_fp8 is None or self.weight_scale is None:
            if isinstance(x, Fp8Rows):
                raise TypeError("FP8 rows given to a linear layer that is not in FP8")
            return F.linear(x, self.weight, self.bias)
        return _fp8_linear(x, Fp8Weight(self.weight_fp8, self.weight_scale), self.bias)


def _fp8_linear(x: torch.Tensor | Fp8Rows, weight: Fp8Weight, bias: torch.Tensor) -> torch.Tensor:
    """x [..., K] (FP8 rows, or a tensor quantised here per token) @ weight [N, K]^T + bias,
    in the bias's dtype."""
    rows = x if isinstance(x, Fp8Rows) else Fp8Rows(*fused.quantize_rows(x))
    return fp8.linear(rows, weight, bias, bias.dtype)


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
        self.q = Linear(dim, dim)
        self.k = Linear(dim, dim)
        self.v = Linear(dim, dim)
        self.o = Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)
        self.register_buffer("qkv_fp8", None)
        self.register_buffer("qkv_scale", None)
        self.register_buffer("qkv_bias", None)

    def fuse_qkv(self) -> None:
        """FP8 (after the three layers' `to_fp8`): q, k and v from one product of N = 3C
        instead of three of C (their weights, scales and biases stacked; the layers' own copies
        freed). Each output channel keeps its own scale, so the values are the three products'."""
        parts = (self.q, self.k, self.v)
        if any(m.weight_fp8 is None or m.weight_scale is None for m in parts):
            raise ValueError("fuse_qkv needs the q, k and v layers in FP8")
        self.qkv_fp8 = torch.cat([m.weight_fp8 for m in parts])  # [3C, C]
        self.qkv_scale = torch.cat([m.weight_scale for m in parts], dim=1)  # [1, 3C]
        self.qkv_bias = torch.cat([m.bias.detach() for m in parts])  # [3C]
        for m in parts:
            m.weight_fp8 = m.weight_scale = None
            m.register_parameter("bias", None)

    def _qkv(self, x: torch.Tensor | Fp8Rows) -> tuple[torch.Tensor, ...]:
        """q, k, v [1, L, C] each (with FP8 fused: views into one [1, L, 3C] product)."""
        if self.qkv_fp8 is None or self.qkv_scale is None or self.qkv_bias is None:
            return self.q(x), self.k(x), self.v(x)
        qkv = _fp8_linear(x, Fp8Weight(self.qkv_fp8, self.qkv_scale), self.qkv_bias)
        return qkv.chunk(3, dim=-1)

    def forward(self, x: torch.Tensor | Fp8Rows, cache: KVCache) -> torch.Tensor:
        """x [1, L, C] (or its FP8 rows) -> [1, L, C]."""
        q, k, v = self._qkv(x)
        slots = cache.slots(self.layer) if isinstance(cache, SlotCache) else None
        if slots is not None and slots.fp8:
            return self._attend_fp8(q, k, v, cache.freqs, slots)
        if slots is not None and _fused_cache_writes:
            s = slots
            q = fused.norm_rope_into_cache(
                q,
                k,
                v,
                self.norm_q.weight,
                self.norm_k.weight,
                self.norm_k.eps,
                cache.freqs,
                s.k_slot,
                s.v_slot,
                s.ref_keys,
                s.ref_freqs,
                s.ref_slot,
            )
            return self.o(attention(q, s.keys, s.values).flatten(2))
        q = self.norm_q(q).unflatten(2, (self.num_heads, -1))  # [1, L, H, D]
        k = self.norm_k(k).unflatten(2, (self.num_heads, -1))  # [1, L, H, D]
        v = v.unflatten(2, (self.num_heads, -1))  # [1, L, H, D]
        keys, values = cache.update(self.layer, k, v)  # [1, S, H, D]: sink, ring, these tokens
        q = apply_rope(q, cache.freqs)  # the queries sit where the new keys sit
        return self.o(attention(q, keys, values).flatten(2))

    def _attend_fp8(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        freqs: torch.Tensor,
        s: CacheSlots,
    ) -> torch.Tensor:
        """Self-attention over an e4m3 cache: q, k, v [1, L, C] normalised, rotated and
        quantised in one step (k and v into the cache), FP8 attention over chunks of the
        cache, and the chunks' outputs merged into the o-projection's FP8 rows."""
        q8, factors = fused.fp8_attention_inputs(
            q,
            k,
            v,
            self.norm_q.weight,
            self.norm_k.weight,
            self.norm_k.eps,
            freqs,
            s.k_slot,
            s.v_slot,
            s.ref_keys,
            s.ref_freqs,
            s.ref_slot,
            s.kv_mults,
        )
        o8, stats = fp8_attention.partials(q8, s.keys, s.values, factors)
        rows, scales = fused.fp8_attention_rows(o8, stats, factors)  # [1, L, C], [1, L, 1]
        if self.o.weight_fp8 is not None:
            return self.o(Fp8Rows(rows, scales))
        return self.o((rows.float() * scales).to(q.dtype))


class CrossAttention(nn.Module):
    """Attention from tokens to a fixed context (text, or one frame's audio tokens)."""

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.q = Linear(dim, dim)
        self.k = Linear(dim, dim)
        self.v = Linear(dim, dim)
        self.o = Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of a context [B, Lc, C]; computed once, reused by every call."""
        k = self.norm_k(self.k(context)).unflatten(2, (self.num_heads, -1))
        v = self.v(context).unflatten(2, (self.num_heads, -1))
        return k, v

    def forward(self, x: torch.Tensor | Fp8Rows, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x [B, L, C] (or its FP8 rows); k, v [B, Lc, H, D] -> [B, L, C]."""
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
            Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), Linear(ffn_dim, dim)
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.fp8 = False

    def to_fp8(self) -> None:
        """Quantise this block's linear layers (attention, text cross-attention, FFN) to FP8,
        self-attention's q, k and v as one product; from now on the step before each one hands
        it FP8 rows."""
        for m in self.modules():
            if isinstance(m, Linear):
                m.to_fp8()
        self.self_attn.fuse_qkv()
        self.fp8 = True

    def forward(
        self,
        x: torch.Tensor,
        time_mod: torch.Tensor,
        cache: KVCache,
        text_kv: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """x [1, L, C] in the weights' dtype; time_mod [6, C] float32 (one timestep for all L)."""
        dtype = x.dtype
        shift1, scale1, gate1, shift2, scale2, gate2 = (
            self.modulation[0].float() + time_mod
        ).unbind(0)  # [C] each
        h = x.float()  # the residual stream, float32 inside the block

        y = self.self_attn(self._modulated_norm(h, shift1, scale1, dtype), cache)
        h, normed = self._residual_affine_norm(h, y, gate1, dtype)
        y = self.cross_attn(normed, *text_kv)
        h, normed = self._residual_modulated_norm(h, y, shift2, scale2, dtype)
        u = self.ffn[0](normed)  # [1, L, ffn_dim]
        u = Fp8Rows(*fused.gelu_fp8(u)) if self.fp8 else self.ffn[1](u)
        y = self.ffn[2](u)
        return fused.gated_residual(h, y, gate2).to(dtype)

    # the input of the next linear layers: in the weights' dtype, or their FP8 rows

    def _modulated_norm(
        self, h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor | Fp8Rows:
        if self.fp8:
            return Fp8Rows(*fused.modulated_norm_fp8(h, shift, scale, self.eps))
        return fused.modulated_norm(h, shift, scale, self.eps, dtype)

    # a residual sum and the norm after it, in one compiled step: (the sum, the next input)

    def _residual_affine_norm(
        self, h: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor | Fp8Rows]:
        w, b = self.norm3.weight, self.norm3.bias
        if self.fp8:
            h, q, s = fused.gated_residual_affine_norm_fp8(h, y, gate, w, b, self.eps)
            return h, Fp8Rows(q, s)
        return fused.gated_residual_affine_norm(h, y, gate, w, b, self.eps, dtype)

    def _residual_modulated_norm(
        self,
        h: torch.Tensor,
        y: torch.Tensor,
        shift: torch.Tensor,
        scale: torch.Tensor,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor | Fp8Rows]:
        if self.fp8:
            h, q, s = fused.residual_modulated_norm_fp8(h, y, shift, scale, self.eps)
            return h, Fp8Rows(q, s)
        return fused.residual_modulated_norm(h, y, shift, scale, self.eps, dtype)


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
