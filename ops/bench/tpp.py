"""TPP engine benchmark: the streaming generator pipelined over 1, 2 and 4 GPUs.

    python -m ops.bench.tpp --out bench-out/tpp.json                  # 14B, bf16, 720x400
    python -m ops.bench.tpp --quick --out /tmp/tpp.json               # tiny, CPU ranks, gloo

For each layout (number of DiT GPUs, the decoder overlapped on the last one or on a GPU of its
own), one engine is started (random weights of the 14B architecture: speed does not depend on
weight values), warmed up (two clips; the decode's cost on the last DiT rank is measured for the
balanced split), then one stream per split is timed:

  - frames per second over the clips after the first (the pipeline is full by then), and the
    first clip's and first block's latency from `open()` (the pipeline fill);
  - per rank, from CUDA events over the measured clips: DiT and decode time per block, the busy
    union, the idle fraction of the GPU, time spent waiting for the previous rank and for the
    caller, peak memory;
  - optionally a distributed checkpoint between two clips (per-rank capture and write time).

A layout 'AxK' starts K engines of layout A side by side on disjoint GPUs ('4x2': two engines
of four GPUs on an 8-GPU host; '4+1': LiveAvatar's four DiT GPUs and one decoding) and times
one stream on each at once, the measured clips of all streams starting together: the host's
throughput is the sum of their FPS.

Each layout runs once per precision (`--precisions bf16,fp8`: an engine of each, fp8 being
the same random weights quantised on every DiT rank). Scaling efficiency = FPS / (GPUs x
single-GPU FPS of the same precision). The layouts run in the order given, each under the
deadline; results are written after each one, so a run cut short keeps what it has.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

from pipeline.geometry import Geometry
from pipeline.model.transformer import dit_flops_per_block_step
from pipeline.presets import get_preset
from pipeline.tpp import Engine, EngineConfig
from pipeline.tpp.engine import warmup_request

T0 = time.perf_counter()


def log(text: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {text}", flush=True)


def split_layout(layout: str) -> tuple[str, int]:
    """'4x2' -> ('4', 2): the layout of one engine and how many run side by side."""
    one, _, copies = layout.partition("x")
    return one, int(copies) if copies else 1


def layout_config(
    layout: str, args: argparse.Namespace, first_gpu: int = 0, precision: str = "bf16"
) -> EngineConfig:
    """'4': four DiT GPUs, decode overlapped on the last; '3+1': three DiT GPUs and one that
    decodes. GPUs from `first_gpu`."""
    own = layout.endswith("+1")
    dit = int(layout.split("+")[0])
    common: dict[str, Any] = dict(
        preset=args.preset,
        random_weights=True,
        attention=args.attention,
        compile=not args.no_compile,
        dtype=args.dtype,
        precision=precision,
        warmup_size=args.size,
        warmup_steps=args.steps,
        stall_timeout_s=150.0,
        comm_timeout_s=240.0,
        start_timeout_s=420.0,
    )
    if args.device == "cpu":
        return EngineConfig(
            dit_devices=("cpu",) * dit,
            vae_device="cpu" if own else None,
            cpu_threads=1,
            **common,
        )
    return EngineConfig.cuda(dit + (1 if own else 0), vae_on_own_gpu=own, first=first_gpu, **common)


def gpus_of(layout: str) -> int:
    one, copies = split_layout(layout)
    return copies * sum(int(x) for x in one.split("+"))


def bench_stream(
    engine: Engine,
    args: argparse.Namespace,
    split: str,
    checkpoint: bool,
    together: threading.Barrier | None = None,
) -> dict[str, Any]:
    """together: streams of engines side by side start their measured clips at once."""
    req = warmup_request(args.size, args.steps, clips=1 + args.clips, seed=7)
    t_open = time.perf_counter()
    stream = engine.open(req, split=split, profile_from_clip=1)  # type: ignore[arg-type]
    open_s = time.perf_counter() - t_open
    next(stream)
    first = dict(stream.timings)
    if together is not None:
        together.wait()
    t = time.perf_counter()
    frames = 0
    ckpt: dict[str, Any] | None = None
    for i in range(args.clips):
        if checkpoint and i == args.clips // 2:
            ckpt = bench_checkpoint(stream, args)
        frames += next(stream).frames.shape[0]
    loop_s = time.perf_counter() - t
    stream.close()
    blocks = stream.blocks_profiled
    block_s = loop_s / (args.clips * stream.bpc)
    ranks = []
    for r, s in enumerate(stream.stats):
        piece = stream.partition[r] if r < len(stream.partition) else ()
        layers = sum(len(u) for u in piece)
        row: dict[str, Any] = {
            "rank": r,
            "layer_steps": layers,
            "units": [[u.step, u.start, u.stop] for u in piece],
            "idle_fraction": s.get("idle_fraction"),
            "busy_per_block_s": s.get("busy_s", 0.0) / blocks if blocks else None,
            # against the pipeline's period: a rank that ran ahead of the others ends its own
            # window early, so its idle_fraction over a short window understates this
            "idle_of_block_time": max(0.0, 1.0 - s.get("busy_s", 0.0) / blocks / block_s)
            if blocks
            else None,
            "dit_per_block_s": (s.get("dit") or {}).get("median_s"),
            "vae_per_block_s": (s.get("vae") or {}).get("median_s"),
            "waits_s": s.get("waits_s"),
            "window_s": s.get("window_s"),
            "max_memory_allocated": s.get("max_memory_allocated"),
            "open_s": s.get("open_s"),
        }
        ranks.append(row)
    out: dict[str, Any] = {
        "split": split,
        "partition": [[[u.step, u.start, u.stop] for u in p] for p in stream.partition],
        "snapshots": stream.snapshots,
        "measured_clips": args.clips,
        "blocks_profiled": blocks,
        "open_s": open_s,
        "first_block_s": first.get("first_block_s"),
        "first_clip_s": first.get("first_clip_s"),
        "loop_start_s": t - T0,
        "loop_s": loop_s,
        "fps": frames / loop_s,
        "block_s": block_s,
        "ranks": ranks,
    }
    if ckpt is not None:  # the loop included the checkpoint: its fps says what it cost
        out["checkpoint"] = ckpt
        out["fps_with_checkpoint"] = out.pop("fps")
        out["fps"] = None
    return out


def bench_checkpoint(stream: Any, args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.state_dir or tempfile.gettempdir()) / "longtake-bench-tpp-ckpt"
    shutil.rmtree(root, ignore_errors=True)
    free = shutil.disk_usage(root.parent).free
    t = time.perf_counter()
    files = stream.checkpoint(root)
    seconds = time.perf_counter() - t
    info = dict(stream.last_checkpoint)
    info.update(
        {
            "seconds": seconds,
            "files": len(files),
            "free_disk_before": free,
            "where": str(root),
        }
    )
    shutil.rmtree(root, ignore_errors=True)
    log(
        f"  checkpoint {info['bytes'] / 1e9:.1f} GB in {seconds:.1f}s "
        f"(capture per rank {max(info['capture_s']):.2f}s, write {max(info['write_s']):.1f}s)"
    )
    return info


def bench_side_by_side(layout: str, args: argparse.Namespace, precision: str) -> dict[str, Any]:
    """K engines of one layout on disjoint GPUs, one stream each, timed over the same clips."""
    one, copies = split_layout(layout)
    per = gpus_of(one)
    engines: list[Engine] = []
    result: dict[str, Any] = {
        "layout": layout,
        "precision": precision,
        "gpus": gpus_of(layout),
        "engines": copies,
    }
    try:
        t = time.perf_counter()
        for i in range(copies):
            cfg = layout_config(one, args, first_gpu=i * per, precision=precision)
            log(f"layout {layout}: engine {i} on {cfg.devices}")
            engines.append(Engine(cfg))
        result["start_s"] = time.perf_counter() - t
        result["dit_ranks"] = engines[0].config.dit_ranks
        result["vae_on_own_gpu"] = engines[0].config.vae_on_own_rank
        split = "layers" if engines[0].config.dit_ranks > 1 else "steps"
        together = threading.Barrier(copies)
        runs: list[dict[str, Any] | BaseException | None] = [None] * copies

        def run(i: int) -> None:
            try:
                runs[i] = bench_stream(engines[i], args, split, False, together)
            except BaseException as exc:  # reported below, with the other engines' figures
                together.abort()
                runs[i] = exc

        threads = [threading.Thread(target=run, args=(i,)) for i in range(copies)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        failed = [r for r in runs if isinstance(r, BaseException)]
        if failed:
            raise failed[0]
        streams = [r for r in runs if isinstance(r, dict)]
        starts = [r["loop_start_s"] for r in streams]
        ends = [r["loop_start_s"] + r["loop_s"] for r in streams]
        # the host's throughput holds while every engine streams: the overlap of their windows
        overlap = max(0.0, min(ends) - max(starts))
        result["streams"] = streams
        result["engine_fps"] = [r["fps"] for r in streams]
        result["fps"] = sum(r["fps"] for r in streams)
        result["overlap_of_longest_window"] = overlap / max(r["loop_s"] for r in streams)
        log(
            f"  {copies} engines side by side: {result['fps']:.2f} fps in all ("
            + ", ".join(f"{f:.2f}" for f in result["engine_fps"])
            + f"), windows overlap {result['overlap_of_longest_window']:.0%}"
        )
    finally:
        for engine in engines:
            engine.shutdown()
    return result


def bench_layout(
    layout: str, args: argparse.Namespace, deadline: float, precision: str = "bf16"
) -> dict[str, Any]:
    if split_layout(layout)[1] > 1:
        return bench_side_by_side(layout, args, precision)
    cfg = layout_config(layout, args, precision=precision)
    log(f"layout {layout} ({precision}): {cfg.world_size} ranks on {cfg.devices}")
    t = time.perf_counter()
    engine = Engine(cfg)
    start_s = time.perf_counter() - t
    log(f"  started in {start_s:.1f}s; decode cost {engine.measured_vae_cost} layer-steps")
    result: dict[str, Any] = {
        "layout": layout,
        "precision": precision,
        "gpus": gpus_of(layout),
        "dit_ranks": cfg.dit_ranks,
        "vae_on_own_gpu": cfg.vae_on_own_rank,
        "start_s": start_s,
        "ready": engine.ready_info,
        "warmup_stats": engine.warmup_stats,
        "measured_vae_cost_layer_steps": engine.measured_vae_cost,
        "streams": [],
    }
    splits = ["layers", "steps"] if cfg.dit_ranks > 1 and layout in args.both_splits else []
    splits = splits or ["layers" if cfg.dit_ranks > 1 else "steps"]
    try:
        for split in splits:
            if time.perf_counter() > deadline:
                result["stopped"] = "deadline"
                break
            ck = (
                layout == args.checkpoint_layout
                and split == splits[0]
                and time.perf_counter() - T0 < args.checkpoint_before
            )
            r = bench_stream(engine, args, split, ck)
            result["streams"].append(r)
            fps = r["fps"] if r["fps"] is not None else r["fps_with_checkpoint"]
            log(
                f"  split {split}: fps {fps:.2f}"
                + (" (with a checkpoint)" if r["fps"] is None else "")
                + f", first clip "
                f"{r['first_clip_s']:.1f}s, per rank busy/block "
                + ", ".join(
                    f"{x['busy_per_block_s']:.3f}" if x["busy_per_block_s"] else "-"
                    for x in r["ranks"]
                )
                + ", idle "
                + ", ".join(
                    f"{x['idle_fraction']:.0%}" if x["idle_fraction"] is not None else "-"
                    for x in r["ranks"]
                )
            )
            if ck and time.perf_counter() < deadline:  # the same split again, no checkpoint
                r2 = bench_stream(engine, args, split, False)
                r["fps_without_checkpoint"] = r2["fps"]
                result["streams"].append(r2)
    finally:
        engine.shutdown()
    return result


def best_fps(layout: dict[str, Any]) -> float | None:
    if layout.get("engines", 1) > 1:
        return layout.get("fps")
    values = [s["fps"] for s in layout["streams"] if s.get("fps")]
    return max(values) if values else None


def single_gpu_fps(report: dict[str, Any], precision: str) -> float | None:
    """The best one-GPU FPS of a precision in this run (the scaling baseline)."""
    return next(
        (
            best_fps(x)
            for x in report["layouts"]
            if x["layout"] == "1" and x.get("precision") == precision and best_fps(x)
        ),
        None,
    )


def table(report: dict[str, Any]) -> str:
    rows = [("device", report["device"]), ("preset / size / steps", report["setup"])]
    for x in report["layouts"]:
        single = single_gpu_fps(report, x.get("precision", "bf16"))
        if x.get("engines", 1) > 1 and x.get("fps"):
            eff = x["fps"] / (x["gpus"] * single) if single else None
            rows.append(
                (
                    f"{x['layout']} ({x['precision']}): {x['engines']} engines side by side, "
                    f"{x['gpus']} GPUs",
                    f"{x['fps']:.2f} fps in all"
                    + (f", efficiency {eff:.0%}" if eff else "")
                    + " ("
                    + ", ".join(f"{f:.2f}" for f in x["engine_fps"])
                    + f" each; windows overlap {x['overlap_of_longest_window']:.0%})",
                )
            )
            continue
        for s in x["streams"]:
            if s.get("fps") is None:
                continue
            eff = s["fps"] / (x["gpus"] * single) if single else None
            ranks = s["ranks"]
            rows.append(
                (
                    f"{x['layout']} GPU(s), {x['precision']}, split {s['split']}",
                    f"{s['fps']:.2f} fps"
                    + (f", efficiency {eff:.0%}" if eff else "")
                    + f", first clip {s['first_clip_s']:.2f}s"
                    + f", first block {s['first_block_s']:.2f}s",
                )
            )
            rows.append(
                (
                    "  per rank: layer-steps / busy per block / idle",
                    "; ".join(
                        f"{r['layer_steps']} / "
                        + (f"{r['busy_per_block_s']:.3f}s" if r["busy_per_block_s"] else "-")
                        + " / "
                        + (
                            f"{r['idle_of_block_time']:.0%}"
                            if r["idle_of_block_time"] is not None
                            else "-"
                        )
                        for r in ranks
                    ),
                )
            )
            dit = [r["dit_per_block_s"] for r in ranks if r["dit_per_block_s"]]
            vae = [r["vae_per_block_s"] for r in ranks if r["vae_per_block_s"]]
            rows.append(
                (
                    "  DiT per block per rank / decode per block",
                    ", ".join(f"{d:.3f}s" for d in dit)
                    + " / "
                    + ", ".join(f"{v:.3f}s" for v in vae),
                )
            )
        for s in x["streams"]:
            ck = s.get("checkpoint")
            if ck:
                rows.append(
                    (
                        f"  checkpoint ({x['layout']} GPUs)",
                        f"{ck['bytes'] / 1e9:.1f} GB, {ck['seconds']:.1f}s; capture per rank "
                        + ", ".join(f"{c:.2f}" for c in ck["capture_s"])
                        + "s; write "
                        + ", ".join(f"{w:.1f}" for w in ck["write_s"])
                        + "s",
                    )
                )
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="liveavatar-14b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--layouts",
        default="4,2,1,3+1",
        help="comma-separated; '3+1': own VAE GPU; '4x2': two engines of 4 side by side",
    )
    p.add_argument("--both-splits", default="4", help="layouts that also time split 'steps'")
    p.add_argument("--checkpoint-layout", default="4", help="layout that times a checkpoint")
    p.add_argument(
        "--checkpoint-before", type=float, default=240.0, help="seconds; later, no checkpoint"
    )
    p.add_argument("--size", default="720*400")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--clips", type=int, default=4, help="measured clips after the first")
    p.add_argument("--dtype", default=None)
    p.add_argument("--precisions", default="bf16", help="comma-separated: bf16, fp8")
    p.add_argument("--attention", default="auto")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--state-dir", default=None, help="scratch directory for the checkpoint")
    p.add_argument("--deadline", type=float, default=540.0, help="seconds; later layouts skip")
    p.add_argument(
        "--layout-min-s", type=float, default=0.0, help="skip a layout with less time left"
    )
    p.add_argument("--quick", action="store_true", help="tiny model on CPU ranks (a dry run)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if args.quick:
        args.preset, args.device, args.size, args.clips = "tiny", "cpu", "64*64", 2
    args.both_splits = set(args.both_splits.split(","))
    deadline = T0 + args.deadline

    cuda = args.device == "cuda"
    name = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    topo = ""
    if cuda:
        try:
            topo = subprocess.run(
                ["nvidia-smi", "topo", "-m"], capture_output=True, text=True, timeout=30
            ).stdout
        except (OSError, subprocess.SubprocessError):
            topo = "n/a"
    preset = get_preset(args.preset)
    w, h = (int(v) for v in args.size.split("*"))
    g = Geometry(w, h, 48, preset.dit.zip_frame_buckets)
    report: dict[str, Any] = {
        "benchmark": "tpp",
        "date": date.today().isoformat(),
        "device": f"{torch.cuda.device_count()} x {name}" if cuda else name,
        "torch": torch.__version__,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
        "topology": topo,
        "weights": "random",
        "preset": args.preset,
        "size": args.size,
        "steps": args.steps,
        "setup": f"{args.preset} / {args.size} / {args.steps} steps, "
        + (args.dtype or ("bf16" if cuda else "fp32")),
        "dit_tflop_per_block_step": dit_flops_per_block_step(
            preset.dit, g.block_tokens, g.cache_tokens
        )
        / 1e12,
        "layouts": [],
    }
    log(f"device {report['device']}; torch {torch.__version__}")
    if topo:
        print(topo, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for layout in args.layouts.split(","):
        for precision in args.precisions.split(","):
            entry = {"layout": layout, "precision": precision, "streams": []}
            if time.perf_counter() > deadline - args.layout_min_s:
                log(f"layout {layout} ({precision}): skipped (deadline)")
                report["layouts"].append({**entry, "skipped": "deadline"})
                continue
            try:
                report["layouts"].append(bench_layout(layout, args, deadline, precision))
            except Exception as exc:  # keep the other layouts' figures
                log(f"layout {layout} ({precision}) failed: {exc!r}")
                report["layouts"].append({**entry, "error": repr(exc)})
            report["total_s"] = time.perf_counter() - T0
            args.out.write_text(json.dumps(report, indent=2, default=str))
    for x in report["layouts"]:
        fps = best_fps(x)
        single = single_gpu_fps(report, x["precision"])
        x["best_fps"] = fps
        x["scaling_efficiency"] = fps / (x["gpus"] * single) if fps and single else None
    report["total_s"] = time.perf_counter() - T0
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print()
    print(table(report))


if __name__ == "__main__":
    main()
