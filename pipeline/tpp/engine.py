"""Timestep-forcing Pipeline Parallelism: the engine, on any number of GPUs.

    engine = Engine(EngineConfig.cuda(4, preset="liveavatar-14b", checkpoint_dir=...))
    stream = engine.open(request)                  # or open(request, resume_from=checkpoint_dir)
    for clip in stream: ...                        # Clip(index, frames uint8 [T, H, W, 3], ...)
    stream.checkpoint(directory)                   # between clips: a distributed snapshot
    engine.shutdown()

The engine owns one process per rank (spawned, never forked), loads the model once and serves
one stream at a time through the single-device generator's API (pipeline.Generator).

Work and its owners. A block (3 latent frames, 12 video frames) is denoised by S steps of L
layers. DiT rank r owns a contiguous piece of the (step, layer) sequence (pipeline.tpp.partition)
and the KV caches of that piece only; a block enters rank 0 as noise and leaves the last DiT rank
clean, its latents (and, where a cut falls inside a step, its hidden tokens) sent rank to rank
with torch.distributed (NCCL on GPU, gloo on CPU). The decoder runs on its own GPU, or on the
last DiT rank on a second CUDA stream, overlapping that rank's DiT work on the next block.

What else a rank needs, and when:
  - the prompt's encoder states: once per stream, encoded on rank 0, broadcast at open;
  - the portrait's motion latents: once per stream, encoded by the decoding rank, broadcast at
    open (the sink is prefilled on every DiT rank from them);
  - the block's audio features: computed on rank 0 (wav2vec2 lives there), sent with the block;
  - the noise of clip c: drawn on rank 0 only, from the request's seed;
  - the adaptive sink: after clip 0 every DiT rank rebuilds its sink from the first latent frame
    of block 0, which the last DiT rank has as soon as block 0 is clean. It is sent at once, on
    a process group of its own, and received at boundary 1, one clip later: by then it arrived.
The rolling-RoPE offsets are a pure function of (seed, block, step), computed where needed.

The schedule, 4 DiT ranks (one step each, VAE overlapped on rank 3), blocks b0, b1, ... of
clips c0 (b0-b3), c1 (b4-b7); each column is one stage time:

    rank 0  b0 b1 b2 b3 | b4 b5 b6 b7 | b8 ...
    rank 1     b0 b1 b2 | b3 b4 b5 b6 | b7 ...
    rank 2        b0 b1 | b2 b3 b4 b5 | b6 ...
    rank 3           b0 | b1 b2 b3 b4 | b5 ...
    decode              | b0 b1 b2 b3 | b4 ...   (second stream of rank 3)
                        ^ rank 0 at boundary 1: rebuilds its sink with b0's first frame

Once full, the pipeline finishes one block per stage time; the fill (G - 1 stage times plus one
decode) is paid once per stream. At each clip boundary a DiT rank copies its KV rings into a
snapshot slot (a device copy, milliseconds) and carries on: the caller, who sees clip c only
after it crossed every rank, may still ask for the state at boundary c + 1 (state_dict or
checkpoint) and gets it from the slots. A rank only waits when the caller has not yet decided
about the boundary whose slot it needs again; `EngineConfig.snapshots` sets how far ranks may run
ahead. One DiT rank keeps no snapshots (they would double its cache) and waits at each boundary
for the caller: the decode of the clip's last block is not overlapped.

A cut inside a step (split "layers") lets the ranks carry equal work when S is not a multiple of
G, or when the last rank also decodes: e.g. S = 4, 4 GPUs, decode cost V layers: each rank runs
(4L + V) / 4 layers, the last one V fewer plus the decode. V is timed by the warm-up.

The bubble, as measured (ops/bench/tpp.py; 14B, 720x400, 4 H200): the fill takes 2.3-2.7 s from
open() to the first decoded block (1.4 s of it the open: prompt, portrait, sink prefill); in
steady state each rank loses 20-25 ms per ~0.33 s block between its blocks, and a rank with
less work than the slowest idles for the difference.

Frames reach the caller through a shared-memory ring (pipeline.tpp.protocol.FrameRing); only a
block index is pickled. Checkpoints: each rank writes its own shard files (its steps' rings; rank 0
the sink's latent; the decoder cache) from its snapshot, in the background; the
caller writes manifest.json last, once every rank has confirmed its files. The layout and names
are pipeline.state's, split into per-layer pieces only where a step is split.

Failures: a rank that dies is seen at once (its pipe closes); one that hangs fails its peers at
the process group's timeout, or the caller after `stall_timeout_s`. Either way the caller gets
an EngineError naming the rank, every rank process is ended and reaped, and `restart()` brings
the engine back.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait as wait_any
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as tmp
from PIL import Image

from pipeline import params
from pipeline import state as state_io
from pipeline.generator import resolve_name
from pipeline.geometry import Geometry
from pipeline.inputs import Waveform
from pipeline.model import WanS2VTransformer
from pipeline.params import Precision
from pipeline.presets import get_preset
from pipeline.request import Clip, RenderRequest
from pipeline.stream import prepare_inputs
from pipeline.tpp import protocol as msg
from pipeline.tpp.config import EngineConfig
from pipeline.tpp.partition import (
    Partition,
    Split,
    check_partition,
    from_json,
    make_partition,
    to_json,
)
from pipeline.tpp.rank import rank_main


class EngineError(RuntimeError):
    """A rank died, failed or stopped answering; the engine has ended its processes."""


class Engine:
    """The multi-device `pipeline.engine.Engine`."""

    writes_own_checkpoints = True
    """Each rank writes its own shard files (`EngineStream.checkpoint`), in parallel and
    without gathering the state in one process."""

    def __init__(self, config: EngineConfig, *, start: bool = True):
        self.precision: Precision = params.check_precision(config.precision)
        if config.preset == "auto":
            config = config.with_(preset=resolve_name("auto", config.checkpoint_dir))
        self.config = config
        self.preset = get_preset(config.preset)
        if config.dit_overrides:
            self.preset = self.preset.with_dit(**dict(config.dit_overrides))
        self._procs: list[Any] = []
        self._conns: list[Any] = []
        self._store_dir: str | None = None
        self._failure: str | None = None
        self._active: EngineStream | None = None
        self._inbox: dict[type, list[Any]] = {}
        self._on_frames: Callable[[int], None] | None = None
        self.ready_info: list[dict[str, Any]] = []
        self.warmup_stats: list[dict[str, Any]] = []
        self.measured_vae_cost: float | None = None
        self.start_s = 0.0
        self._finalizer = weakref.finalize(self, _teardown, self._procs, self._conns, None)
        if start:
            self.start()

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the ranks, wait until each has loaded its parts, run the warm-up."""
        if self._procs:
            raise RuntimeError("the engine is already started")
        started = time.perf_counter()
        cfg = self.config
        self._failure = None
        self._inbox = {}
        self._store_dir = tempfile.mkdtemp(prefix="longtake-tpp-")
        store = os.path.join(self._store_dir, "store")
        ctx = tmp.get_context("spawn")
        for rank in range(cfg.world_size):
            parent, child = ctx.Pipe(duplex=True)
            p = ctx.Process(
                target=rank_main,
                args=(rank, cfg, child, store),
                name=f"longtake-tpp-rank{rank}",
            )
            p.start()
            child.close()
            self._procs.append(p)
            self._conns.append(parent)
        self._finalizer.detach()
        self._finalizer = weakref.finalize(
            self, _teardown, self._procs, self._conns, self._store_dir
        )
        self._pump(
            lambda: len(self._inbox.get(msg.Ready, [])) == cfg.world_size,
            "model load",
            cfg.start_timeout_s,
        )
        ready = sorted(self._take(msg.Ready), key=lambda m: m.rank)
        self.ready_info = [m.info for m in ready]
        if cfg.warmup:
            self._warm_up()
        self.start_s = time.perf_counter() - started

    def shutdown(self, timeout: float = 60.0) -> None:
        """Close the open stream, stop every rank, reap them. Idempotent."""
        if self._procs and self._failure is None:
            try:
                if self._active is not None:
                    self._active.close()
                for conn in self._conns:
                    conn.send(msg.Shutdown())
                deadline = time.monotonic() + timeout
                for p in self._procs:
                    p.join(max(0.0, deadline - time.monotonic()))
            except (EngineError, OSError):
                pass
        self._teardown()

    def restart(self) -> None:
        """After a failure (or any time): end every rank and start afresh."""
        self._teardown()
        self.start()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    @property
    def failed(self) -> str | None:
        return self._failure

    def _teardown(self) -> None:
        self._active = None
        _teardown(self._procs, self._conns, self._store_dir)
        self._procs.clear()
        self._conns.clear()
        self._store_dir = None
        self._finalizer.detach()

    # ---- streams -------------------------------------------------------------------------

    def open(
        self,
        request: RenderRequest,
        state: state_io.StateDict | None = None,
        *,
        resume_from: str | os.PathLike[str] | None = None,
        split: Split | None = None,
        profile_from_clip: int | None = None,
        snapshots: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> EngineStream:
        """Start a stream for `request`, or continue one from a state / checkpoint directory
        (taken by an engine of the same layout). Closes the previous stream.

        split: override the config's step split for this stream (benchmarks compare them).
        profile_from_clip: record per-rank timings from this clip on (`EngineStream.stats`).
        snapshots: override the clip-boundary snapshots per DiT rank.
        progress: called with each clip's index once the caller has its frames.
        """
        self._check_usable()
        if state is not None and resume_from is not None:
            raise ValueError("give either state or resume_from, not both")
        request.validate()
        if self._active is not None:
            self._active.close()
            self._active = None
        inputs = prepare_inputs(request, self.preset)
        restore_meta: dict[str, Any] | None = None
        restore_dir = restore_tensors = None
        if resume_from is not None:
            restore_meta = state_io.CheckpointSource(resume_from).meta
            restore_dir = str(Path(resume_from).resolve())
        elif state is not None:
            restore_meta, restore_tensors = state["meta"], state["tensors"]
        if restore_meta is not None:
            partition = self._check_restore(restore_meta, inputs.fingerprint, request, inputs)
            start_clip = int(restore_meta["next_clip"])
            row_major = state_io.row_major_of(restore_meta)  # the layout it was rendered in
        else:
            partition = self.partition(request.sample_steps, split)
            start_clip = 0
            row_major = WanS2VTransformer.row_major_stream
        stream = EngineStream(
            self,
            request,
            inputs,
            partition,
            start_clip,
            row_major=row_major,
            restore_dir=restore_dir,
            restore_tensors=restore_tensors,
            decoder_meta=restore_meta.get("decoder") if restore_meta else None,
            profile_from_clip=profile_from_clip,
            snapshots=snapshots,
        )
        stream.progress = progress
        return stream

    def partition(self, steps: int, split: Split | None = None) -> Partition:
        """How a stream of `steps` steps is cut between the DiT ranks now."""
        cfg = self.config
        split = split or cfg.split
        tail = 0.0
        if not cfg.vae_on_own_rank and cfg.dit_ranks > 1:
            tail = cfg.vae_cost if cfg.vae_cost is not None else self.measured_vae_cost or 0.0
            if cfg.vae_cost is None and self.measured_vae_cost is None:
                tail = cfg.vae_cost_guess
        return make_partition(split, steps, self.preset.dit.num_layers, cfg.dit_ranks, tail)

    def _check_restore(
        self,
        meta: dict[str, Any],
        fingerprint: dict[str, Any],
        request: RenderRequest,
        inputs: Any,
    ) -> Partition:
        state_io.require_precision(meta, self.precision)
        saved = meta.get("request", {})
        diff = sorted(
            k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k)
        )
        if diff:
            raise ValueError(
                "the stream state belongs to a different request or model; differing: "
                + ", ".join(diff)
            )
        if not 0 <= int(meta["next_clip"]) <= inputs.num_clips:
            raise ValueError("stream state has an invalid clip index")
        cfg = self.config
        layout = meta.get("tpp") or {
            "dit_ranks": 1,
            "vae_on_own_rank": False,
            "partition": to_json(
                make_partition("steps", request.sample_steps, self.preset.dit.num_layers, 1)
            ),
        }
        if layout["dit_ranks"] != cfg.dit_ranks or layout["vae_on_own_rank"] != cfg.vae_on_own_rank:
            made = f"{layout['dit_ranks']} DiT rank(s)" + (
                " and a decoding rank" if layout["vae_on_own_rank"] else ""
            )
            this = f"{cfg.dit_ranks} DiT rank(s)" + (
                " and a decoding rank" if cfg.vae_on_own_rank else ""
            )
            raise ValueError(
                f"this state was taken by an engine with {made}; this engine has {this}. "
                "Resume it on an engine of the same layout."
            )
        partition = from_json(layout["partition"])
        check_partition(partition, request.sample_steps, self.preset.dit.num_layers)
        if len(partition) != cfg.dit_ranks:
            raise ValueError("the state's partition does not match the engine's DiT ranks")
        return partition

    # ---- warm-up -------------------------------------------------------------------------

    def _warm_up(self) -> None:
        """Two clips at the warm-up size: kernels compile and get picked, caches are touched,
        and the decode's cost on the last DiT rank is measured for a balanced split. Only the
        second clip is timed: the first carries the compiles and first-run costs (on an H200
        they tripled the apparent decode cost and cut 4 GPUs as 78/79/3/0 layer-steps)."""
        cfg = self.config
        size = cfg.warmup_size or ("64*64" if self.preset.name == "tiny" else "720*400")
        req = warmup_request(size, cfg.warmup_steps)
        stream = self.open(req, profile_from_clip=1)
        for _ in stream:
            pass
        stream.close()
        self.warmup_stats = stream.stats
        if cfg.dit_ranks > 1 and not cfg.vae_on_own_rank and cfg.vae_cost is None:
            self.measured_vae_cost = _vae_cost(
                stream.stats, stream.partition, stream.blocks_profiled
            )

    # ---- talking to the ranks ------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise EngineError(f"the engine failed ({self._failure}); call restart()")
        if not self._procs:
            raise EngineError("the engine is not started")

    def _send_all(self, message: object) -> None:
        for rank, conn in enumerate(self._conns):
            self._send(rank, message, conn)

    def _send(self, rank: int, message: object, conn: Any = None) -> None:
        try:
            (conn or self._conns[rank]).send(message)
        except (OSError, ValueError) as exc:
            self._fail(f"rank {rank} is gone ({exc}){self._exit_note(rank)}")

    def _take(self, kind: type) -> list[Any]:
        return self._inbox.pop(kind, [])

    def _pump(self, until: Callable[[], bool], what: str, timeout: float | None = None) -> None:
        """Read the ranks' messages until `until()`; fail on a dead or silent rank."""
        self._check_usable()
        limit = timeout if timeout is not None else self.config.stall_timeout_s
        last = time.monotonic()
        while not until():
            ready = wait_any(self._conns, timeout=0.25)
            for conn in ready:
                rank = self._conns.index(conn)
                try:
                    m = conn.recv()
                except (EOFError, OSError):
                    self._procs[rank].join(2.0)
                    self._fail(f"rank {rank} died{self._exit_note(rank)} while {what}")
                last = time.monotonic()
                self._dispatch(rank, m)
            for rank, p in enumerate(self._procs):
                if not p.is_alive():
                    self._fail(f"rank {rank} died{self._exit_note(rank)} while {what}")
            if time.monotonic() - last > limit:
                self._fail(f"no rank answered for {limit:.0f} s while {what} (a hung rank?)")

    def _dispatch(self, rank: int, m: object) -> None:
        if isinstance(m, msg.FramesReady):
            if self._on_frames is not None:
                self._on_frames(m.block)
            return
        if isinstance(m, msg.Failed):
            self._fail(f"rank {rank} failed: {m.error}\n{m.traceback}")
        self._inbox.setdefault(type(m), []).append(m)

    def _exit_note(self, rank: int) -> str:
        code = self._procs[rank].exitcode if rank < len(self._procs) else None
        if code is None:
            return ""
        if code < 0:
            return f" (killed by signal {-code})"
        return f" (exit code {code})"

    def _fail(self, reason: str) -> None:
        self._failure = reason.splitlines()[0]
        self._teardown()
        raise EngineError(reason)


class EngineStream:
    """A stream served by the engine's ranks; the single-device `Stream`'s API."""

    def __init__(
        self,
        engine: Engine,
        request: RenderRequest,
        inputs: Any,
        partition: Partition,
        start_clip: int,
        *,
        row_major: bool,
        restore_dir: str | None,
        restore_tensors: dict[str, torch.Tensor] | None,
        decoder_meta: dict[str, Any] | None,
        profile_from_clip: int | None,
        snapshots: int | None,
    ):
        cfg = engine.config
        self.engine = engine
        self.request = request
        self.fingerprint = inputs.fingerprint
        self.width, self.height = inputs.width, inputs.height
        self.num_clips = inputs.num_clips
        self.audio_duration_s = inputs.audio_duration_s
        self.fps = params.FPS
        self.next_clip = start_clip
        self.row_major = row_major
        self.partition = partition
        self.progress: Callable[[int], None] | None = None
        g = self.geometry = Geometry(
            self.width, self.height, request.infer_frames, engine.preset.dit.zip_frame_buckets
        )
        self.bpc = g.blocks_per_clip
        self.snapshots = cfg.snapshots_for(self.bpc) if snapshots is None else snapshots
        if cfg.dit_ranks == 1 and self.snapshots:
            raise ValueError("one DiT rank keeps no boundary snapshots")
        self.ring = msg.FrameRing(
            max(cfg.frame_slots, self.bpc), g.video_frames_per_block, self.height, self.width
        )
        self.stats: list[dict[str, Any]] = []
        self.blocks_profiled = 0
        self.timings: dict[str, float] = {}
        self._ready: set[int] = set()
        self._released: set[int] = set()
        self._closed = False
        self._t_open = time.perf_counter()
        engine._on_frames = self._frames_ready
        profile_block = None if profile_from_clip is None else profile_from_clip * self.bpc
        if profile_block is not None:
            self.blocks_profiled = self.num_clips * self.bpc - max(
                profile_block, start_clip * self.bpc
            )
        base = dict(
            fingerprint=self.fingerprint,
            width=self.width,
            height=self.height,
            infer_frames=request.infer_frames,
            num_clips=self.num_clips,
            steps=request.sample_steps,
            seed=request.seed,
            partition=partition,
            snapshots=self.snapshots,
            start_clip=start_clip,
            row_major=row_major,
            restore_dir=restore_dir,
            restore_tensors=restore_tensors,
            decoder_meta=decoder_meta,
            profile_from_block=profile_block,
        )
        for rank in range(cfg.world_size):
            spec = msg.StreamSpec(**base)  # type: ignore[arg-type]
            if rank == 0:
                spec.prompt = request.prompt
                spec.samples = inputs.samples
            if rank == cfg.vae_rank:
                spec.reference_frame = inputs.reference_frame
                spec.ring = self.ring
            engine._send(rank, msg.Open(spec))
        engine._active = self
        engine._pump(lambda: len(engine._inbox.get(msg.Opened, [])) == cfg.world_size, "opening")
        self.rank_open_s = [
            m.seconds for m in sorted(engine._take(msg.Opened), key=lambda m: m.rank)
        ]
        self.timings["open_s"] = time.perf_counter() - self._t_open

    # ---- iteration -----------------------------------------------------------------------

    def __iter__(self) -> Iterator[Clip]:
        return self

    def __next__(self) -> Clip:
        self._check_open()
        if self.next_clip >= self.num_clips:
            raise StopIteration
        c = self.next_clip
        self._release(c)
        blocks = range(c * self.bpc, (c + 1) * self.bpc)
        self.engine._pump(lambda: all(n in self._ready for n in blocks), f"generating clip {c}")
        per = self.geometry.video_frames_per_block
        frames = np.empty((self.request.infer_frames, self.height, self.width, 3), np.uint8)
        for i, n in enumerate(blocks):
            frames[i * per : (i + 1) * per] = self.ring.read(n)
            self._ready.discard(n)
        self.ring.release(blocks.stop)
        if "first_clip_s" not in self.timings:
            self.timings["first_clip_s"] = time.perf_counter() - self._t_open
        self.next_clip = c + 1
        if self.progress is not None:
            self.progress(c)
        seconds = self.request.infer_frames / self.fps
        return Clip(c, frames, c * seconds, (c + 1) * seconds)

    def _frames_ready(self, block: int) -> None:
        if "first_block_s" not in self.timings:
            self.timings["first_block_s"] = time.perf_counter() - self._t_open
        self._ready.add(block)

    def _release(self, boundary: int) -> None:
        if boundary not in self._released:
            self._released.add(boundary)
            self.engine._send_all(msg.Release(boundary))

    # ---- state ---------------------------------------------------------------------------

    def state_dict(self, pin_memory: bool = False) -> state_io.StateDict:
        """The state at this clip boundary, gathered from the ranks into shared host memory
        (as much of it as the state is large: 48 GB at 14B and 720x400; `checkpoint` writes
        each rank's share without gathering it).

        pin_memory: ranks copy into page-locked buffers they keep and reuse, so a capture is
        one fast device-to-host copy per rank; the returned tensors are those buffers: write
        them out before the next `state_dict(pin_memory=True)`."""
        self._check_open()
        b = self.next_clip
        self.engine._send_all(msg.Capture(b, pinned=pin_memory))
        n = self.engine.config.world_size
        self.engine._pump(
            lambda: len(self.engine._inbox.get(msg.Captured, [])) == n, "capturing state"
        )
        tensors: dict[str, torch.Tensor] = {}
        rank_meta: dict[str, Any] = {}
        for m in self.engine._take(msg.Captured):
            tensors.update(m.tensors)
            rank_meta.update(m.meta)
        return {"meta": self._meta(b, rank_meta), "tensors": tensors}

    def checkpoint(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Each rank writes its shard files into `directory`; manifest.json is written last,
        once every rank has confirmed. Returns the files, manifest last."""
        self._check_open()
        out = Path(directory).resolve()
        out.mkdir(parents=True, exist_ok=True)
        (out / state_io.MANIFEST).unlink(missing_ok=True)
        b = self.next_clip
        started = time.perf_counter()
        self.engine._send_all(msg.WriteShards(b, str(out)))
        n = self.engine.config.world_size
        self.engine._pump(
            lambda: len(self.engine._inbox.get(msg.Written, [])) == n, "writing checkpoint shards"
        )
        written = sorted(self.engine._take(msg.Written), key=lambda m: m.rank)
        shards, rank_meta = [], {}
        for m in written:
            shards.extend(m.files)
            rank_meta.update(m.meta)
        manifest = {"format": state_io.FORMAT, "meta": self._meta(b, rank_meta), "shards": shards}
        tmp_path = out / (state_io.MANIFEST + ".tmp")
        tmp_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        tmp_path.replace(out / state_io.MANIFEST)
        self.last_checkpoint = {
            "seconds": time.perf_counter() - started,
            "capture_s": [m.capture_s for m in written],
            "write_s": [m.write_s for m in written],
            "bytes": sum(s["bytes"] for s in shards),
        }
        return [*(out / s["file"] for s in shards), out / state_io.MANIFEST]

    def _meta(self, boundary: int, rank_meta: dict[str, Any]) -> dict[str, Any]:
        cfg = self.engine.config
        meta = {
            "next_clip": boundary,
            "request": self.fingerprint,
            "decoder": rank_meta["decoder"],
            "cache_tokens": self.geometry.cache_tokens,
            "dtype": str(cfg.torch_dtype),
            "precision": self.engine.precision,
            "layout": state_io.layout_name(self.row_major),
            "tpp": {
                "dit_ranks": cfg.dit_ranks,
                "vae_on_own_rank": cfg.vae_on_own_rank,
                "steps": self.request.sample_steps,
                "partition": to_json(self.partition),
            },
        }
        return json.loads(json.dumps(meta))

    # ---- housekeeping --------------------------------------------------------------------

    def close(self) -> None:
        """Stop the ranks' work on this stream (at once, if it is still running) and free
        their caches. Idempotent."""
        if self._closed:
            return
        self._closed = True
        engine = self.engine
        if engine._active is self:
            engine._active = None
        if engine.failed is not None or not engine._procs:
            return
        self.ring.close()
        engine._send_all(msg.Stop())
        n = engine.config.world_size
        engine._pump(lambda: len(engine._inbox.get(msg.Stopped, [])) == n, "closing a stream")
        stopped = sorted(engine._take(msg.Stopped), key=lambda m: m.rank)
        self.stats = [m.stats for m in stopped]
        engine._on_frames = None

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this stream is closed (an engine runs one stream at a time)")
        self.engine._check_usable()

    def __enter__(self) -> EngineStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _vae_cost(stats: list[dict[str, Any]], partition: Partition, blocks: int) -> float | None:
    """The decode's cost on the last DiT rank in DiT layer-steps, from warm-up timings: that
    rank's busy time per block beyond its DiT layers, over the other ranks' time per layer."""
    if blocks <= 0 or len(stats) < 2:
        return None
    per_layer = []
    for r, piece in enumerate(partition[:-1]):
        layers = sum(len(u) for u in piece)
        dit = stats[r].get("dit")
        if layers and dit:
            per_layer.append(dit["median_s"] / layers)
    last = stats[len(partition) - 1]
    if not per_layer or "busy_s" not in last:
        return None
    layer_s = float(np.median(per_layer))
    last_layers = sum(len(u) for u in partition[-1])
    per_block = last["busy_s"] / blocks
    return max(0.0, (per_block - last_layers * layer_s) / layer_s)


def warmup_request(size: str, steps: int, clips: int = 2, seed: int = 0) -> RenderRequest:
    """`clips` clips of a still portrait and a tone: the shapes of a real job at `size`."""
    w, h = params.check_size_key(size)
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1)
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, format="PNG")
    seconds = clips * params.INFER_FRAMES_DEFAULT / params.FPS + 1.0
    t = np.arange(int(seconds * 16_000)) / 16_000
    tone = (0.3 * np.sin(2 * np.pi * 160 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(
        np.float32
    )
    return RenderRequest(
        image=buf.getvalue(),
        audio=Waveform(tone),
        prompt="A person speaks to the camera.",
        size=size,
        num_clips=clips,
        sample_steps=steps,
        seed=seed,
    )


def _teardown(procs: list[Any], conns: list[Any], store_dir: str | None) -> None:
    """End every rank process (TERM, then KILL) and reap it; close the pipes."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 5.0
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5.0)
    for conn in conns:
        with contextlib.suppress(OSError):
            conn.close()
    if store_dir:
        shutil.rmtree(store_dir, ignore_errors=True)
