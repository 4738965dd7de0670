"""The two checkpoint tiers on one GPU: a part of `ops/bench/lifecycle.py` (`--parts tiers`).

    python -m ops.bench.lifecycle --parts tiers --engine-preset liveavatar-14b \\
        --engine-device cuda --tiers-dit-release /dev/shm/release \\
        --out bench-out/lifecycle-tiers.json

What it measures, on `--engine-preset` with random weights at `--engine-size`:

  stall     a stream renders a warm-up clip and two timed clips; its state is captured into
            pinned host memory (the GPU's stall per checkpoint: the second capture, the
            buffers being the stream's own by then), written as a local checkpoint
            (`pipeline.state.write_checkpoint`) and sealed (`worker.tiers.LocalTier.seal`:
            per-chunk CRC-32s), the way the committer does beside generation; the clip after
            the boundary is rendered for reference (its frames' hash, and the sink's), traced
            part by part (`Trace`).
  resume    fresh processes, as a worker restarted on the node: each builds its engine as the
            worker does (the DiT loading beside the open), checks the local checkpoint's seal
            beside the build (as the worker checks it beside its model load), opens the stream
            from the checkpoint, renders its first clip, and opens it again (the same clip in
            a process that has rendered before: history, or the resume?). Once
            with the checkpoint in the page cache (a worker restarted soon after writing it),
            once after evicting it (`posix_fadvise(DONTNEED)`: a node rebooted). A third
            process opens a fresh stream and renders its first clip, for comparison. Each
            resumed process reports whether its frames and its sink are bit-identical to the
            uninterrupted stream's, and which parts of its trace differ; the fresh one whether
            its first clip is the first process's.
  remote    the download of one step shard (a copy into another directory: a proxy for the
            bucket, faster than a real one), scaled by bytes to the whole state.
  bucket    bytes sent to the bucket per hour of rendered video: every checkpoint (every N
            clips, the single tier) against `worker.tiers.RemotePolicy` at each upload budget
            in `--budgets-mb-s` (the local tier every N clips, at equal crash loss on a
            surviving node), replayed over the boundaries of one hour of video at the measured
            clip time and state size.

Every process sets the layout of the streams it opens (`WanS2VTransformer.row_major_stream`):
the convolution's, or with `--tiers-row-major` row-major (the pipeline's default) for the first
process and a fresh one; the resuming processes set the convolution's either way, so that with
`--tiers-row-major` they must take the layout from the checkpoint.

With `--tiers-dit-release DIR` the DiT part of the preset's release (random values in the
published layout, as `ops/bench/load.py` writes it: 34 GB for the 14B model, so put it where
there is room, /dev/shm on the H200 host) is written once and every process loads its DiT from
it through the worker's loader: a resume's time from a worker's start is then measured, from
the engine's build to the first clip's frames. Without it the DiT's weights are random and
that time is derived: max(model load, seal check) + open + first clip, with the model load
given by `--model-load-s` (default: the 14B release's cold load on one H200,
`ops/bench/load.py`, 2026-11-21).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

FPS = 25


def log(msg: str) -> None:
    print(f"[tiers] {msg}", flush=True)


# ---- the request every process renders ---------------------------------------------------


def make_request(size: str, infer_frames: int, clips: int) -> Any:
    from ops.demo import portrait_png, synthesize_speech
    from pipeline import RenderRequest, Waveform
    from pipeline.params import check_size_key

    width, height = check_size_key(size)
    return RenderRequest(
        image=portrait_png(width, height),
        audio=Waveform(synthesize_speech(clips * infer_frames / FPS + 1.0)),  # no decoder needed
        prompt="A presenter speaks to the camera.",
        size=size,
        num_clips=clips,
        infer_frames=infer_frames,
        seed=1,
    )


def build_deferred_engine(
    preset: str, device: Any, layers: int, dit_release: Path | None, precision: str = "bf16"
) -> Any:
    """As a worker builds its engine (worker.engine.build_engine): the DiT's load started
    first, then the rest imported and the encoders and the VAE built beside it (random
    weights, or the DiT of a release on disk, through the worker's loader)."""
    from pipeline.dit_loading import default_dtype, start_dit_load, start_preset_dit
    from pipeline.presets import get_preset

    if dit_release is None:
        overrides = {"num_layers": layers} if layers else None
        loading = start_preset_dit(
            preset, device=device, precision=precision, random_weights=True, dit_overrides=overrides
        )
        from pipeline import Generator

        return Generator.from_preset(
            preset,
            device=device,
            random_weights=True,
            precision=precision,
            dit_overrides=overrides,
            dit_loading=loading,
        )
    if layers:
        raise ValueError("a release's DiT has the preset's depth")
    p = get_preset(preset)
    dtype = default_dtype(device)
    loading = start_dit_load(p, device, dtype, precision, dit_dir=dit_release)
    from pipeline import Generator
    from pipeline.components import build_deferred

    return Generator(p, build_deferred(p, device, dtype, precision, loading=loading))


def _release(preset: str) -> Any:
    from pipeline.presets import get_preset
    from pipeline.weights.preset_spec import release_spec

    return release_spec(get_preset(preset))


def write_dit_release(root: Path, preset: str) -> float:
    """The DiT part of the release (shards, index, LoRA) with random values under `root`, as
    ops/bench/load.py writes it; returns the seconds spent (0 when it was there already)."""
    from ops.bench.load import write_release

    return write_release(root, _release(preset), ("dit",)).get("dit", 0.0)


def frames_hash(frames: Any) -> str:
    return hashlib.sha256(frames.tobytes()).hexdigest()


def sink_hash(stream: Any) -> str:
    """The sink as attention reads it (unrotated reference keys, each step's motion keys and
    values), hashed on the host."""
    parts = [stream.sink_keys.ref]
    for cache in stream.caches:
        parts += [cache.sink_motion_keys, cache.sink_values]
    return tensors_sha(parts)


def checksum(t: Any) -> int:
    """A cheap on-device fingerprint of a tensor's bits (for tensors too large to hash on the
    host): the sum of its bytes taken as int32 words, with their positions folded in."""
    import torch

    words = t.contiguous().view(-1).view(torch.uint8)
    words = words[: words.numel() // 4 * 4].view(torch.int32)
    total = 0
    for piece in words.split(1 << 26):
        w = piece.to(torch.int64)
        total += int((w * torch.arange(1, w.numel() + 1, device=w.device) % 1_000_003).sum())
        total += int(w.sum())
    return total


class Trace:
    """What a stream's next clip computes, part by part, so that two renders that differ say
    where they part: the text and speech conditioning, each block's latents as the decoder
    receives them and its frames, and the ring caches after the clip."""

    def __init__(self, stream: Any):
        self.stream = stream
        self.blocks: list[tuple[str, str]] = []
        decode = stream.decoder.decode

        def traced(latents: Any) -> Any:
            out = decode(latents)
            self.blocks.append((tensor_sha(latents), tensor_sha(out)))
            return out

        stream.decoder.decode = traced

    def report(self, clip: int) -> dict[str, Any]:
        s = self.stream
        feats = s.clip_audio._clips.get(clip)
        return {
            "text_kv": tensors_sha([t for kv in s.denoiser.text_kv for t in kv]),
            "audio": None if feats is None else tensor_sha(feats[0]),
            "decoder_in": [a for a, _ in self.blocks],
            "decoder_out": [b for _, b in self.blocks],
            "rings_after": [checksum(c.ring) for c in s.caches],
        }


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def disk_read_bytes() -> int | None:
    """Bytes this process (all its threads) has had read from storage, not served by the page
    cache (Linux's /proc/self/io `read_bytes`); None where that is not kept."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def memory_info() -> dict[str, int]:
    """The host's memory (bytes) as /proc/meminfo has it: what is available, the page cache,
    page-locked memory and shared memory (a DiT release in /dev/shm); empty elsewhere."""
    keys = {"MemTotal", "MemAvailable", "Cached", "Mlocked", "Shmem"}
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in keys:
                out[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return out


def compile_summary() -> dict[str, float]:
    """Seconds torch.compile spent in this process, by phase (dynamo's `dynamo_timed`)."""
    from torch._dynamo.utils import compile_times

    headers, rows = compile_times(repr="csv", aggregate=True)
    out: dict[str, float] = {}
    for name, value in zip(headers, rows, strict=False):
        try:
            out[str(name)] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def tensors_sha(tensors: list[Any]) -> str:
    """SHA-256 of the tensors' bytes, one after another (copied to the host)."""
    import torch

    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


def tensor_sha(t: Any) -> str:
    return tensors_sha([t])


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- the measuring process ------------------------------------------------------------------


def bench_tiers(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import torch

    from pipeline import state as state_io
    from worker.tiers import LocalTier, RemotePolicy, TierSettings

    release = args.tiers_dit_release
    if release is not None and not (release / ".dit.complete").exists():
        free = shutil.disk_usage(release.parent).free
        need = sum(t.nbytes for t in _release(args.engine_preset).dit_specs().values()) * 1.1
        if free < need:  # before the hour's work (the 14B DiT's release takes 34 GB)
            raise SystemExit(f"{release.parent}: {free / 1e9:.1f} GB free, {need / 1e9:.1f} needed")
    release_write_s = None
    if release is not None:  # every process loads its DiT from it: the same weights
        release_write_s = write_dit_release(release, args.engine_preset)
        log(f"the DiT's release under {release} ({release_write_s:.1f} s)")
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.engine_device == "auto" else args.engine_device)
    gen = build_deferred_engine(args.engine_preset, device, args.engine_layers, release)
    gen.components.wait_dit()  # the first process's open is timed without the load
    clips = 4  # warm-up, two timed, the one after the boundary
    request = make_request(args.engine_size, args.infer_frames, clips)
    from pipeline.model import WanS2VTransformer

    WanS2VTransformer.row_major_stream = args.tiers_row_major  # the layout of new streams
    started = time.perf_counter()
    stream = gen.open(request)
    sync(device)
    open_s = time.perf_counter() - started
    clip_times = []
    first_clip_sha = ""
    for _ in range(3):
        started = time.perf_counter()
        clip = next(stream)
        sync(device)
        clip_times.append(time.perf_counter() - started)
        first_clip_sha = first_clip_sha or frames_hash(clip.frames)
    clip_s = min(clip_times[1:])
    boundary = stream.next_clip

    captures = []
    state: dict[str, Any] = {}
    for _ in range(args.tiers_captures):
        started = time.perf_counter()
        state = stream.state_dict(pin_memory=True)
        captures.append(time.perf_counter() - started)
    if not captures:  # no stall measured: the state once, into pageable memory
        state = stream.state_dict()
    state_bytes = sum(t.numel() * t.element_size() for t in state["tensors"].values())
    shards: dict[str, int] = {}
    for name, t in state["tensors"].items():
        shard = state_io.shard_of(name)
        shards[shard] = shards.get(shard, 0) + t.numel() * t.element_size()
    log(f"state {state_bytes / 1e9:.2f} GB ({shards}); captures {captures}")
    reserve_s, buffers_bytes = gen.host_buffers.reserve_seconds, gen.host_buffers.nbytes()

    local = LocalTier(workdir / "local")
    directory = local.directory(uuid.uuid4(), boundary)
    started = time.perf_counter()
    state_io.write_checkpoint(state, directory)
    write_s = time.perf_counter() - started
    started = time.perf_counter()
    sealed = local.seal(directory)
    seal_s = time.perf_counter() - started
    log(f"local checkpoint: write {write_s:.1f} s, seal {seal_s:.1f} s, {sealed / 1e9:.2f} GB")
    ring = state["tensors"]["step.0.ring"]
    ring_shape, ring_dtype = tuple(ring.shape), ring.dtype
    del state, ring
    expected_sink = sink_hash(stream)
    trace = Trace(stream)
    expected_clip = frames_hash(next(stream).frames)
    expected_trace = trace.report(boundary)
    del trace  # it holds the stream, and so the model
    stream.close()
    gen.shutdown()
    del stream, gen
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        # the capture's page-locked buffers go back too (torch caches freed host blocks): the
        # children, the page cache and a DiT release in memory need the host's memory
        empty_host_cache = getattr(torch._C, "_host_emptyCache", None) or getattr(
            torch._C, "_accelerator_emptyHostCache", None
        )
        if empty_host_cache is not None:
            empty_host_cache()

    started = time.perf_counter()
    assert local.valid(directory, verify=True)
    verify_s = time.perf_counter() - started

    # reading one step's ring back into the device, the page cache warm: readers at once
    restore_gb_s: dict[str, float] = {}
    target = torch.empty(ring_shape, dtype=ring_dtype, device=device)
    for readers in (1, 8):
        source = state_io.CheckpointSource(directory, readers=readers)
        sync(device)
        started = time.perf_counter()
        source.fill({"step.0.ring": target})
        sync(device)
        seconds = time.perf_counter() - started
        restore_gb_s[str(readers)] = target.numel() * target.element_size() / seconds / 1e9
    del target
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the children need the memory
    log(f"reading a ring back, GB/s by readers: {restore_gb_s}")

    def child(mode: str, forked: bool = False) -> dict[str, Any]:
        cmd = [
            sys.executable, "-m", "ops.bench.tiers", mode,
            "--preset", args.engine_preset, "--device", str(device),
            "--size", args.engine_size, "--infer-frames", str(args.infer_frames),
            "--layers", str(args.engine_layers), "--clips", str(clips),
            # CPU results depend on the thread count: the children render at the parent's
            "--threads", str(torch.get_num_threads()),
            "--checkpoint", str(directory),
        ]  # fmt: skip
        if args.tiers_dit_release is not None:
            cmd += ["--dit-release", str(args.tiers_dit_release)]
        if forked:  # as a replaced worker: a fork of a process that has imported the modules
            cmd.append("--forked")
        if args.tiers_row_major and mode == "fresh":  # a resume must take its checkpoint's
            cmd.append("--row-major")
        started = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
        if out.returncode != 0:
            log(f"{mode} failed ({out.returncode}): {out.stderr[-4000:]}")
            if not lines:
                raise RuntimeError(f"the {mode} process failed")
        result = lines[0]
        result["second_open"] = lines[1] if len(lines) > 1 else None
        result["process_s"] = time.perf_counter() - started
        log(f"{mode}: {result}")
        return result

    runs = set(args.tiers_runs)
    # the fork first: a worker replaced on a live node follows the one that wrote and checked
    # the checkpoint, which is then in the page cache (a resumed process run before it would
    # have page-locked 48 GB of capture buffers of its own, which can push it out)
    forked = child("resume", forked=True) if "forked" in runs else None
    evicted = forked_cold = cold = None
    if "forked-cold" in runs:  # the same with the checkpoint read from the disk
        evicted = evict(directory)
        forked_cold = child("resume", forked=True)
    warm = child("resume") if "warm" in runs else None
    if "cold" in runs:
        evicted = evict(directory)
        cold = child("resume")
    fresh = child("fresh") if "fresh" in runs else None

    download_s = None
    if "remote" in runs:  # one step shard through the bucket proxy, scaled to the state
        shard = directory / "step-0.safetensors"
        evict(directory)
        copy = workdir / "download" / shard.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        shutil.copyfile(shard, copy)
        with open(copy, "rb+") as f:
            os.fsync(f.fileno())
        download_s = (time.perf_counter() - started) * sealed / shard.stat().st_size
        shutil.rmtree(copy.parent)
    shutil.rmtree(directory.parent)

    load_s = args.model_load_s
    resumed = {"warm": warm, "forked": forked, "forked_cold": forked_cold, "cold": cold}
    resumes = [r for r in resumed.values() if r is not None]
    for r in (*resumes, fresh):
        if r is None:
            continue
        if args.tiers_dit_release is not None:  # measured: the DiT loaded from disk beside
            r["first_frame_from_worker_start_s"] = r["from_build_start_s"]
        else:  # derived: a worker's measured load in place of the random build
            r["first_frame_from_worker_start_s"] = (
                max(load_s + r["open_s"], r.get("verify_s", 0.0)) + r["first_clip_s"]
            )
    remote_from_start = None
    # the open and first clip of a resume, bytes downloaded
    opened = cold or warm or forked or forked_cold
    if download_s is not None and opened is not None:
        remote_from_start = max(load_s, download_s) + opened["open_s"] + opened["first_clip_s"]

    # bytes to the bucket per hour of video
    n = args.checkpoint_every
    clips_per_hour = 3600 * FPS / args.infer_frames
    boundaries = int(clips_per_hour // n)
    today = boundaries * state_bytes
    budgets = {}
    for mb_s in args.budgets_mb_s:
        clock = [0.0]
        policy = RemotePolicy(
            TierSettings(
                node="bench",
                upload_bytes_per_s=mb_s * 1e6,
                upload_max_interval_s=args.max_interval_min * 60,
            ),
            clock=lambda clock=clock: clock[0],
        )
        uploads = 0
        for b in range(1, boundaries + 1):
            clock[0] = b * n * clip_s
            if policy.due(state_bytes):
                policy.uploaded()
                uploads += 1
        budgets[str(mb_s)] = {
            "uploads_per_video_hour": uploads,
            "bytes_per_video_hour": uploads * state_bytes,
            "fraction_of_single_tier": uploads / boundaries,
            "most_clips_lost_if_the_node_is_lost": (
                n * -(-boundaries // max(uploads, 1)) if uploads else boundaries * n
            ),
        }
    return {
        "preset": args.engine_preset,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "size": args.engine_size,
        "row_major": args.tiers_row_major,
        "open_s": open_s,
        "clip_times_s": clip_times,
        "clip_s": clip_s,
        "state_bytes": state_bytes,
        "shard_bytes": shards,
        "capture_s": captures,
        "stall_per_checkpoint_s": captures[-1] if captures else None,
        # the stream's first capture: its buffers page-locked beside its first clips (or not
        # yet, and the capture waits for the rest)
        "first_capture_s": captures[0] if captures else None,
        "capture_buffers_made_s": reserve_s,
        "capture_buffers_bytes": buffers_bytes,
        "stall_fraction_at_n": (
            captures[-1] / (args.checkpoint_every * clip_s) if captures else None
        ),
        "local_write_s": write_s,
        "local_seal_s": seal_s,
        "local_background_s": write_s + seal_s,
        "local_verify_warm_s": verify_s,
        "restore_read_gb_s_by_readers": restore_gb_s,
        "page_cache_evicted": evicted,
        "resume_local_warm": warm,
        "resume_local_forked": forked,
        "resume_local_forked_cold": forked_cold,
        "resume_local_cold": cold,
        "fresh": fresh,
        "expected_clip_sha256": expected_clip,
        "expected_trace": expected_trace,
        "first_clip_sha256": first_clip_sha,
        "fresh_first_clip_identical": None
        if fresh is None
        else fresh["clip_sha256"] == first_clip_sha,
        "expected_sink_sha256": expected_sink,
        "parts_that_differ": {
            label: differing(expected_trace, r["trace"])
            for label, r in resumed.items()
            if r is not None
        }
        | (
            {"warm_second_open": differing(expected_trace, warm["second_open"]["trace"])}
            if warm is not None and warm.get("second_open")
            else {}
        ),
        "frames_identical": all(r["clip_sha256"] == expected_clip for r in resumes),
        "sink_identical": all(r["sink_sha256"] == expected_sink for r in resumes),
        "download_proxy_s": download_s,
        "model_load_s": load_s,
        "dit_release": None if args.tiers_dit_release is None else str(args.tiers_dit_release),
        "dit_release_write_s": release_write_s,
        "resume_remote_from_worker_start_s": remote_from_start,
        "checkpoint_every": n,
        "single_tier_bytes_per_video_hour": today,
        "by_budget_mb_s": budgets,
    }


def differing(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """The parts of two traces that differ ("decoder_in.2": block 2's latents)."""
    out = []
    for key, want in expected.items():
        have = got.get(key)
        if isinstance(want, list) and isinstance(have, list) and len(want) == len(have):
            out += [f"{key}.{i}" for i, (w, h) in enumerate(zip(want, have, strict=True)) if w != h]
        elif want != have:
            out.append(key)
    return out


def evict(directory: Path) -> bool:
    """Drop the checkpoint's pages from the page cache (as after a reboot)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in directory.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def report(part: dict[str, Any]) -> list[str]:
    warm, cold, fresh = part["resume_local_warm"], part["resume_local_cold"], part["fresh"]
    forked = part.get("resume_local_forked")
    runs = (
        ("resume, warm cache", warm),
        ("resume, forked", forked),
        ("resume, forked, checkpoint evicted", part.get("resume_local_forked_cold")),
        ("resume, cold", cold),
        ("fresh", fresh),
    )
    lines = [
        f"tiers {part['preset']} on {part['device_name']} at {part['size']}: clip "
        f"{part['clip_s']:.2f} s, state {part['state_bytes'] / 1e9:.2f} GB",
        f"  stall per checkpoint {part['stall_per_checkpoint_s'] or 0:.2f} s "
        f"({100 * (part['stall_fraction_at_n'] or 0):.2f}% at N={part['checkpoint_every']}); local "
        f"write {part['local_write_s']:.1f} s + seal {part['local_seal_s']:.1f} s beside it",
        f"  a stream's first capture {part['first_capture_s'] or 0:.2f} s (its buffers, "
        f"{(part['capture_buffers_bytes'] or 0) / 1e9:.2f} GB, page-locked beside the first "
        f"clips in {part['capture_buffers_made_s'] or 0:.1f} s)",
        "  reading a step's ring back (page cache warm): "
        + ", ".join(
            f"{n} readers {v:.1f} GB/s" for n, v in part["restore_read_gb_s_by_readers"].items()
        ),
        "  | process | verify (waited for) | open | first clip | from worker start | graphs compiled (open, clip) |",
    ]
    for label, r in runs:
        if r is None:
            continue
        lines.append(
            f"  | {label} | {r.get('verify_s', 0):.1f} s ({r.get('verify_wait_s', 0):.1f} s) | "
            f"{r['open_s']:.1f} s | "
            f"{r['first_clip_s']:.1f} s | {r['first_frame_from_worker_start_s']:.1f} s | "
            f"{r['graphs_compiled_at_open']}, {r['graphs_compiled_in_first_clip']} |"
        )
    for label, r in runs:
        if r is not None and r.get("dit_load_s") is not None:
            lines.append(
                f"  {label}: encoders built {r['build_s']:.1f} s, the DiT loaded beside in "
                f"{r['dit_load_s']:.1f} s, first frame {r['from_build_start_s']:.1f} s after "
                f"the build began (of it the request's inputs {r.get('request_s', 0):.1f} s; "
                f"CPU time meanwhile {r.get('cpu_s_to_first_frame', 0):.0f} s "
                f"on {r.get('cpu_count')} cores)"
            )
        if r is not None and r.get("disk_read_bytes_to_first_frame") is not None:
            mem = r.get("memory_at_start") or {}
            lines.append(
                f"  {label}: read from the disk (not the page cache) before its first frame "
                f"{r['disk_read_bytes_to_first_frame'] / 1e9:.1f} GB; host memory at its start "
                + ", ".join(f"{k} {v / 1e9:.1f} GB" for k, v in mem.items())
            )
        if r is not None and r.get("build_parts_s"):
            parts = ", ".join(f"{k} {v:.2f}" for k, v in r["build_parts_s"].items())
            lines.append(f"  build of {label} (s): {parts}")
        if r is not None and r.get("build_samples_s"):
            where = ", ".join(f"{k} {v:.1f}" for k, v in r["build_samples_s"]["project"].items())
            lines.append(f"  the build's main thread, sampled (s): {where}")
        if r is not None and r.get("open_parts_s"):
            parts = ", ".join(f"{k} {v:.2f}" for k, v in r["open_parts_s"].items())
            lines.append(f"  open of {label} (s): {parts}")
        if r is not None and r.get("open_samples_s"):
            for kind in ("project", "innermost"):
                where = ", ".join(f"{k} {v:.1f}" for k, v in r["open_samples_s"][kind].items())
                lines.append(f"  the open's main thread, sampled, {kind} frame (s): {where}")
    lines.append(
        f"  frames identical {part['frames_identical']}, sink identical {part['sink_identical']}"
    )
    if "parts_that_differ" in part:
        lines.append(
            f"  parts that differ from the uninterrupted clip: {part['parts_that_differ']}"
        )
        lines.append(
            "  a fresh process's first clip equals the first process's: "
            f"{part['fresh_first_clip_identical']}"
        )
    if part["resume_remote_from_worker_start_s"] is not None:
        lines.append(
            f"  remote resume from start {part['resume_remote_from_worker_start_s']:.1f} s "
            f"(download proxy {part['download_proxy_s']:.1f} s)"
        )
    today = part["single_tier_bytes_per_video_hour"]
    lines.append(f"  bucket bytes per hour of video: single tier {today / 1e12:.2f} TB")
    for mb_s, b in part["by_budget_mb_s"].items():
        lines.append(
            f"    budget {mb_s} MB/s: {b['bytes_per_video_hour'] / 1e12:.3f} TB "
            f"({100 * b['fraction_of_single_tier']:.1f}%), node loss costs up to "
            f"{b['most_clips_lost_if_the_node_is_lost']} clips"
        )
    return lines


# ---- the resuming process -------------------------------------------------------------------


def child_main(argv: list[str]) -> None:
    started = time.perf_counter()
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("resume", "fresh"))
    p.add_argument("--preset")
    p.add_argument("--device")
    p.add_argument("--size")
    p.add_argument("--infer-frames", type=int)
    p.add_argument("--layers", type=int)
    p.add_argument("--clips", type=int)
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--threads", type=int)
    p.add_argument("--dit-release", type=Path, default=None)
    p.add_argument("--forked", action="store_true", help="in a fork, after the imports")
    p.add_argument("--row-major", action="store_true", help="new streams' layout")
    a = p.parse_args(argv)
    imports_s = None
    if a.forked:  # as `longtake worker` replaces a worker process (ops/respawn.py)
        from ops import respawn

        imports_s = respawn.preimport((*respawn.PIPELINE_PREIMPORTS, "worker.tiers"))
        if not respawn.can_fork():
            raise RuntimeError("this process cannot fork safely")
        sys.stdout.flush()
        pid = os.fork()
        if pid:
            _, status = os.waitpid(pid, 0)
            sys.exit(os.waitstatus_to_exitcode(status))
        started = time.perf_counter()  # the worker's start: the fork
        os._exit(respawn.exit_status(lambda: _child(a, started, imports_s)))
    _child(a, started, imports_s)


def _child(a: argparse.Namespace, started: float, imports_s: float | None) -> int:
    """The resuming (or fresh) process's work, its figures printed as JSON lines; returns its
    exit status."""
    import torch

    from worker.tiers import LocalTier

    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    verified: dict[str, Any] = {}

    def verify() -> None:  # as the worker: beside the model load and the open
        t0 = time.perf_counter()
        verified["ok"] = LocalTier(a.checkpoint.parent.parent).valid(a.checkpoint, verify=True)
        verified["s"] = time.perf_counter() - t0

    checker = threading.Thread(target=verify) if a.mode == "resume" else None
    if checker is not None:
        checker.start()
    from ops.bench.timing import StackSampler

    cpu_at_build = _cpu_s()
    # whether the checkpoint comes from the page cache or the disk (and how many times)
    memory_at_start, disk_at_start = memory_info(), disk_read_bytes()
    t0 = t_build = time.perf_counter()
    with StackSampler() as build_samples:  # where the build's time goes, line by line
        gen = build_deferred_engine(a.preset, device, a.layers, a.dit_release)
    loading = gen.components.dit_loading
    build_s = time.perf_counter() - t0  # the DiT goes on loading
    t0 = time.perf_counter()
    request = make_request(a.size, a.infer_frames, a.clips)
    request_s = time.perf_counter() - t0  # the benchmark's synthetic inputs (a worker's: its job's)
    from pipeline import stream as stream_mod
    from pipeline.model import WanS2VTransformer
    from pipeline.model.fused import graphs_compiled

    WanS2VTransformer.row_major_stream = a.row_major  # a fresh open's; a resume takes its state's

    stream_mod.PHASE_SYNC = True  # each part of the open timed on its own
    graphs = [graphs_compiled()]
    t0 = time.perf_counter()
    with StackSampler() as open_samples:  # where the open's time goes, line by line
        if a.mode == "resume":
            stream = gen.open(request, resume_from=a.checkpoint)
        else:
            stream = gen.open(request)
        sync(device)
    open_s = time.perf_counter() - t0
    graphs.append(graphs_compiled())
    t0 = time.perf_counter()
    if checker is not None:  # as the worker: the CRCs read beside the open, before a clip
        checker.join()
        assert verified["ok"], "the local checkpoint's seal does not match"
    verify_wait_s = time.perf_counter() - t0
    trace = Trace(stream)
    t0 = time.perf_counter()
    clip = next(stream)
    sync(device)
    first_clip_s = time.perf_counter() - t0
    graphs.append(graphs_compiled())
    from_build_start_s = time.perf_counter() - t_build
    cpu_s = _cpu_s() - cpu_at_build
    disk_now = disk_read_bytes()
    disk_read = None if disk_now is None or disk_at_start is None else disk_now - disk_at_start
    sink = sink_hash(stream) if a.mode == "resume" else ""  # fixed once open: hashed untimed
    traced = trace.report(clip.index)
    out = {
        "mode": a.mode,
        "row_major": stream.row_major,
        "build_s": build_s,
        "build_parts_s": dict(gen.components.build_seconds),
        "build_samples_s": build_samples.top(),
        "verify_s": verified.get("s", 0.0),
        "verify_wait_s": verify_wait_s,
        "request_s": request_s,
        "open_s": open_s,
        "open_parts_s": dict(stream.open_seconds),
        "open_samples_s": open_samples.top(),
        "dit_load_s": None if loading is None else loading.seconds,
        "from_build_start_s": from_build_start_s,
        # the process's CPU time (all threads) over the same span: against the host's cores,
        # how busy the host was while the model loaded, the state streamed in and it opened
        "cpu_s_to_first_frame": cpu_s,
        "cpu_count": os.cpu_count(),
        "disk_read_bytes_to_first_frame": disk_read,
        "memory_at_start": memory_at_start,
        "first_clip_s": first_clip_s,
        "graphs_compiled_at_open": graphs[1] - graphs[0],
        "graphs_compiled_in_first_clip": graphs[2] - graphs[1],
        "clip_index": clip.index,
        "clip_sha256": frames_hash(clip.frames),
        "sink_sha256": sink,
        "trace": traced,
        # where the compiles' time went (dynamo's own accounting, summed per phase)
        "compile_times": compile_summary(),
        "since_process_start_s": time.perf_counter() - started,
        "forked": a.forked,
        "imports_before_fork_s": imports_s,
    }
    print(json.dumps(out), flush=True)
    if a.mode == "resume":  # the same resume again in this process: history, or the resume?
        del trace
        stream = gen.open(request, resume_from=a.checkpoint)
        trace = Trace(stream)
        again = {"clip_sha256": frames_hash(next(stream).frames), "trace": trace.report(clip.index)}
        print(json.dumps(again), flush=True)
    return 0


if __name__ == "__main__":
    child_main(sys.argv[1:])
