"""One rank's part of one stream: its steps' layers of every block, and/or the online decode.

The DiT part runs in the rank's main thread, block after block (see pipeline.tpp.engine for
the schedule). Between blocks it reads the caller's messages; at a clip boundary it may wait
for the caller's decision about an older boundary (its snapshot slot is needed again). The
decode runs in a thread of its own, on its own CUDA stream: on the last DiT rank it overlaps
the DiT work of the next block; on a rank of its own it receives the final latents itself, so
the main thread stays free to answer the caller.

Every operation on a block is the single-device stream's (pipeline.stream), in its order: the
noise of clip c, the block's audio features and context, the steps' begin / layers / end, the
clip-0 adaptive sink, the streaming decode. So frames equal the single-device frames bit for
bit where the arithmetic is deterministic (float32 on the CPU).
"""

from __future__ import annotations

import os
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from pipeline import text as text_mod
from pipeline import vae as vae_mod
from pipeline.audio_features import AudioFeatures
from pipeline.cache import SinkKeys, StepKVCache, kv_dtype, sink_latents
from pipeline.components import Components
from pipeline.denoise import Denoiser
from pipeline.geometry import Geometry
from pipeline.host_buffers import HostBuffers, Spec, copy_piecewise, make_buffer
from pipeline.presets import Preset
from pipeline.sampler import flow_schedule
from pipeline.state import (
    SINK_CACHES,
    SINK_LATENT,
    SINK_MOTION,
    CheckpointSource,
    StateSource,
    TensorSource,
    shard_of,
)
from pipeline.stream import ClipAudio, clip_noise, portrait_latents, to_device
from pipeline.tpp import protocol as msg
from pipeline.tpp.config import EngineConfig
from pipeline.tpp.links import Link, Packet, Shapes
from pipeline.tpp.partition import Unit, sink_layers
from pipeline.tpp.pieces import gather_layers, piece_name
from pipeline.tpp.timeline import Timeline

_END = object()  # the decode thread's end-of-stream marker


@dataclass
class RankContext:
    """What a rank process keeps between streams."""

    rank: int
    cfg: EngineConfig
    preset: Preset
    device: torch.device
    comps: Components
    conn: Any
    send_lock: threading.Lock
    dit_group: Any = None
    side_group: Any = None
    capture_buffers: HostBuffers = field(init=False)
    """Shared-memory host buffers for `Capture` (page-locked on a GPU), kept across streams."""
    write_buffers: HostBuffers = field(init=False)
    """Host buffers a checkpoint's shards are written from, kept across streams."""

    def __post_init__(self) -> None:
        cuda = self.device.type == "cuda"
        self.capture_buffers = HostBuffers(page_lock=cuda, shared=True)
        self.write_buffers = HostBuffers(page_lock=cuda)

    def send(self, message: object) -> None:
        with self.send_lock:
            self.conn.send(message)

    @property
    def is_dit(self) -> bool:
        return self.rank < self.cfg.dit_ranks

    @property
    def decodes(self) -> bool:
        return self.rank == self.cfg.vae_rank


class RankStream:
    def __init__(self, ctx: RankContext, spec: msg.StreamSpec):
        started = time.perf_counter()
        self.ctx = ctx
        self.spec = spec
        cfg, preset = ctx.cfg, ctx.preset
        self.device = ctx.device
        self.dtype = cfg.torch_dtype
        g = self.geometry = Geometry(
            spec.width, spec.height, spec.infer_frames, preset.dit.zip_frame_buckets
        )
        self.bpc = g.blocks_per_clip
        self.num_layers = preset.dit.num_layers
        self.start_block = spec.start_clip * self.bpc
        self.end_block = spec.num_clips * self.bpc
        self.last_dit = cfg.dit_ranks - 1
        self.piece: tuple[Unit, ...] = spec.partition[ctx.rank] if ctx.is_dit else ()
        self.timeline = Timeline(self.device, spec.profile_from_block is not None)
        self.released = spec.start_clip - 1
        self.stopping = False
        self.position: tuple[str, int] = ("at", spec.start_clip)
        self.blocks_done = self.start_block
        self._first_latent_done = spec.start_clip > 0 or spec.num_clips < 2
        self._first_latent_sends: list[Any] = []
        self.shutdown_requested = False
        self._writer: threading.Thread | None = None
        self.decode: DecodeStage | None = None
        restore = self._restore_source()

        text = self._exchange_text(restore) if ctx.is_dit else None
        self.text = text  # rank 0's goes into its states
        # a resume prefills its sink again from the state's latents (every rank reads the same
        # state); a format-1 state holds the sink's caches, and the portrait's latents are
        # encoded again only where its clip 0 is still to come (its adaptive sink needs them)
        self._sink_from_latent = restore is not None and SINK_LATENT in restore.names()
        # whether the sink's latents are known: not after a format-1 resume past clip 0, whose
        # states then keep the sink's caches as the resumed one did
        self.sink_latents_known = restore is None or self._sink_from_latent
        encode = restore is None or (spec.start_clip == 0 and not self._sink_from_latent)
        self.motion = self._exchange_motion() if encode else None
        if ctx.is_dit:
            self._open_dit(text, restore)
        if ctx.decodes:
            self.decode = DecodeStage(self, restore)
        if spec.start_clip > 0:  # a resume's sink is built: the portrait's latents are done
            self.motion = None
        if ctx.is_dit and self.device.type == "cuda":
            # the bulk of a checkpoint's host memory, page-locked beside the first clips
            ctx.write_buffers.reserve(self._ring_specs())
        self.open_s = time.perf_counter() - started

    # ---- opening -------------------------------------------------------------------------

    def _restore_source(self) -> TensorSource | None:
        if self.spec.restore_dir is not None:
            return CheckpointSource(self.spec.restore_dir)
        if self.spec.restore_tensors is not None:
            return StateSource({"meta": {}, "tensors": self.spec.restore_tensors})
        return None

    def _exchange_text(self, restore: TensorSource | None) -> torch.Tensor:
        """The prompt's encoder states, computed once on rank 0 (read from the state being
        resumed, where it holds them) and broadcast to DiT ranks."""
        ctx, preset = self.ctx, self.ctx.preset
        if ctx.rank == 0:
            comps = ctx.comps
            assert comps.text_encoder is not None and comps.tokenizer is not None
            assert self.spec.prompt is not None
            text = text_mod.prompt_states(
                comps.text_encoder,
                comps.tokenizer,
                self.spec.prompt,
                preset.dit.text_len,
                device=comps.text_device,
                saved=restore,
            ).to(self.device)
        if ctx.cfg.dit_ranks == 1:
            return text
        length = torch.tensor([text.shape[0] if ctx.rank == 0 else 0], device=self.device)
        dist.broadcast(length, 0, group=ctx.dit_group)
        if ctx.rank != 0:
            dim = preset.text_encoder["d_model"]
            text = torch.empty(int(length.item()), dim, device=self.device)
        dist.broadcast(text, 0, group=ctx.dit_group)
        return text

    def _exchange_motion(self) -> torch.Tensor:
        """The portrait's motion latents, encoded once by the decoding rank, sent to all."""
        ctx, cfg = self.ctx, self.ctx.cfg
        motion_frames = ctx.preset.stream.motion_frames
        if ctx.decodes:
            assert ctx.comps.vae is not None and self.spec.reference_frame is not None
            motion = portrait_latents(ctx.comps.vae, self.spec.reference_frame, motion_frames)
            # contiguous: a channels-last VAE hands back strided latents; collectives need dense
            motion = motion.to(self.device).contiguous()
        if cfg.world_size == 1:
            return motion
        if not ctx.decodes:
            _, motion = sink_latents(
                ctx.preset.dit.in_dim, motion_frames, self.geometry, self.device
            )
        dist.broadcast(motion, cfg.vae_rank)
        return motion

    def _open_dit(self, text: torch.Tensor | None, restore: TensorSource | None) -> None:
        ctx, spec, g = self.ctx, self.spec, self.geometry
        preset = ctx.preset
        cfg = preset.dit
        dit = ctx.comps.dit
        assert dit is not None and text is not None
        dit.row_major_stream = spec.row_major  # the rank's streams run one at a time
        schedule = flow_schedule(spec.steps, preset.stream.shift, preset.stream.num_train_timesteps)
        self.denoiser = Denoiser(dit, g, schedule, preset.stream, text, spec.seed)
        self.caches: dict[int, StepKVCache] = {
            u.step: StepKVCache(
                g,
                len(u),
                cfg.num_heads,
                cfg.head_dim,
                self.device,
                kv_dtype(dit.precision, self.dtype),
                first_layer=u.start,
            )
            for u in self.piece
        }
        span = (
            range(min(u.start for u in self.piece), max(u.stop for u in self.piece))
            if self.piece
            else range(0)
        )
        self.sink_keys = SinkKeys(
            g, len(span), cfg.num_heads, cfg.head_dim, self.device, self.dtype, span.start
        )
        # the latents the sink was built from (what a state keeps of it), as pipeline.stream's
        self.sink_latent, self.sink_motion = sink_latents(
            cfg.in_dim, preset.stream.motion_frames, g, self.device
        )
        # snapshot slots: [boundary or -1, rings by step]
        self.slots: list[tuple[int, dict[int, torch.Tensor]]] = [
            (-1, {s: torch.empty_like(c.ring) for s, c in self.caches.items()})
            for _ in range(spec.snapshots)
        ]
        self.audio: ClipAudio | None = None
        if ctx.rank == 0:
            assert ctx.comps.audio_encoder is not None and spec.samples is not None
            features = AudioFeatures(
                ctx.comps.audio_encoder,
                spec.samples,
                preset.stream.audio_chunk_frames,
                preset.stream.audio_context_frames,
            )
            self.audio = ClipAudio(features, g, spec.num_clips)
        self.shapes = Shapes(
            latents=(cfg.in_dim, g.frames_per_block, g.latent_h, g.latent_w),
            hidden=(1, g.block_tokens, cfg.dim),
            hidden_dtype=self.dtype,
            features=(
                preset.audio_encoder["num_hidden_layers"] + 1,
                preset.audio_encoder["hidden_size"],
                g.video_frames_per_block,
            ),
        )
        rank = ctx.rank
        self.upstream = Link(rank - 1, self.device) if rank > 0 else None
        self.downstream = Link(rank + 1, self.device) if rank < ctx.cfg.world_size - 1 else None
        if restore is not None:
            self._load_dit(restore)
        else:
            assert self.motion is not None
            self._build_sink(self.motion[:, 1:2])

    def _build_sink(self, latent: torch.Tensor) -> None:
        """This rank's layers of the sink, from `latent` [16, 1, h, w] and the portrait's
        motion latents (both kept for the state), into every step's cache it holds."""
        assert self.motion is not None
        if latent is not self.sink_latent:
            self.sink_latent.copy_(latent)
        if self.motion is not self.sink_motion:
            self.sink_motion.copy_(self.motion)
        self.sink_latents_known = True
        if self.piece:
            self.denoiser.prefill_sink(
                list(self.caches.values()), self.sink_keys, self.sink_latent, self.sink_motion
            )

    def _load_dit(self, source: TensorSource) -> None:
        """This rank's rings from `source` (its tensors may be a capture's page-locked buffers:
        copied piece by piece, then waited for), and its layers of the sink: prefilled again
        from the state's latent, or, from a format-1 state, copied."""
        n = self.num_layers
        sk = self.sink_keys
        ref_keys, motion_keys, values = SINK_CACHES
        for u in self.piece:
            cache = self.caches[u.step]
            if not self._sink_from_latent:
                copy_piecewise(
                    sk.ref[u.start - sk.layers.start : u.stop - sk.layers.start],
                    gather_layers(source, ref_keys, u.layers, n),
                )
                copy_piecewise(
                    cache.sink_motion_keys, gather_layers(source, motion_keys, u.layers, n)
                )
                copy_piecewise(cache.sink_values, gather_layers(source, values, u.layers, n))
            name = piece_name(f"step.{u.step}.ring", u.layers, n)
            if name not in source.names():
                raise ValueError(f"the state has no {name}")
            copy_piecewise(cache.ring, source.get(name))
        if self._sink_from_latent:
            self.sink_latent.copy_(source.get(SINK_LATENT))
            self.motion = self.sink_motion.copy_(source.get(SINK_MOTION))
            self._build_sink(self.sink_latent)
        elif self.motion is not None:
            # a format-1 state of boundary 0: the sink is the portrait's, its latents known
            self.sink_latent.copy_(self.motion[:, 1:2])
            self.sink_motion.copy_(self.motion)
            self.sink_latents_known = True
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ---- the block loop ------------------------------------------------------------------

    def run(self) -> None:
        """Generate (DiT ranks) and serve the caller until it stops the stream."""
        if self.decode is not None:
            self.decode.start()
        if self.ctx.is_dit:
            self._run_dit()
        self._serve()

    def _run_dit(self) -> None:
        spec, g = self.spec, self.geometry
        rank = self.ctx.rank
        n = self.start_block
        noise: torch.Tensor | None = None
        while True:
            clip, b = divmod(n, self.bpc)
            if b == 0:
                self._boundary(clip)
            if n >= self.end_block:
                break
            self.poll()
            if self.spec.profile_from_block is not None and n >= self.spec.profile_from_block:
                self.timeline.start()
            if rank == 0:
                if self.stopping:
                    self._forward_stop(n)
                    break
                if b == 0 or noise is None:
                    noise = clip_noise(spec.seed, clip, self.ctx.preset.dit.in_dim, g)
                    noise = to_device(noise, self.device)
                fpb = g.frames_per_block
                assert self.audio is not None
                packet = Packet(n, noise[:, b * fpb : (b + 1) * fpb], None, self.audio.block(n))
            else:
                assert self.upstream is not None
                waited = time.perf_counter()
                got = self.upstream.recv(self.shapes)
                self.timeline.waited("recv", time.perf_counter() - waited)
                if isinstance(got, int):
                    self._forward_stop(got)
                    break
                packet = got
            self._denoise(packet)
            if self.audio is not None and b == 0:
                self.audio.prefetch(clip + 1)  # while the GPU works on this block
            if rank == self.last_dit:
                if n == 0 and spec.num_clips > 1:
                    self._send_first_latent(packet.latents[:, :1].clone())
                self._to_decoder(packet)
            else:
                assert self.downstream is not None
                self.downstream.send(packet)
            n += 1
            self.blocks_done = n
        self._finish_dit()

    def _denoise(self, packet: Packet) -> None:
        """Run this rank's units on a block, in place of the packet's latents / hidden."""
        if not self.piece:
            return
        token = self.timeline.begin()
        d = self.denoiser
        assert packet.features is not None
        audio = d.audio(packet.features)
        x, latents = packet.hidden, packet.latents
        for u in self.piece:
            if u.start == 0:
                x = d.begin(latents)
            assert x is not None
            cache = self.caches[u.step]
            x = d.layers(cache, self.sink_keys, x, u.step, packet.block, audio, u.start, u.stop)
            if u.stop == self.num_layers:
                latents = d.end(x, latents, u.step)
                x = None
        packet.latents, packet.hidden = latents, x
        self.timeline.end("dit", token)

    def _boundary(self, clip: int) -> None:
        """Clip boundary `clip`: the adaptive sink after clip 0, then the snapshot slot."""
        spec = self.spec
        if clip == 1 and spec.start_clip == 0 and spec.num_clips > 1:
            # capture(0) must still see the portrait's sink
            self._wait(lambda: self.released >= 0)
            self._build_sink(self._receive_first_latent())
            self.motion = None
        self.position = ("at", clip)
        if clip >= spec.num_clips:
            return
        k = spec.snapshots
        if k == 0:
            self._wait(lambda: self.released >= clip)
            self.position = ("in", clip)
            return
        self._wait(lambda: self.released >= clip - k)
        if not self.stopping:
            _, rings = self.slots[clip % k]
            for step, cache in self.caches.items():
                rings[step].copy_(cache.ring)
            self.slots[clip % k] = (clip, rings)
        self.position = ("in", clip)

    def _wait(self, ready: Callable[[], bool]) -> None:
        """Serve the caller until `ready()` (or the stream is being stopped)."""
        started = time.perf_counter()
        while not (ready() or self.stopping):
            self.handle(self.ctx.conn.recv())
        self.timeline.waited("caller", time.perf_counter() - started)

    # ---- the adaptive sink's latent --------------------------------------------------------

    def _send_first_latent(self, first: torch.Tensor) -> None:
        """The last DiT rank has the first latent frame of clip 0; every DiT rank needs it at
        boundary 1. Sent without waiting, on a group of its own so it never queues behind
        the block traffic."""
        self._first_latent = first
        for r in range(self.last_dit):
            self._first_latent_sends.append(
                dist.isend(first.contiguous(), r, group=self.ctx.side_group)
            )

    def _receive_first_latent(self) -> torch.Tensor:
        self._first_latent_done = True
        if self.ctx.rank == self.last_dit:
            for work in self._first_latent_sends:
                work.wait()
            self._first_latent_sends = []
            return self._first_latent
        g = self.geometry
        buf = torch.empty(self.ctx.preset.dit.in_dim, 1, g.latent_h, g.latent_w, device=self.device)
        dist.recv(buf, self.last_dit, group=self.ctx.side_group)
        return buf

    # ---- ending --------------------------------------------------------------------------

    def _forward_stop(self, block: int) -> None:
        self.blocks_done = block
        if self.ctx.rank == self.last_dit:
            if self.decode is not None:
                self.decode.put(_END)
            else:
                assert self.downstream is not None
                self.downstream.send_stop(block)
        else:
            assert self.downstream is not None
            self.downstream.send_stop(block)

    def _to_decoder(self, packet: Packet) -> None:
        if self.decode is not None:
            self.decode.put((packet.block, packet.latents))
        else:
            assert self.downstream is not None
            self.downstream.send(Packet(packet.block, packet.latents))

    def _finish_dit(self) -> None:
        """After the last block: settle the sends in flight and the adaptive-sink transfer a
        stop may have cut short."""
        if self.downstream is not None:
            self.downstream.flush()
        if self.blocks_done >= self.end_block and self.decode is not None:
            self.decode.put(_END)
        sent = self.start_block == 0 and self.blocks_done > 0 and self.spec.num_clips > 1
        if sent and not self._first_latent_done:
            self._receive_first_latent()
        for work in self._first_latent_sends:
            work.wait()
        self._first_latent_sends = []

    # ---- the caller's messages -----------------------------------------------------------

    def poll(self) -> None:
        while self.ctx.conn.poll():
            self.handle(self.ctx.conn.recv())

    def _serve(self) -> None:
        while not self.stopping:
            self.handle(self.ctx.conn.recv())
        if self.decode is not None:
            self.decode.join()
        if self._writer is not None:
            self._writer.join()
        self.timeline.stop()
        stats = self.timeline.summary()
        stats["open_s"] = self.open_s
        if self.device.type == "cuda":
            stats["max_memory_allocated"] = torch.cuda.max_memory_allocated(self.device)
        self.ctx.send(msg.Stopped(self.ctx.rank, self.blocks_done, stats))

    def handle(self, m: object) -> None:
        if isinstance(m, msg.Release):
            self.released = max(self.released, m.boundary)
            if self.decode is not None:
                self.decode.release(m.boundary)
        elif isinstance(m, msg.Capture):
            started = time.perf_counter()
            tensors, meta = self.state_at(m.boundary)
            shared = self._to_host(tensors, "shared" if m.pinned else None)
            self.ctx.send(
                msg.Captured(self.ctx.rank, m.boundary, shared, meta, time.perf_counter() - started)
            )
        elif isinstance(m, msg.WriteShards):
            self._write_shards(m)
        elif isinstance(m, msg.Stop | msg.Shutdown):
            self.stopping = True
            self.shutdown_requested = isinstance(m, msg.Shutdown)
            if self.decode is not None:
                self.decode.stopping = True
        else:
            raise RuntimeError(f"unexpected message during a stream: {m!r}")

    # ---- state ---------------------------------------------------------------------------

    def state_at(self, boundary: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """This rank's share of the state at a clip boundary (device tensors, not copies)."""
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {}
        n = self.num_layers
        if self.ctx.is_dit and self.piece:
            if self.position == ("at", boundary):
                rings = {s: c.ring for s, c in self.caches.items()}
            else:
                found = [r for b, r in self.slots if b == boundary]
                if not found:
                    raise RuntimeError(
                        f"rank {self.ctx.rank} holds no state for clip boundary {boundary} "
                        f"(it is {self.position[0]} clip {self.position[1]})"
                    )
                rings = found[0]
            for u in self.piece:
                tensors[piece_name(f"step.{u.step}.ring", u.layers, n)] = rings[u.step]
        if self.ctx.is_dit and not self.sink_latents_known:
            tensors.update(self._sink_piece())
        elif self.ctx.is_dit and self.ctx.rank == 0:  # every DiT rank holds the same latents
            tensors[SINK_LATENT] = self.sink_latent
            tensors[SINK_MOTION] = self.sink_motion
        if self.ctx.rank == 0 and self.text is not None:
            tensors[text_mod.STATE_NAME] = self.text
        if self.decode is not None:
            dec_tensors, dec_meta = self.decode.state_at(boundary)
            tensors.update({f"decoder.{k}": v for k, v in dec_tensors.items()})
            meta["decoder"] = dec_meta
        return tensors, meta

    def _ring_specs(self) -> dict[str, Spec]:
        """The shape and dtype of each ring piece this rank's states hold, by name."""
        n = self.num_layers
        return {
            piece_name(f"step.{u.step}.ring", u.layers, n): (
                tuple(self.caches[u.step].ring.shape),
                self.caches[u.step].ring.dtype,
            )
            for u in self.piece
        }

    def _sink_piece(self) -> dict[str, torch.Tensor]:
        """The sink's caches (format 1) for the layers this rank saves: each layer by the
        lowest rank that holds it."""
        mine = sink_layers(self.spec.partition, self.ctx.rank)
        if not mine:
            return {}
        sk, g, n = self.sink_keys, self.geometry, self.num_layers
        motion, values = [], []
        for layer in mine:
            u = next(u for u in self.piece if layer in u.layers)
            kv = self.caches[u.step].layer(layer)
            motion.append(kv[0, g.ref_tokens : g.sink_tokens])
            values.append(kv[1, : g.sink_tokens])
        ref_keys, motion_keys, sink_values = SINK_CACHES
        return {
            piece_name(ref_keys, mine, n): sk.ref[
                mine.start - sk.layers.start : mine.stop - sk.layers.start
            ],
            piece_name(motion_keys, mine, n): torch.stack(motion),
            piece_name(sink_values, mine, n): torch.stack(values),
        }

    def _to_host(self, tensors: dict[str, torch.Tensor], reuse: str | None) -> dict:
        """Copies in host memory the caller can map (shared memory); `reuse`: into buffers
        kept for the next capture of the same kind (the caller must be done with them)."""
        out = {}
        buffers = self.ctx.capture_buffers
        for name, t in tensors.items():
            if reuse:
                buf = buffers.buffer(f"{reuse}:{name}", t.shape, t.dtype)
            else:
                buf = make_buffer((tuple(t.shape), t.dtype), page_lock=False, shared=True)
            out[name] = copy_piecewise(buf, t)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return out

    def _write_shards(self, m: msg.WriteShards) -> None:
        """Copy this rank's share to host memory now, write its shard files in the background
        (the stream goes on meanwhile) and say which files it wrote."""
        if self._writer is not None:
            self._writer.join()  # the buffers of the last write are reused
        started = time.perf_counter()
        tensors, meta = self.state_at(m.boundary)
        host = {}
        buffers = self.ctx.write_buffers
        for name, t in tensors.items():
            host[name] = copy_piecewise(buffers.buffer(name, t.shape, t.dtype), t)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        capture_s = time.perf_counter() - started
        split = _split_groups(self.spec.partition, sink_caches=not self.sink_latents_known)

        def write() -> None:
            try:
                t0 = time.perf_counter()
                files = write_rank_shards(host, Path(m.directory), self.ctx.rank, split)
                self.ctx.send(
                    msg.Written(
                        self.ctx.rank,
                        m.boundary,
                        files,
                        meta,
                        capture_s,
                        time.perf_counter() - t0,
                    )
                )
            except Exception as exc:  # the caller turns this into an engine error
                self.ctx.send(msg.Failed(self.ctx.rank, repr(exc), traceback.format_exc()))

        self._writer = threading.Thread(target=write, name="shard-writer", daemon=True)
        self._writer.start()


def _split_groups(partition: Any, sink_caches: bool) -> set[str]:
    """Shard groups (sink, step-<i>) whose tensors are split between several ranks (the sink's
    latents are rank 0's alone; its caches, kept after a format-1 resume, are not)."""
    owners: dict[str, set[int]] = {}
    for r, piece in enumerate(partition):
        for u in piece:
            owners.setdefault(f"step-{u.step}", set()).add(r)
        if sink_caches and sink_layers(partition, r):
            owners.setdefault("sink", set()).add(r)
    return {group for group, ranks in owners.items() if len(ranks) > 1}


def write_rank_shards(
    tensors: dict[str, torch.Tensor], directory: Path, rank: int, split: set[str]
) -> list[dict[str, Any]]:
    """Write a rank's tensors grouped as pipeline.state groups them (sink, step-<i>, decoder),
    one file per group; a group other ranks also hold gets the rank in its file name."""
    directory.mkdir(parents=True, exist_ok=True)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        groups.setdefault(shard_of(name), {})[name] = t
    files = []
    for group, members in sorted(groups.items()):
        stem = f"{group}.rank{rank}" if group in split else group
        path = directory / f"{stem}.safetensors"
        save_file({k: v.contiguous() for k, v in members.items()}, str(path), {"shard": group})
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        files.append({"file": path.name, "bytes": path.stat().st_size, "tensors": len(members)})
    return files


class DecodeStage:
    """Online decode of the final latents, in a thread with its own CUDA stream."""

    def __init__(self, rs: RankStream, restore: TensorSource | None):
        self.rs = rs
        ctx = rs.ctx
        vae = ctx.comps.vae
        assert vae is not None
        cuda = rs.device.type == "cuda"
        channels_last = cuda and ctx.cfg.vae_channels_last
        compiled = cuda and ctx.cfg.vae_compile
        self.decoder = vae_mod.StreamingDecoder(vae, channels_last=channels_last, compiled=compiled)
        self.ring = rs.spec.ring
        assert self.ring is not None
        self.timeline = rs.timeline  # one busy union for the rank's streams
        self.stream = torch.cuda.Stream(device=rs.device) if cuda else None
        self.stopping = False
        self._queue: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        if restore is not None:
            prefix = "decoder."
            names = [k for k in restore.names() if k.startswith(prefix)]
            meta = rs.spec.decoder_meta
            if meta is None:
                raise ValueError("the state has no decoder metadata")
            self.decoder.load_state_dict({k[len(prefix) :]: restore.get(k) for k in names}, meta)
        else:
            assert rs.motion is not None
            warmup = ctx.preset.stream.vae_warmup_frames
            self.decoder.decode(rs.motion[:, :warmup])  # primes the conv cache; not shown
        self.snapshots = {rs.spec.start_clip: self.decoder.snapshot()}
        self._thread = threading.Thread(target=self._main, name="decoder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, item: Any) -> None:
        """(block, latents) from the DiT (this thread's stream waits for them), or _END."""
        if item is not _END and self.stream is not None:
            ready = torch.cuda.Event()
            ready.record()
            item = (*item, ready)
        self._queue.put(item)

    def join(self) -> None:
        self._thread.join()

    def release(self, boundary: int) -> None:
        with self._lock:
            for b in [b for b in self.snapshots if b <= boundary]:
                del self.snapshots[b]

    def state_at(self, boundary: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        with self._lock:
            snap = self.snapshots.get(boundary)
        if snap is None:
            raise RuntimeError(f"the decoder holds no state for clip boundary {boundary}")
        tensors, meta = self.decoder.state_dict(snap)
        return tensors, dict(meta)

    # ---- the thread ----------------------------------------------------------------------

    def _main(self) -> None:
        try:
            if self.stream is not None:
                torch.cuda.set_device(self.rs.device)  # the current device is per thread
                with torch.cuda.stream(self.stream):
                    self._loop()
            else:
                self._loop()
        except Exception as exc:
            self.rs.ctx.send(msg.Failed(self.rs.ctx.rank, repr(exc), traceback.format_exc()))
            os._exit(1)

    def _loop(self) -> None:
        rs = self.rs
        own_rank = not rs.ctx.is_dit
        link = Link(rs.last_dit, rs.device) if own_rank else None
        g = rs.geometry
        shapes = Shapes(
            latents=(rs.ctx.preset.dit.in_dim, g.frames_per_block, g.latent_h, g.latent_w),
            hidden=(0,),
            hidden_dtype=rs.dtype,
            features=(0,),
        )
        n = rs.start_block
        while n < rs.end_block:
            if link is not None:
                if rs.spec.profile_from_block is not None and n >= rs.spec.profile_from_block:
                    self.timeline.start()
                got = link.recv(shapes)
                if isinstance(got, int):
                    break
                latents = got.latents
            else:
                item = self._queue.get()
                if item is _END:
                    break
                block, latents, *ready = item
                assert block == n, (block, n)
                if ready and self.stream is not None:
                    self.stream.wait_event(ready[0])
                    latents.record_stream(self.stream)
            self._decode(n, latents)
            n += 1
        if own_rank:
            rs.blocks_done = n

    def _decode(self, n: int, latents: torch.Tensor) -> None:
        rs = self.rs
        token = self.timeline.begin()
        frames = vae_mod.to_uint8_frames(self.decoder.decode(latents))  # [12, H, W, 3]
        self.timeline.end("vae", token)
        if (n + 1) % rs.bpc == 0:
            with self._lock:
                self.snapshots[(n + 1) // rs.bpc] = self.decoder.snapshot()
        if frames.is_cuda:
            done = torch.cuda.Event()
            done.record()
            done.synchronize()  # with the GIL released: the DiT thread keeps launching
        assert self.ring is not None
        if self.ring.wait_for_slot(n, rs.start_block):
            self.ring.slot(n).copy_(frames)
            rs.ctx.send(msg.FramesReady(n))
