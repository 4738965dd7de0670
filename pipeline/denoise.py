"""One denoising step of one block: the unit of work of the causal stream.

`Denoiser.step(cache, latents, step, block_index, audio)` takes a block's latents at step
`step`'s noise level and returns them one Euler step cleaner, writing the block's keys into that
step's cache. It touches no other step's state, so a pipeline-parallel engine can give each GPU a
range of steps and pass block latents along. A step is also available in three pieces,
`begin` (patch embedding) -> `layers(start, stop)` -> `end` (head and Euler update), so that a
stage may run part of a step's layers and hand the hidden tokens on: the pieces run exactly the
operations of `step`, in its order.

Positions (RoPE frames): block g covers latent frames 3g .. 3g+2 (counting from the stream's
start, without bound); the ring keys keep the positions they were written at. The sink's motion
tokens sit at fixed negative frames; its reference tokens sit `offset` frames ahead of the block
(but never before `sink_frame`), with `offset` drawn in `sink_offset_range` per block and step
from the request's seed (rolling RoPE, reproducible).
"""

from __future__ import annotations

import hashlib
import random

import torch

from pipeline.cache import SinkKeys, StepKVCache
from pipeline.geometry import Geometry
from pipeline.model import WanS2VTransformer
from pipeline.model import rope as rope_mod
from pipeline.model.attention import attention
from pipeline.model.layers import Attend
from pipeline.model.transformer import AudioContext
from pipeline.presets import StreamConfig
from pipeline.sampler import FlowSchedule


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed for one named random draw of a stream (noise of clip c, offset of ...)."""
    key = ":".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


class Denoiser:
    """A stream's fixed conditioning (text, timesteps, seed) and the per-step function."""

    def __init__(
        self,
        dit: WanS2VTransformer,
        geometry: Geometry,
        schedule: FlowSchedule,
        stream_cfg: StreamConfig,
        text: torch.Tensor,
        seed: int,
    ):
        self.dit = dit
        self.geometry = geometry
        self.schedule = schedule
        self.cfg = stream_cfg
        self.seed = seed
        self.text_kv = dit.text_context(text)
        self.times = [dit.time_modulation(t) for t in schedule.timesteps]
        # the sink's tokens are clean: they are always run at timestep 0
        self.zero_time = dit.time_modulation(0.0)
        rows, cols = geometry.grid
        self._rows, self._cols = range(rows), range(cols)
        # token positions of a block at frame 0 and of the reference frame, kept on the model's
        # device: a step shifts them along the frame axis without a host round trip
        frames = range(geometry.frames_per_block)
        self._block_grid = rope_mod.grid(list(frames), self._rows, self._cols).to(dit.device)
        self._frame_grid = rope_mod.grid([0], self._rows, self._cols).to(dit.device)
        self._frame_axis = torch.tensor([1, 0, 0], device=dit.device)

    def sink_offset(self, block_index: int, step: int) -> int:
        lo, hi = self.cfg.sink_offset_range
        return random.Random(derive_seed(self.seed, "sink-offset", block_index, step)).randint(
            lo, hi
        )

    def audio(self, features: torch.Tensor) -> AudioContext:
        """A block's audio context from its wav2vec2 features [layers, C, 12 video frames]."""
        return self.dit.audio_context(features.to(self.dit.device), self.cfg.motion_frames)

    @torch.no_grad()
    def prefill_sink(
        self,
        caches: list[StepKVCache],
        sink_keys: SinkKeys,
        reference: torch.Tensor,
        motion: torch.Tensor,
    ) -> None:
        """Run the sink tokens (reference latent [16,1,h,w] + motion latents [16,T,h,w]) through
        the model alone and store their keys and values in every step's cache.

        Only the layers up to the last one `sink_keys` and the caches hold are run; each layer's
        keys go to the caches that hold that layer."""
        g = self.geometry
        stop = max([sink_keys.layers.stop, *(c.layers.stop for c in caches)])
        sink = self.dit.embed_sink(reference, motion, self.cfg.sink_frame)
        freqs = self.dit.rope.freqs(sink.positions, self.dit.device)

        def attend(layer: int) -> Attend:
            holders = [c.layer(layer) for c in caches if layer in c.layers]

            def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
                if layer in sink_keys.layers:
                    sink_keys.ref[layer - sink_keys.layers.start] = k[0, : g.ref_tokens]
                k = rope_mod.apply_rope(k, freqs)
                for kv in holders:
                    kv[0, g.ref_tokens : g.sink_tokens] = k[0, g.ref_tokens :]
                    kv[1, : g.sink_tokens] = v[0]
                return attention(rope_mod.apply_rope(q, freqs), k, v)

            return fn

        self.dit.run_layers(sink.tokens, self.zero_time, attend, self.text_kv, stop=stop)

    @torch.no_grad()
    def step(
        self,
        cache: StepKVCache,
        sink_keys: SinkKeys,
        latents: torch.Tensor,
        step: int,
        block_index: int,
        audio: AudioContext,
    ) -> torch.Tensor:
        """Block latents [16, 3, h, w] (float32) at sigmas[step] -> at sigmas[step + 1]."""
        x = self.begin(latents)
        x = self.layers(cache, sink_keys, x, step, block_index, audio)
        return self.end(x, latents, step)

    @torch.no_grad()
    def begin(self, latents: torch.Tensor) -> torch.Tensor:
        """A block's latents [16, 3, h, w] -> tokens [1, block_tokens, C] (model dtype)."""
        return self.dit.embed_video(latents)

    @torch.no_grad()
    def layers(
        self,
        cache: StepKVCache,
        sink_keys: SinkKeys,
        x: torch.Tensor,
        step: int,
        block_index: int,
        audio: AudioContext,
        start: int = 0,
        stop: int | None = None,
    ) -> torch.Tensor:
        """Layers [start, stop) of step `step` over a block's tokens x [1, L, C]."""
        g = self.geometry
        dit = self.dit
        first = block_index * g.frames_per_block
        q_freqs = dit.rope.freqs(self._block_grid + self._frame_axis * first, dit.device)
        ref_frame = max(self.cfg.sink_frame, first + self.sink_offset(block_index, step))
        ref_freqs = dit.rope.freqs(self._frame_grid + self._frame_axis * ref_frame, dit.device)
        begin, valid = cache.ring_slot(block_index)
        end = begin + g.block_tokens
        ref_base = sink_keys.layers.start

        def attend(layer: int) -> Attend:
            kv = cache.layer(layer)
            ref = layer - ref_base

            def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
                kv[0, : g.ref_tokens] = rope_mod.apply_rope(
                    sink_keys.ref[ref : ref + 1], ref_freqs
                )[0]
                kv[0, begin:end] = rope_mod.apply_rope(k, q_freqs)[0]
                kv[1, begin:end] = v[0]
                q = rope_mod.apply_rope(q, q_freqs)
                return attention(q, kv[0, :valid].unsqueeze(0), kv[1, :valid].unsqueeze(0))

            return fn

        return dit.run_layers(x, self.times[step], attend, self.text_kv, audio, start, stop)

    @torch.no_grad()
    def end(self, x: torch.Tensor, latents: torch.Tensor, step: int) -> torch.Tensor:
        """Tokens after the last layer + the step's input latents -> latents at sigmas[step+1]."""
        g = self.geometry
        velocity = self.dit.velocity(x, self.times[step], (g.frames_per_block, *g.grid))
        return self.schedule.euler(latents, velocity, step)
