"""Generation benchmark: the LiveAvatar streaming generator on one GPU.

    python -m ops.bench.generate --out bench-out/generate.json           # 14B, bf16, 720x400
    python -m ops.bench.generate --preset tiny --device cpu --quick      # a dry run anywhere

Measures, in one run:
  1. the bf16 matmul ceiling: 8192^3 products on random data, median of 20;
  2. the 14B architecture (random weights) at 720x400, 4 steps: seconds per DiT step on one
     block for each step index, VAE decode per block, frames per second of the whole loop on
     one GPU (online decode included), model FLOPs utilisation of the DiT step against (1),
     peak GPU memory; timed with CUDA events over the clips after a warm-up clip (the ring
     cache is full from clip 1 on, so these are steady-state figures);
  3. the stream state at a clip boundary: its size, the time to capture it to host memory
     (pageable and pinned) and to write it as a checkpoint directory (fsync'd);
  4. GPU memory and host RSS after 10, 100 and 300 clips with online and with offline decode,
     at a reduced DiT depth (`--mem-layers`) so that hundreds of clips fit in the run; memory
     does not depend on depth other than through the per-layer cache, which is allocated at
     open. Offline decode keeps every clip's latents until the end; its final decode is not
     run (it is what makes offline decode impractical for long videos). A growth run stops
     early, and says so, when the next checkpoint would not finish before `--deadline`.

Prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline import Generator, RenderRequest, Waveform
from pipeline import state as state_io
from pipeline.model import fused
from pipeline.model.attention import attention
from pipeline.model.transformer import dit_flops_per_block_step

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


# --------------------------------------------------------------------------- inputs


def portrait(width: int, height: int) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    face = ((x - width / 2) / (width / 4)) ** 2 + ((y - height / 2) / (height / 3)) ** 2 < 1
    rgb = np.stack(
        [
            (200 * x / width).astype(np.uint8),
            (180 * y / height).astype(np.uint8),
            np.where(face, 210, 60).astype(np.uint8),
        ],
        axis=-1,
    )
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def speech(seconds: float) -> Waveform:
    t = np.arange(int(seconds * 16_000)) / 16_000
    voiced = np.sin(2 * np.pi * np.cumsum(140 + 30 * np.sin(2 * np.pi * 0.7 * t)) / 16_000)
    rng = np.random.default_rng(0)
    x = 0.4 * voiced * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) + 0.02 * rng.standard_normal(len(t))
    return Waveform(x.astype(np.float32))


def request(size: str, clips: int, steps: int, seed: int = 1) -> RenderRequest:
    w, h = (int(v) for v in size.split("*"))
    return RenderRequest(
        image=portrait(w, h),
        audio=speech(clips * 48 / 25 + 1),
        prompt="A woman speaks to the camera in a bright studio, natural light.",
        size=size,
        num_clips=clips,
        sample_steps=steps,
        seed=seed,
    )


# --------------------------------------------------------------------------- measuring


class Timer:
    """Times wrapped calls: CUDA events on a GPU, the wall clock on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending: list[tuple[str, Any, Any]] = []
        self.spans: dict[str, list[float]] = {}

    def wrap(self, fn: Callable[..., Any], label: Callable[..., str]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self.cuda:
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                start.record()
                out = fn(*args, **kwargs)
                end.record()
            else:
                start = time.perf_counter()
                out = fn(*args, **kwargs)
                end = time.perf_counter()
            self.pending.append((label(*args, **kwargs), start, end))
            return out

        return timed

    def collect(self, keep: bool = True) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        for name, start, end in self.pending:
            seconds = start.elapsed_time(end) / 1000 if self.cuda else end - start
            if keep:
                self.spans.setdefault(name, []).append(seconds)
        self.pending = []


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of fn() after warm-up calls (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) / 1000)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def gpu_bytes(device: torch.device) -> dict[str, int]:
    if device.type != "cuda":
        return {"allocated": 0, "reserved": 0}
    return {
        "allocated": torch.cuda.memory_allocated(device),
        "reserved": torch.cuda.memory_reserved(device),
    }


def matmul_ceiling(device: torch.device, n: int, repeats: int) -> float:
    """Median bf16 (GPU) / fp32 (CPU) matmul rate on random data, FLOP/s."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    pairs = [
        (
            torch.randn(n, n, device=device, dtype=dtype, generator=gen),
            torch.randn(n, n, device=device, dtype=dtype, generator=gen),
        )
        for _ in range(3)
    ]
    for a, b in pairs:
        a @ b
    sync(device)
    times = []
    for i in range(repeats):
        a, b = pairs[i % len(pairs)]
        if device.type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            a @ b
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) / 1000)
        else:
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


# --------------------------------------------------------------------------- parts


def bench_generation(
    args: argparse.Namespace, device: torch.device, peak: float
) -> tuple[dict, Generator]:
    log(f"building {args.preset} (random weights) on {device}")
    t = time.perf_counter()
    gen = Generator.from_preset(args.preset, device=device, random_weights=True)
    sync(device)
    build_s = time.perf_counter() - t
    params = sum(p.numel() for p in gen.components.dit.parameters())
    log(f"built in {build_s:.1f}s; DiT {params / 1e9:.2f}B parameters")

    clips = 1 + args.clips
    t = time.perf_counter()
    stream = gen.open(request(args.size, clips, args.steps))
    sync(device)
    open_s = time.perf_counter() - t
    g = stream.geometry
    log(f"GPU memory after open: {gpu_bytes(device)}")
    log(
        f"opened in {open_s:.1f}s: {stream.width}x{stream.height}, {g.block_tokens} tokens/block, "
        f"{g.cache_tokens} keys/step cache"
    )

    timer = Timer(device)
    stream.denoiser.step = timer.wrap(
        stream.denoiser.step, lambda cache, keys, x, step, block, audio: f"step{step}"
    )
    stream.decoder.decode = timer.wrap(stream.decoder.decode, lambda z: "vae_decode")

    t = time.perf_counter()
    next(stream)  # warm-up clip: kernels chosen, ring filled
    timer.collect(keep=False)
    log(f"warm-up clip {time.perf_counter() - t:.1f}s")

    sync(device)
    t = time.perf_counter()
    frames = 0
    for _ in range(args.clips):
        frames += next(stream).frames.shape[0]
    sync(device)
    loop_s = time.perf_counter() - t
    timer.collect()

    cfg = gen.preset.dit
    flops = dit_flops_per_block_step(cfg, g.block_tokens, g.cache_tokens)
    steps = {k: v for k, v in sorted(timer.spans.items()) if k.startswith("step")}
    step_median = statistics.median([s for v in steps.values() for s in v])
    decode = timer.spans["vae_decode"]
    result = {
        "build_s": build_s,
        "open_s": open_s,
        "dit_parameters": params,
        "width": stream.width,
        "height": stream.height,
        "block_tokens": g.block_tokens,
        "cache_tokens": g.cache_tokens,
        "measured_clips": args.clips,
        "step_s": {k: statistics.median(v) for k, v in steps.items()},
        "step_s_all": steps,
        "step_median_s": step_median,
        "dit_tflop_per_step": flops / 1e12,
        "dit_tflops_achieved": flops / step_median / 1e12,
        "mfu": flops / step_median / peak,
        "vae_decode_per_block_s": statistics.median(decode),
        "vae_decode_all_s": decode,
        "loop_s": loop_s,
        "fps": frames / loop_s,
        "block_s": loop_s / (args.clips * g.blocks_per_clip),
        "peak_gpu_allocated": torch.cuda.max_memory_allocated(device)
        if device.type == "cuda"
        else 0,
        "peak_gpu_reserved": torch.cuda.max_memory_reserved(device) if device.type == "cuda" else 0,
        "stream_memory": stream.memory_bytes(),
    }
    log(
        f"step {step_median:.3f}s  MFU {result['mfu']:.1%}  decode {result['vae_decode_per_block_s']:.3f}s/block  "
        f"{result['fps']:.2f} fps"
    )

    result["state"] = bench_state(args, stream, device)
    result["attention_s"] = bench_attention(g, cfg, device)
    result["step_eager_s"] = bench_eager_step(stream, device)
    log(f"eager step {result['step_eager_s']:.3f}s; attention {result['attention_s']}")
    stream.close()
    return result, gen


def bench_eager_step(stream: Any, device: torch.device) -> float:
    """The same DiT step with the elementwise glue left to eager PyTorch (no torch.compile).

    Runs after the measured clips on the stream's own caches (it overwrites one ring slot)."""
    g = stream.geometry
    block = stream.next_clip * g.blocks_per_clip
    audio = stream.denoiser.audio(stream.audio.video_frames(block * 12, 12))
    x = torch.randn(16, 3, g.latent_h, g.latent_w, device=device)
    sync(device)
    step = type(stream.denoiser).step  # the class's function: not the timing wrapper
    fused.set_compile(False)
    try:
        return time_call(
            lambda: step(stream.denoiser, stream.caches[1], stream.sink_keys, x, 1, block, audio),
            device,
            warmup=1,
            repeats=4,
        )
    finally:
        fused.set_compile(True)


def bench_attention(g: Any, cfg: Any, device: torch.device) -> dict[str, float | None]:
    """One layer's self-attention at the stream's shapes (queries of a block over a full
    cache), through each SDPA backend and through pipeline's `attention()`."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gen = torch.Generator(device=device).manual_seed(0)
    h, d = cfg.num_heads, cfg.head_dim
    q = torch.randn(1, g.block_tokens, h, d, device=device, dtype=torch.bfloat16, generator=gen)
    kv = torch.randn(2, g.cache_tokens, h, d, device=device, dtype=torch.bfloat16, generator=gen)
    k, v = kv[0].unsqueeze(0), kv[1].unsqueeze(0)

    def timed(fn: Callable[[], Any]) -> float:
        return time_call(fn, device, warmup=3, repeats=10)

    out: dict[str, float | None] = {"pipeline attention()": timed(lambda: attention(q, k, v))}
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    for backend in ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION"):
        try:
            with sdpa_kernel([getattr(SDPBackend, backend)]):
                out[backend.lower()] = timed(
                    lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)
                )
        except RuntimeError:  # not available for these inputs on this device
            out[backend.lower()] = None
    return out


def bench_state(args: argparse.Namespace, stream: Any, device: torch.device) -> dict:
    out: dict[str, Any] = {}
    # pageable: fresh host memory each time; pinned: the stream's buffers, allocated by the
    # first pinned capture and reused by the next (the steady cost of a checkpoint)
    for label, pinned in (
        ("capture_s", False),
        ("capture_pinned_first_s", True),
        ("capture_pinned_s", True),
    ):
        sync(device)
        t = time.perf_counter()
        sd = stream.state_dict(pin_memory=pinned)
        sync(device)
        out[label] = time.perf_counter() - t
        if label != "capture_s":
            del sd
            continue
        nbytes = sum(v.numel() * v.element_size() for v in sd["tensors"].values())
        out["bytes"] = nbytes
        out["bytes_by_shard"] = {}
        for name, v in sd["tensors"].items():
            shard = state_io.shard_of(name)
            out["bytes_by_shard"][shard] = (
                out["bytes_by_shard"].get(shard, 0) + v.numel() * v.element_size()
            )
        root = Path(args.state_dir or tempfile.gettempdir()) / "longtake-bench-state"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        free = shutil.disk_usage(root).free
        t = time.perf_counter()
        if free > 1.2 * nbytes:
            state_io.write_checkpoint(sd, root)
            out["write_mode"] = "whole checkpoint directory"
        else:  # not enough scratch disk: write each shard alone, fsync'd, then delete it
            by_shard: dict[str, dict[str, torch.Tensor]] = {}
            for name, v in sd["tensors"].items():
                by_shard.setdefault(state_io.shard_of(name), {})[name] = v
            for shard, tensors in by_shard.items():
                state_io.write_checkpoint({"meta": sd["meta"], "tensors": tensors}, root / shard)
                shutil.rmtree(root / shard)
            out["write_mode"] = f"shard by shard (free disk {free / 1e9:.0f} GB < state)"
        out["write_s"] = time.perf_counter() - t
        out["write_gb_per_s"] = nbytes / out["write_s"] / 1e9
        shutil.rmtree(root, ignore_errors=True)
        del sd
        gc.collect()
    log(
        f"state {out['bytes'] / 1e9:.1f} GB: capture {out['capture_s']:.1f}s, pinned "
        f"{out['capture_pinned_first_s']:.1f}s then {out['capture_pinned_s']:.1f}s, "
        f"write {out['write_s']:.1f}s"
    )
    return out


class _Stop(Exception):
    pass


class GrowthRun:
    """Samples memory after chosen clip counts of one stream; stops at the last one (or when
    the next would pass the deadline)."""

    def __init__(self, mode: str, marks: list[int], device: torch.device, deadline: float):
        self.mode, self.marks, self.device, self.deadline = mode, sorted(marks), device, deadline
        self.samples: list[dict[str, Any]] = []
        self.stopped: str | None = None
        self.stream: Any = None
        self.started = time.perf_counter()

    def on_clip(self, index: int) -> None:
        done = index + 1
        if done not in self.marks:
            return
        sync(self.device)
        s = {
            "clips": done,
            "gpu": gpu_bytes(self.device),
            "rss": rss_bytes(),
            "stream_bytes": sum(self.stream.memory_bytes().values()),
            "elapsed_s": time.perf_counter() - self.started,
        }
        self.samples.append(s)
        log(
            f"  {self.mode} after {done} clips: gpu {s['gpu']['allocated'] / 1e9:.2f} GB, "
            f"rss {s['rss'] / 1e9:.2f} GB"
        )
        if done == self.marks[-1]:
            raise _Stop
        per_clip = s["elapsed_s"] / done
        nxt = min(m for m in self.marks if m > done)
        if time.perf_counter() + per_clip * (nxt - done) > self.deadline:
            self.stopped = f"stopped after {done} clips: {nxt} would pass the deadline"
            raise _Stop

    def run(self, gen: Generator, args: argparse.Namespace) -> dict[str, Any]:
        self.started = time.perf_counter()
        self.stream = gen.open(
            request(args.size, self.marks[-1], args.steps, seed=2),
            decode=self.mode,  # type: ignore[arg-type]
            progress=self.on_clip,
        )
        try:
            for _ in self.stream:
                pass
        except _Stop:
            pass
        self.stream.close()
        if self.stopped:
            log(f"  {self.mode}: {self.stopped}")
        return {"samples": self.samples, "stopped": self.stopped}


def bench_memory(args: argparse.Namespace, device: torch.device, deadline: float) -> dict:
    layers = args.mem_layers
    log(f"memory growth: {args.preset} at {layers} layers")
    gen = Generator.from_preset(
        args.preset, device=device, random_weights=True, dit_overrides={"num_layers": layers}
    )
    out: dict[str, Any] = {"dit_layers": layers}
    for mode, marks in (("offline", args.mem_offline), ("online", args.mem_online)):
        if not marks:
            continue
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        out[mode] = GrowthRun(mode, marks, device, deadline).run(gen, args)
    del gen
    gc.collect()
    return out


# --------------------------------------------------------------------------- report


def table(r: dict) -> str:
    g = r["generation"]
    rows = [
        ("device", r["device"]),
        ("bf16 matmul ceiling", f"{r['matmul_tflops']:.0f} TFLOP/s"),
        ("DiT step, one block (median)", f"{g['step_median_s']:.3f} s"),
        *[(f"  step {k[4:]}", f"{v:.3f} s") for k, v in g["step_s"].items()],
        ("DiT FLOP per block step", f"{g['dit_tflop_per_step']:.1f} TFLOP"),
        ("DiT achieved / MFU", f"{g['dit_tflops_achieved']:.0f} TFLOP/s / {g['mfu']:.1%}"),
        ("VAE decode per block (12 frames)", f"{g['vae_decode_per_block_s']:.3f} s"),
        ("loop per block (4 steps + decode)", f"{g['block_s']:.3f} s"),
        ("frames per second, one GPU", f"{g['fps']:.2f}"),
        ("peak GPU memory (allocated)", f"{g['peak_gpu_allocated'] / 2**30:.1f} GiB"),
        ("stream state size", f"{g['state']['bytes'] / 1e9:.1f} GB"),
        ("state capture: pageable", f"{g['state']['capture_s']:.1f} s"),
        (
            "state capture: pinned, first / reused",
            f"{g['state']['capture_pinned_first_s']:.1f} s / {g['state']['capture_pinned_s']:.1f} s",
        ),
        ("state write", f"{g['state']['write_s']:.1f} s ({g['state']['write_gb_per_s']:.2f} GB/s)"),
    ]
    if "step_eager_s" in g:
        rows.append(("DiT step without torch.compile", f"{g['step_eager_s']:.3f} s"))
    for name, secs in g.get("attention_s", {}).items():
        rows.append(
            (
                f"self-attention, one layer: {name}",
                "n/a" if secs is None else f"{secs * 1e3:.2f} ms",
            )
        )
    mem = r.get("memory")
    if mem:
        for mode in ("online", "offline"):
            if mode not in mem:
                continue
            for s in mem[mode]["samples"]:
                rows.append(
                    (
                        f"{mode} decode, {mem['dit_layers']} layers, after {s['clips']} clips",
                        f"GPU {s['gpu']['allocated'] / 2**30:.2f} GiB, RSS {s['rss'] / 2**30:.2f} GiB",
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
    p.add_argument("--size", default="720*400")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--clips", type=int, default=2, help="measured clips after the warm-up clip")
    p.add_argument("--mem-layers", type=int, default=2)
    p.add_argument("--mem-online", default=None, help="clip counts to sample (default 10,100,300)")
    p.add_argument("--mem-offline", default=None, help="clip counts to sample (default 10,100,300)")
    p.add_argument("--deadline", type=float, default=540.0, help="seconds; growth runs stop before")
    p.add_argument("--state-dir", default=None, help="scratch directory for the state write")
    p.add_argument("--quick", action="store_true", help="tiny counts for a dry run")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if args.quick:
        args.size, args.clips = "64*64", 1
    default_marks = "2,4" if args.quick else "10,100,300"
    args.mem_online = default_marks if args.mem_online is None else args.mem_online
    args.mem_offline = default_marks if args.mem_offline is None else args.mem_offline
    args.mem_online = [int(v) for v in args.mem_online.split(",") if v]
    args.mem_offline = [int(v) for v in args.mem_offline.split(",") if v]
    device = torch.device(args.device)
    deadline = T0 + args.deadline

    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu"
    )
    log(f"device {name}; torch {torch.__version__}")
    n = 8192 if device.type == "cuda" else 1024
    peak = matmul_ceiling(device, n, 20)
    log(f"matmul ceiling {peak / 1e12:.1f} TFLOP/s")

    report: dict[str, Any] = {
        "benchmark": "generate",
        "date": date.today().isoformat(),
        "device": name,
        "torch": torch.__version__,
        "preset": args.preset,
        "weights": "random",
        "size": args.size,
        "steps": args.steps,
        "matmul_tflops": peak / 1e12,
    }
    generation, gen = bench_generation(args, device, peak)
    report["generation"] = generation
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))  # keep what we have if the rest fails
    del gen
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    report["memory"] = bench_memory(args, device, deadline)
    report["total_s"] = time.perf_counter() - T0
    args.out.write_text(json.dumps(report, indent=2))
    print()
    print(table(report))


if __name__ == "__main__":
    main()
