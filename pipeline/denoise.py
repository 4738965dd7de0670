"""One denoising step of one block: the unit of work of the causal stream.

`Denoiser.step(cache, latents, step, block_index, audio)` takes a block's latents at step
`step`'s noise level and returns them one Euler step cleaner: one forward of the model
(pipeline/model/transformer.py), which writes the block's keys into that step's cache. It
touches no other step's state, so a pipeline-parallel engine can give each GPU a range of steps
and pass block latents along. A step is also available in three pieces, `begin` (patch
embedding) -> `layers(start, stop)` -> `end` (head and Euler update), so that a stage may run
part of a step's layers and hand the hidden tokens on: the pieces are the model's forward cut
in three, the same operations in the same order.

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

from pipeline.cache import BlockKV, SinkKeys, SinkPrefill, StepKVCache
from pipeline.geometry import Geometry
from pipeline.model import WanS2VTransformer
from pipeline.model import rope as rope_mod
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
        with torch.no_grad():  # as every step runs: one compiled graph per shape, not two
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
        stop = max([sink_keys.layers.stop, *(c.layers.stop for c in caches)])
        # contiguous: the same compiled graphs whatever layout the latents came in (a slice of
        # the portrait's latents, a block's first frame, the VAE encoder's channels-last output)
        reference, motion = reference.contiguous(), motion.contiguous()
        sink = self.dit.embed_sink(reference, motion, self.cfg.sink_frame)
        freqs = self.dit.rope.freqs(sink.positions, self.dit.device)
        prefill = SinkPrefill(caches, sink_keys, freqs)
        self.dit.run_layers(sink.tokens, self.zero_time, prefill, self.text_kv, layers=range(stop))

    def block_kv(
        self, cache: StepKVCache, sink_keys: SinkKeys, step: int, block_index: int
    ) -> BlockKV:
        """Step `step`'s cache as block `block_index` sees it: the block's positions, and the
        reference frame's for this block and step (rolling RoPE)."""
        dit = self.dit
        first = block_index * self.geometry.frames_per_block
        freqs = dit.rope.freqs(self._block_grid + self._frame_axis * first, dit.device)
        ref_frame = max(self.cfg.sink_frame, first + self.sink_offset(block_index, step))
        ref_freqs = dit.rope.freqs(self._frame_grid + self._frame_axis * ref_frame, dit.device)
        return BlockKV(cache, sink_keys, block_index, freqs, ref_freqs)

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
        kv = self.block_kv(cache, sink_keys, step, block_index)
        velocity = self.dit(latents, self.times[step], kv, self.text_kv, audio)
        return self.schedule.euler(latents, velocity, step)

    def denoise_block(
        self,
        caches: list[StepKVCache],
        sink_keys: SinkKeys,
        features: torch.Tensor,
        noise: torch.Tensor,
        block_index: int,
    ) -> torch.Tensor:
        """Stream block `block_index` through every step (caches[i] is step i's): from its clip's
        noise [16, frames of a clip, h, w] to clean latents [16, 3, h, w]; `features` are its
        speech features [layers, C, 12 video frames]."""
        g = self.geometry
        b = block_index % g.blocks_per_clip
        audio = self.audio(features)
        x = noise[:, b * g.frames_per_block : (b + 1) * g.frames_per_block]
        for i, cache in enumerate(caches):
            x = self.step(cache, sink_keys, x, i, block_index, audio)
        return x

    # ---- the same step in pieces, for a pipeline stage that runs some of its layers --------

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
        kv = self.block_kv(cache, sink_keys, step, block_index)
        stop = self.dit.cfg.num_layers if stop is None else stop
        return self.dit.run_layers(
            x, self.times[step], kv, self.text_kv, audio, layers=range(start, stop)
        )

    @torch.no_grad()
    def end(self, x: torch.Tensor, latents: torch.Tensor, step: int) -> torch.Tensor:
        """Tokens after the last layer + the step's input latents -> latents at sigmas[step+1]."""
        velocity = self.dit.velocity(x, self.times[step], latents.shape[1:])
        return self.schedule.euler(latents, velocity, step)
