"""KV caches of the causal stream: one per denoising step, plus the sink's reference keys.

Each step's self-attention sees, per layer, one contiguous key/value buffer (so attention reads
it in place):

    [ reference | motion ][ ring: the last clip's blocks, oldest overwritten first ]
      sink (ref_tokens + motion_tokens)   ring (blocks_per_clip * block_tokens)

Timestep forcing: a block's keys at step i are written into step i's cache by that step's own
forward pass, so later blocks at step i see earlier blocks at step i's noise level. The sink is
identical in every step's cache except for the reference keys' rotation, which moves with the
stream (rolling RoPE) and is rewritten from the unrotated keys in `SinkKeys` on every call.

At precision "fp8-attention" the caches hold e4m3 (`kv_dtype`): keys and values as x8 =
e4m3(x · m) with one power-of-two multiplier m per layer for the keys and one for the values
(`SinkKeys.mults`), chosen by the sink's prefill from the sink's own keys and values with
`KV_HEADROOM` to spare; later tokens past that range saturate. A second prefill (the adaptive
sink) that picks other multipliers rescales what the rings hold (a power of two: exact unless a
value leaves e4m3's range). A resumed stream's prefill picks the multipliers its state's rings
were written with, since it runs on the same sink: the multipliers need no place in a state.

Memory is fixed at open: nothing here grows with the number of clips. A pipeline stage that
runs only some layers of a step holds only those layers (`first_layer` onwards).

The model reads and writes these caches through the two views at the end (its `KVCache`):
`BlockKV`, one block at one step, and `SinkPrefill`, the sink run through the model alone.
"""

from __future__ import annotations

import torch

from pipeline import params
from pipeline.geometry import Geometry
from pipeline.model.fp8_attention import pow2_multiplier, quantize
from pipeline.model.layers import CacheSlots
from pipeline.model.rope import apply_rope

E4M3 = torch.float8_e4m3fn

KV_HEADROOM = 16.0
"""How far past the sink's largest key (value) a later one may reach before it saturates: the
multipliers put the sink's largest at 448 / 16 = 28. e4m3 keeps three mantissa bits at every
magnitude from 2^-6 to 448, so the headroom costs precision only to values 2^-6 · 16 / 448 of
the sink's largest or smaller (about 1/1800)."""


def kv_multipliers(amax: torch.Tensor) -> torch.Tensor:
    """An e4m3 cache's multipliers [2] (keys, values) from the largest magnitudes [2] of a
    sink's rotated keys and of its values: powers of two with `KV_HEADROOM` to spare."""
    return pow2_multiplier(amax.float() * KV_HEADROOM)


def kv_dtype(precision: params.Precision, dtype: torch.dtype) -> torch.dtype:
    """What a stream's key/value caches hold at `precision` (the model in `dtype`)."""
    return E4M3 if params.attention_in_fp8(precision) else dtype


def sink_latents(
    in_dim: int, motion_frames: int, geometry: Geometry, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed float32 buffers for the latents a sink is built from: its reference frame
    [in_dim, 1, h, w] and the portrait's motion latents [in_dim, 1 + (motion_frames - 1) / 4,
    h, w] (the VAE encodes the first frame alone, then four frames per latent)."""
    g = geometry
    motion = 1 + (motion_frames - 1) // 4
    return (
        torch.zeros(in_dim, 1, g.latent_h, g.latent_w, device=device),
        torch.zeros(in_dim, motion, g.latent_h, g.latent_w, device=device),
    )


class StepKVCache:
    """Keys and values of one denoising step: kv [layers, 2 (k, v), cache_tokens, heads, dim],
    for layers first_layer .. first_layer + num_layers - 1."""

    def __init__(
        self,
        geometry: Geometry,
        num_layers: int,
        num_heads: int,
        head_dim: int,
        device: torch.device | str,
        dtype: torch.dtype,
        first_layer: int = 0,
    ):
        self.geometry = geometry
        self.layers = range(first_layer, first_layer + num_layers)
        self.kv = torch.zeros(
            num_layers, 2, geometry.cache_tokens, num_heads, head_dim, device=device, dtype=dtype
        )

    @property
    def fp8(self) -> bool:
        """Whether this cache holds e4m3 (precision "fp8-attention")."""
        return self.kv.dtype == E4M3

    def layer(self, layer: int) -> torch.Tensor:
        """kv [2, cache_tokens, heads, dim] of model layer `layer`."""
        return self.kv[layer - self.layers.start]

    def ring_slot(self, block_index: int) -> tuple[int, int]:
        """(first token of block `block_index`'s slot, number of keys attention then reads)."""
        g = self.geometry
        slot = block_index % g.blocks_per_clip
        filled = min(block_index + 1, g.blocks_per_clip)
        return g.sink_tokens + slot * g.block_tokens, g.sink_tokens + filled * g.block_tokens

    @property
    def ring(self) -> torch.Tensor:
        return self.kv[:, :, self.geometry.sink_tokens :]

    @property
    def sink_motion_keys(self) -> torch.Tensor:
        g = self.geometry
        return self.kv[:, 0, g.ref_tokens : g.sink_tokens]

    @property
    def sink_values(self) -> torch.Tensor:
        return self.kv[:, 1, : self.geometry.sink_tokens]

    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()


class SinkKeys:
    """The reference tokens' keys before rotation: ref [layers, ref_tokens, heads, dim], for
    layers first_layer .. first_layer + num_layers - 1; and the multipliers of e4m3 caches:
    mults [layers, 2 (keys, values)] float32, 0 until a prefill picks them."""

    def __init__(
        self,
        geometry: Geometry,
        num_layers: int,
        num_heads: int,
        head_dim: int,
        device: torch.device | str,
        dtype: torch.dtype,
        first_layer: int = 0,
    ):
        self.geometry = geometry
        self.layers = range(first_layer, first_layer + num_layers)
        self.ref = torch.zeros(
            num_layers, geometry.ref_tokens, num_heads, head_dim, device=device, dtype=dtype
        )
        self.mults = torch.zeros(num_layers, 2, device=device)

    def nbytes(self) -> int:
        return self.ref.numel() * self.ref.element_size() + self.mults.numel() * 4


class BlockKV:
    """Step i's cache as block b's step i reads and writes it (the model's `KVCache`).

    Each layer writes the block's keys, rotated to the block's frames, and its values into the
    block's ring slot, and rewrites the reference keys rotated to where the sink sits for this
    block and step (rolling RoPE); the queries then attend to the sink and every filled ring
    slot, this block's included.
    """

    def __init__(
        self,
        cache: StepKVCache,
        sink_keys: SinkKeys,
        block_index: int,
        freqs: torch.Tensor,
        ref_freqs: torch.Tensor,
    ):
        self.cache = cache
        self.sink_keys = sink_keys
        self._freqs = freqs  # [block_tokens, 1, D/2, 2]
        self.ref_freqs = ref_freqs  # [ref_tokens, 1, D/2, 2]
        self.begin, self.valid = cache.ring_slot(block_index)
        self.end = self.begin + cache.geometry.block_tokens

    @property
    def freqs(self) -> torch.Tensor:
        return self._freqs

    def slots(self, layer: int) -> CacheSlots:
        """Layer `layer`'s views: the block's ring slot, the reference keys' place, and the
        valid part of the cache the queries attend to."""
        g = self.cache.geometry
        kv = self.cache.layer(layer)  # [2, cache_tokens, H, D]
        ref = layer - self.sink_keys.layers.start
        return CacheSlots(
            k_slot=kv[0, self.begin : self.end],
            v_slot=kv[1, self.begin : self.end],
            ref_keys=self.sink_keys.ref[ref : ref + 1],
            ref_freqs=self.ref_freqs,
            ref_slot=kv[0, : g.ref_tokens],
            keys=kv[0, : self.valid].unsqueeze(0),
            values=kv[1, : self.valid].unsqueeze(0),
            kv_mults=self.sink_keys.mults[ref],
        )

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v [1, block_tokens, H, D] -> keys, values [1, valid, H, D]."""
        if self.cache.fp8:  # its writes quantise: SelfAttention writes through `slots`
            raise TypeError("an e4m3 cache is written through its slots, not update()")
        s = self.slots(layer)
        s.ref_slot.copy_(apply_rope(s.ref_keys, s.ref_freqs)[0])
        s.k_slot.copy_(apply_rope(k, self._freqs)[0])
        s.v_slot.copy_(v[0])
        return s.keys, s.values


class SinkPrefill:
    """The sink's tokens run through the model alone (the model's `KVCache`): each layer keeps
    the reference keys unrotated in `sink_keys` and writes the rotated motion keys and all the
    sink's values into every step cache that holds the layer; the sink attends to itself."""

    def __init__(self, caches: list[StepKVCache], sink_keys: SinkKeys, freqs: torch.Tensor):
        self.caches = caches
        self.sink_keys = sink_keys
        self._freqs = freqs  # [sink_tokens, 1, D/2, 2]

    @property
    def freqs(self) -> torch.Tensor:
        return self._freqs

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v [1, sink_tokens, H, D] -> the same keys rotated, and v."""
        sk = self.sink_keys
        if layer in sk.layers:
            g = sk.geometry
            sk.ref[layer - sk.layers.start] = k[0, : g.ref_tokens]
        k = apply_rope(k, self._freqs)
        mults = None
        if any(c.fp8 and layer in c.layers for c in self.caches):
            mults = self._pick_mults(layer, k, v)
        for cache in self.caches:
            if layer in cache.layers:
                g = cache.geometry
                kv = cache.layer(layer)  # [2, cache_tokens, H, D]
                if cache.fp8:
                    assert mults is not None
                    new, ratio = mults
                    ring = kv[:, g.sink_tokens :]  # [2, ring_tokens, H, D]
                    ring.copy_(quantize(ring, ratio.view(2, 1, 1, 1)))
                    kv[0, g.ref_tokens : g.sink_tokens] = quantize(k[0, g.ref_tokens :], new[0])
                    kv[1, : g.sink_tokens] = quantize(v[0], new[1])
                else:
                    kv[0, g.ref_tokens : g.sink_tokens] = k[0, g.ref_tokens :]
                    kv[1, : g.sink_tokens] = v[0]
        if mults is not None and layer in sk.layers:
            sk.mults[layer - sk.layers.start] = mults[0]
        return k, v

    def _pick_mults(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer`'s multipliers [2] (keys, values) from the sink's rotated keys and its
        values, and the factor [2] that takes what the rings hold to them (1 where none were
        picked before: the rings are empty, or a resume's, written at these multipliers).
        On the device: no host synchronisation."""
        new = kv_multipliers(torch.stack([k.abs().amax(), v.abs().amax()]))
        old = self.sink_keys.mults[layer - self.sink_keys.layers.start]
        ratio = torch.where(old > 0, new / old.clamp_min(torch.finfo(torch.float32).tiny), 1.0)
        return new, ratio
