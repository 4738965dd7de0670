"""Lifecycle benchmark: what checkpoints and segments cost a render, and the one-hour stitch.

    python -m ops.bench.lifecycle --out bench-out/lifecycle.json                  # this machine
    python -m ops.bench.lifecycle --engine-preset liveavatar-14b --engine-device cuda \\
        --out bench-out/lifecycle.json                                             # a GPU node

One run, three parts (each written to --out as soon as it is done):

  engine  the checkpoint path of a stream of `--engine-preset` (random weights) on
          `--engine-device` at `--engine-size`: seconds per clip (after a warm-up clip), the
          state's size, the time to capture it into pinned host memory (first and later
          captures: the stream keeps its pinned buffers), the time to write it as a checkpoint
          directory, to upload that to storage (a directory or an in-process S3 API, a proxy
          for the bucket), and to read it back and restore it (the resume path). Writing,
          uploading and reading are timed on the sink, decoder and `--write-steps` step shards
          and scaled by bytes to the whole state (a 14B state is ~48 GB; the node's disk may
          not hold two of it). From these: the overhead at each N in `--engine-intervals`,
              (capture + max(0, write + upload - N * clip)) / (N * clip),
          the generator's stall per checkpoint over the render time of an interval, and the
          smallest N under 2%.
  tiny    the real lifecycle (`worker/lifecycle.py`: SQLite, segments encoded, checkpoints
          uploaded to an in-process S3 API, stitch) rendering the same job with the tiny model
          on the CPU at each N in `--tiny-intervals`, and with no checkpoint but the final one:
          the generator's measured stall (state capture + waiting for the previous commit) as
          a fraction of render time, the wall-clock difference against no checkpoints, and each
          commit's background time.
  tiers   the two checkpoint tiers (ops/bench/tiers.py): the GPU's stall per checkpoint, the
          local tier's write and seal, resume from a worker's start from the node's disk (page
          cache warm and cold) and from the bucket, bytes to the bucket per hour of video by
          upload budget.
  stitch  ops/bench/stitch.py: one hour of 720x400 stitched by stream copy with its audio,
          against moviepy re-encoding it (options: --stitch-args).

`--parts` picks parts (default all three, in the order engine, stitch, tiny).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import platform
import shlex
import shutil
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

from ops.bench.scratch import scratch_dir

FPS = 25
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


# --------------------------------------------------------------------------- inputs


def portrait_png(width: int, height: int) -> bytes:
    from ops.demo import draw_portrait

    buffer = io.BytesIO()
    draw_portrait(width, height).save(buffer, format="PNG")
    return buffer.getvalue()


def speech_wav(seconds: float) -> bytes:
    from ops.demo import synthesize_speech, wav_bytes

    return wav_bytes(synthesize_speech(seconds))


def overhead(capture_s: float, background_s: float, clip_s: float, n: int) -> float:
    """The generator's stall per checkpoint over the render time of one interval."""
    render = n * clip_s
    return (capture_s + max(0.0, background_s - render)) / render


def smallest_interval(capture_s: float, background_s: float, clip_s: float, target: float) -> int:
    for n in range(1, 100_001):
        if overhead(capture_s, background_s, clip_s, n) <= target:
            return n
    return -1


# --------------------------------------------------------------------------- engine part


def bench_engine(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import torch

    from pipeline import Generator, RenderRequest
    from pipeline import state as state_io
    from pipeline.params import check_size_key
    from storage.local import LocalStorage
    from worker.checkpoints import upload_checkpoint
    from worker.config import RetryPolicy
    from worker.engine import resolve_device

    device = torch.device(resolve_device(args.engine_device))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    overrides = {"num_layers": args.engine_layers} if args.engine_layers else None
    started = time.perf_counter()
    gen = Generator.from_preset(
        args.engine_preset, device=device, random_weights=True, dit_overrides=overrides
    )
    sync()
    load_s = time.perf_counter() - started
    log(f"engine: {args.engine_preset} built on {device} in {load_s:.1f} s (random weights)")

    width, height = check_size_key(args.engine_size)
    clips = 1 + args.engine_clips
    request = RenderRequest(
        image=portrait_png(width, height),
        audio=speech_wav(clips * args.infer_frames / FPS + 1.0),
        prompt="A presenter speaks to the camera.",
        size=args.engine_size,
        num_clips=clips + 1,
        infer_frames=args.infer_frames,
        seed=1,
    )
    started = time.perf_counter()
    stream = gen.open(request)
    sync()
    open_s = time.perf_counter() - started
    clip_times = []
    for _ in range(clips):
        started = time.perf_counter()
        next(stream)
        sync()
        clip_times.append(time.perf_counter() - started)
    clip_s = statistics.median(clip_times[1:]) if len(clip_times) > 1 else clip_times[0]
    log(f"engine: open {open_s:.1f} s, clips {', '.join(f'{t:.2f}' for t in clip_times)} s")

    captures = []
    state: dict[str, Any] = {}
    for _ in range(args.captures):
        started = time.perf_counter()
        state = stream.state_dict(pin_memory=True)
        sync()
        captures.append(time.perf_counter() - started)
    tensors = state["tensors"]
    state_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    shards: dict[str, int] = {}
    for name, t in tensors.items():
        shard = state_io.shard_of(name)
        shards[shard] = shards.get(shard, 0) + t.numel() * t.element_size()
    capture_s = min(captures[1:]) if len(captures) > 1 else captures[0]
    log(
        f"engine: state {state_bytes / 1e9:.2f} GB; captures "
        f"{', '.join(f'{t:.2f}' for t in captures)} s"
    )

    # Write, upload and read back the sink, the decoder and the first --write-steps steps.
    keep = {"sink", "decoder", *(f"step-{i}" for i in range(args.write_steps))}
    subset = {
        "meta": state["meta"],
        "tensors": {k: v for k, v in tensors.items() if state_io.shard_of(k) in keep},
    }
    subset_bytes = sum(t.numel() * t.element_size() for t in subset["tensors"].values())
    local = workdir / "checkpoint"
    started = time.perf_counter()
    state_io.write_checkpoint(subset, local)
    write_s = time.perf_counter() - started
    bucket = LocalStorage(workdir / "bucket")
    job_id = uuid.uuid4()
    started = time.perf_counter()
    uploaded = upload_checkpoint(bucket, job_id, 10, local, RetryPolicy(attempts=1))
    upload_s = time.perf_counter() - started
    shutil.rmtree(local)
    log(
        f"engine: wrote {subset_bytes / 1e9:.2f} GB in {write_s:.1f} s, "
        f"uploaded (to a directory) in {upload_s:.1f} s"
    )
    stream.close()
    del state, subset, tensors
    gc_collect()

    # Resume path: download proxy (the bucket directory), read, restore onto the device.
    restored = workdir / "restored"
    started = time.perf_counter()
    for key in bucket.list(f"jobs/{job_id}/checkpoints/000010/"):
        restored.mkdir(parents=True, exist_ok=True)
        bucket.get_file(key, restored / key.rsplit("/", 1)[1])
    download_s = time.perf_counter() - started
    started = time.perf_counter()
    loaded = state_io.read_checkpoint(restored)
    read_s = time.perf_counter() - started
    started = time.perf_counter()
    on_device = [t.to(device, non_blocking=True) for t in loaded["tensors"].values()]
    sync()
    restore_s = time.perf_counter() - started
    del on_device, loaded
    shutil.rmtree(workdir / "bucket")
    shutil.rmtree(restored)
    gc_collect()

    scale = state_bytes / uploaded if uploaded else 1.0
    full = {
        "write_s": write_s * scale,
        "upload_s": upload_s * scale,
        "download_s": download_s * scale,
        "read_s": read_s * scale,
        "restore_s": restore_s * scale,
    }
    background_s = full["write_s"] + full["upload_s"]
    intervals = {
        str(n): overhead(capture_s, background_s, clip_s, n) for n in args.engine_intervals
    }
    return {
        "preset": args.engine_preset,
        "layers": args.engine_layers,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "size": args.engine_size,
        "infer_frames": args.infer_frames,
        "model_load_s": load_s,
        "open_s": open_s,
        "clip_times_s": clip_times,
        "clip_s": clip_s,
        "state_bytes": state_bytes,
        "shard_bytes": shards,
        "capture_s": captures,
        "capture_steady_s": capture_s,
        "measured_on_bytes": uploaded,
        "measured": {
            "write_s": write_s,
            "upload_s": upload_s,
            "download_s": download_s,
            "read_s": read_s,
            "restore_s": restore_s,
        },
        "full_state": full,
        "write_gb_per_s": uploaded / write_s / 1e9,
        "upload_gb_per_s": uploaded / upload_s / 1e9,
        "background_s": background_s,
        "overhead_by_interval": intervals,
        "smallest_interval_under_2pct": smallest_interval(capture_s, background_s, clip_s, 0.02),
        "resume_to_first_frame_s": full["download_s"]
        + full["read_s"]
        + full["restore_s"]
        + open_s
        + clip_s,
    }


def gc_collect() -> None:
    import gc

    gc.collect()


# --------------------------------------------------------------------------- tiny lifecycle


@contextlib.contextmanager
def s3_api(workdir: Path) -> Iterator[Any]:
    """An in-process S3 API (moto) with a bucket, and storage on it."""
    from moto.server import ThreadedMotoServer

    from ops.demo import free_port
    from storage.s3 import S3Config, S3Storage

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        storage = S3Storage(
            S3Config(
                bucket="bench",
                endpoint_url=f"http://127.0.0.1:{port}",
                region="us-east-1",
                path_style=True,
            )
        )
        storage.client.create_bucket(Bucket="bench")
        yield storage
    finally:
        server.stop()


def bench_tiny(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from db import job_store, migrate
    from db.database import Database
    from db.params import AudioFacts, ImageFacts, JobParams, presenter_key
    from pipeline.params import fit_size
    from storage import keys
    from storage.local import LocalStorage
    from worker.config import EngineSpec, WorkerConfig
    from worker.lifecycle import Lifecycle

    url = f"sqlite:///{workdir / 'jobs.sqlite3'}"
    migrate.upgrade(url)
    database = Database(url)
    image = portrait_png(512, 512)
    seconds = args.tiny_clips * args.infer_frames / FPS - 0.1
    audio = speech_wav(seconds)

    def create(storage: Any, clips: int, every: int) -> uuid.UUID:
        job_id = uuid.uuid4()
        image_key = keys.input_key(job_id, "image", "png")
        audio_key = keys.input_key(job_id, "audio", "wav")
        storage.put_bytes(image_key, image)
        storage.put_bytes(audio_key, audio)
        width, height = fit_size(512, 512, args.tiny_size)
        params = JobParams(
            prompt="A presenter speaks to the camera.",
            size=args.tiny_size,
            width=width,
            height=height,
            num_clips=clips,
            infer_frames=args.infer_frames,
            seed=3,
            checkpoint_every=every,
            audio_duration_s=seconds,
            image=ImageFacts(width=512, height=512, format="PNG"),
            audio=AudioFacts(codec="pcm_s16le", sample_rate=16000, channels=1),
        )
        with database.transaction() as s:
            job_store.create_job(
                s,
                job_store.NewJob(
                    id=job_id,
                    tenant="bench",
                    params=params,
                    image_key=image_key,
                    audio_key=audio_key,
                    clips_total=clips,
                    max_attempts=1,
                    presenter_key=presenter_key(
                        "bench", hashlib.sha256(image).hexdigest(), params, "bf16"
                    ),
                ),
            )
        return job_id

    storage_cm: Any = s3_api(workdir) if args.tiny_storage == "s3" else contextlib.nullcontext(None)
    runs = []
    with storage_cm as s3:
        storage = s3 if s3 is not None else LocalStorage(workdir / "objects")
        config = WorkerConfig(
            scratch_dir=workdir / "scratch",
            engine=EngineSpec(preset="tiny", device="cpu", torch_threads=args.tiny_threads),
        )
        lifecycle = Lifecycle(config, database, storage)
        # warm-up: engine built, first-use costs paid
        lifecycle.run(create(storage, 2, 1))
        plan = [(str(n), n) for n in args.tiny_intervals] + [("none", args.tiny_clips)]
        for _ in range(args.tiny_repeats):
            for label, every in plan:
                outcome = lifecycle.run(create(storage, args.tiny_clips, every))
                st = lifecycle.last_stats
                assert st is not None and outcome.value == "succeeded", outcome
                checkpoints = max(0, len(st.commit_s) - 1)  # the final commit has no state
                runs.append(
                    {
                        "interval": label,
                        "clips": st.clips,
                        "render_s": st.render_s,
                        "clip_s": st.render_s / st.clips,
                        "capture_s": st.capture_s,
                        "commit_wait_s": st.commit_wait_s,
                        "encoder_wait_s": st.encoder_wait_s,
                        "stall_fraction": st.checkpoint_overhead,
                        "checkpoints": checkpoints,
                        "checkpoint_bytes": st.checkpoint_bytes // max(1, checkpoints),
                        "commit_s_mean": statistics.mean(st.commit_s) if st.commit_s else 0.0,
                        "stitch_s": st.stitch_s,
                        "open_s": st.open_s,
                    }
                )
                log(
                    f"tiny N={label}: render {st.render_s:.2f} s, stall "
                    f"{100 * st.checkpoint_overhead:.2f}%, {checkpoints} checkpoints"
                )
    database.dispose()

    summary = {}
    labels = [label for label, _ in plan]
    base = statistics.median(r["render_s"] for r in runs if r["interval"] == "none")
    for label in labels:
        mine = [r for r in runs if r["interval"] == label]
        render = statistics.median(r["render_s"] for r in mine)
        summary[label] = {
            "render_s": render,
            "clip_s": statistics.median(r["clip_s"] for r in mine),
            "stall_fraction": statistics.median(r["stall_fraction"] for r in mine),
            "wall_overhead": render / base - 1.0,
            "checkpoint_bytes": mine[0]["checkpoint_bytes"],
            "commit_s_mean": statistics.median(r["commit_s_mean"] for r in mine),
        }
    return {
        "size": args.tiny_size,
        "infer_frames": args.infer_frames,
        "clips": args.tiny_clips,
        "storage": "in-process S3 API (moto)" if args.tiny_storage == "s3" else "directory",
        "torch_threads": args.tiny_threads,
        "repeats": args.tiny_repeats,
        "runs": runs,
        "by_interval": summary,
    }


# --------------------------------------------------------------------------- stitch part


def bench_stitch(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from ops.bench import stitch as stitch_bench

    argv = [*shlex.split(args.stitch_args), "--workdir", str(workdir / "stitch"), "--quiet"]
    if importlib.util.find_spec("moviepy") is None:  # the `bench` extra is not installed
        log("stitch: moviepy is not installed (pip install -e '.[bench]'); skipping its part")
        argv.append("--skip-moviepy")
    doc = stitch_bench.main(argv)
    shutil.rmtree(workdir / "stitch", ignore_errors=True)
    return doc


# --------------------------------------------------------------------------- report


def report(doc: dict[str, Any]) -> str:
    lines = []
    engine = doc["parts"].get("engine")
    if engine:
        lines += [
            f"engine {engine['preset']} on {engine['device_name']} at {engine['size']}:",
            f"  clip {engine['clip_s']:.2f} s; state {engine['state_bytes'] / 1e9:.2f} GB; "
            f"capture {engine['capture_s'][0]:.2f} s first, {engine['capture_steady_s']:.2f} s "
            "after",
            f"  write {engine['write_gb_per_s']:.2f} GB/s, upload {engine['upload_gb_per_s']:.2f} "
            f"GB/s: {engine['background_s']:.1f} s per checkpoint in the background",
            "  overhead by N: "
            + ", ".join(f"{n}: {100 * v:.2f}%" for n, v in engine["overhead_by_interval"].items()),
            f"  smallest N under 2%: {engine['smallest_interval_under_2pct']}; "
            f"resume to first new frame {engine['resume_to_first_frame_s']:.1f} s "
            f"(+ model load {engine['model_load_s']:.1f} s)",
        ]
    tiny = doc["parts"].get("tiny")
    if tiny:
        lines.append(f"tiny lifecycle, {tiny['clips']} clips at {tiny['size']}:")
        for label, r in tiny["by_interval"].items():
            lines.append(
                f"  N={label:>4}: render {r['render_s']:.2f} s, stall "
                f"{100 * r['stall_fraction']:.2f}%, wall {100 * r['wall_overhead']:+.1f}%, "
                f"commit {r['commit_s_mean']:.2f} s"
            )
    tiers = doc["parts"].get("tiers")
    if tiers:
        from ops.bench.tiers import report as tiers_report

        lines += tiers_report(tiers)
    stitch = doc["parts"].get("stitch")
    if stitch:
        s = stitch["results"]["stitch"]
        lines.append(f"stitch: {json.dumps(s)}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )

    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    p.add_argument("--parts", default="engine,stitch,tiny")
    p.add_argument("--infer-frames", type=int, default=48)
    p.add_argument("--engine-preset", default="tiny")
    p.add_argument("--engine-device", default="auto")
    p.add_argument("--engine-size", default="720*400")
    p.add_argument("--engine-layers", type=int, default=0, help="DiT depth (0: the preset's)")
    p.add_argument("--engine-clips", type=int, default=2, help="timed clips after a warm-up")
    p.add_argument("--engine-intervals", type=ints, default=ints("1,2,5,10,20,30,50"))
    p.add_argument("--captures", type=int, default=3)
    p.add_argument(
        "--write-steps", type=int, default=4, help="step shards written and uploaded (scaled)"
    )
    p.add_argument("--checkpoint-every", type=int, default=20, help="tiers: N, in clips")
    p.add_argument(
        "--budgets-mb-s", type=lambda t: [float(x) for x in t.split(",")], default=[25, 50, 100]
    )
    p.add_argument("--max-interval-min", type=float, default=30.0)
    p.add_argument(
        "--tiers-runs",
        type=lambda t: [x for x in t.split(",") if x],
        default=["warm", "cold", "fresh", "remote"],
        help="tiers: the processes to measure: a resume with the page cache warm (warm), with "
        "it evicted (cold), a fresh open (fresh), a download (remote), a resume in a fork of a "
        "process that has imported the modules (forked; first, after the process that wrote "
        "the checkpoint), the same with the checkpoint evicted from the page cache "
        "(forked-cold)",
    )
    p.add_argument(
        "--tiers-captures",
        type=int,
        default=2,
        help="tiers: timed captures into pinned memory (the stall is the last); 0: none",
    )
    p.add_argument(
        "--tiers-dit-release",
        type=Path,
        default=None,
        help="tiers: write the 14B DiT's release here (34 GB) and load it in the resuming "
        "processes, beside their open (default: random weights, the load taken as --model-load-s)",
    )
    p.add_argument(
        "--tiers-row-major",
        action="store_true",
        help="tiers: new streams with the residual stream row-major (the pipeline's default; "
        "otherwise the convolution's layout, WanS2VTransformer.row_major_stream); the resuming "
        "processes' default stays the convolution's: they take the checkpoint's layout",
    )
    p.add_argument("--model-load-s", type=float, default=16.28, help="tiers: a worker's load")
    p.add_argument("--tiny-size", default="64*64")
    p.add_argument("--tiny-clips", type=int, default=20)
    p.add_argument("--tiny-intervals", type=ints, default=ints("1,2,5,10"))
    p.add_argument("--tiny-repeats", type=int, default=2)
    p.add_argument("--tiny-threads", type=int, default=1)
    p.add_argument("--tiny-storage", choices=("s3", "dir"), default="s3")
    p.add_argument("--stitch-args", default="--minutes 60 --skip-manifest")
    p.add_argument("--device-note", default=f"{platform.node()}, {os.cpu_count()} CPU cores")
    p.add_argument("--workdir", type=Path, help="scratch space (default: a temporary dir)")
    p.add_argument("--out", type=Path)
    return p.parse_args(argv)


def bench_tiers(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from ops.bench.tiers import bench_tiers as run

    return run(args, workdir)


PARTS: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {
    "engine": bench_engine,
    "tiers": bench_tiers,
    "stitch": bench_stitch,
    "tiny": bench_tiny,
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown parts {', '.join(sorted(unknown))}; use {', '.join(PARTS)}")
    doc: dict[str, Any] = {
        "benchmark": "lifecycle",
        "date": date.today().isoformat(),
        "machine": args.device_note,
        "platform": platform.platform(),
        "load_average_1m_before": os.getloadavg()[0],
        "parts": {},
    }
    with scratch_dir(args.workdir, "lifecycle") as workdir:
        for name in parts:
            log(f"part {name}")
            doc["parts"][name] = PARTS[name](args, workdir)
            doc["load_average_1m_after_" + name] = os.getloadavg()[0]
            if args.out:  # what is done survives a run cut short
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(report(doc), flush=True)
    return doc


if __name__ == "__main__":
    main()
