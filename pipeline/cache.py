"""KV caches of the causal stream: one per denoising step, plus the sink's reference keys.

Each step's self-attention sees, per layer, one contiguous key/value buffer (so attention reads
it in place):

    [ reference | motion ][ ring: the last clip's blocks, oldest overwritten first ]
      sink (ref_tokens + motion_tokens)   ring (blocks_per_clip * block_tokens)

Timestep forcing: a block's keys at step i are written into step i's cache by that step's own
forward pass, so later blocks at step i see earlier blocks at step i's noise level. The sink is
identical in every step's cache except for the reference keys' rotation, which moves with the
stream (rolling RoPE) and is rewritten from the unrotated keys in `SinkKeys` on every call.

Memory is fixed at open: nothing here grows with the number of clips. A pipeline stage that
runs only some layers of a step holds only those layers (`first_layer` onwards).
"""

from __future__ import annotations

import torch

from pipeline.geometry import Geometry


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
    layers first_layer .. first_layer + num_layers - 1."""

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
        self.layers = range(first_layer, first_layer + num_layers)
        self.ref = torch.zeros(
            num_layers, geometry.ref_tokens, num_heads, head_dim, device=device, dtype=dtype
        )

    def nbytes(self) -> int:
        return self.ref.numel() * self.ref.element_size()
