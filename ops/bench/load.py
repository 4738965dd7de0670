"""Checkpoint load benchmark: the 14B release layout with random tensors, loaded to a GPU.

    python -m ops.bench.load --device cuda:0 --out bench-out/load.json

One call does everything:
  1. writes, under --dir, a release with the published names, shapes, dtypes and file formats
     and random values (speed does not depend on them): the 4-shard bf16 DiT with its index
     (32.6 GB), LiveAvatar's LoRA (1.35 GB), the umT5 .pth (11.4 GB), the Wan VAE .pth
     (0.5 GB): about 46 GB of disk; files already there from an earlier run are reused;
  2. loads each part in a fresh child process (so that its peak RSS is the load's own), first
     with the files evicted from the page cache (cold: disk speed) and again (warm: page cache):
       dit   the sharded DiT streamed into a bare module with the release's tensor names on
             the meta device, then the LoRA merged;
       text  the umT5 encoder into UMT5EncoderModel;
       vae   the VAE into AutoencoderKLWan;
  3. loads the DiT twice more, warm, beside a thread that runs Python without pause (as a
     worker's imports and torch.compile's tracing do while the DiT loads): once with CPython's
     default switch interval and once inside `pipeline.gil.loading()`, as the worker loads;
  4. prints a table (seconds, GB/s, peak host RSS and its anonymous part, GPU memory) and
     writes it as JSON to --out. RSS figures are in GiB, sizes in GB.

--layout small runs the same on a few-MB release, on CPU too (the test suite does).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from datetime import date
from pathlib import Path
from typing import Any

import torch

from pipeline import gil
from pipeline.weights.dit import load_dit
from pipeline.weights.layout import CheckpointPaths
from pipeline.weights.spec_module import module_from_shapes
from pipeline.weights.specs import (
    ReleaseSpec,
    S2VArchitecture,
    T5Architecture,
    TensorSpec,
    VAEArchitecture,
    dit_shapes,
)
from pipeline.weights.text_encoder import load_text_encoder, umt5_config
from pipeline.weights.vae import load_vae, vae_config

LAYOUTS = {
    "14b": ReleaseSpec.liveavatar_14b(),
    "small": ReleaseSpec(
        dit=S2VArchitecture(
            dim=256,
            ffn_dim=512,
            freq_dim=32,
            num_heads=4,
            num_layers=4,
            text_dim=64,
            audio_dim=64,
            audio_inject_layers=(0, 3),
            audio_layers=5,
        ),
        text=T5Architecture(
            vocab_size=512, dim=64, dim_attn=64, dim_ffn=128, num_heads=4, num_layers=2
        ),
        vae=VAEArchitecture(dim=16),
        lora_rank=8,
    ),
}
PARTS = ("dit", "text", "vae")
SHARD_BYTES = 10 * 10**9  # diffusers' default max_shard_size, which gives the release 4 shards
_SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}


# --------------------------------------------------------------------------- writing a release


class RandomPool:
    """Random values to fill tensors from: a fixed block per dtype, read at shifting offsets."""

    def __init__(self, mib: int = 64, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        values = torch.randn(mib * 2**20 // 4, generator=generator) * 0.02
        self.blocks = {
            dtype: values.to(dtype).view(torch.uint8).numpy().tobytes()
            for dtype in _SAFETENSORS_DTYPES
        }
        self.cursor = 0

    def chunks(self, nbytes: int, dtype: torch.dtype):
        block = memoryview(self.blocks[dtype])
        self.cursor = (self.cursor + 4099 * 4) % (len(block) // 2)  # a new start per tensor
        position = self.cursor
        while nbytes > 0:
            take = min(nbytes, len(block) - position)
            yield block[position : position + take]
            nbytes -= take
            position = 0

    def tensor(self, spec: TensorSpec) -> torch.Tensor:
        out = torch.empty(spec.shape, dtype=spec.dtype)
        flat = out.reshape(-1).view(torch.uint8).numpy()
        done = 0
        for chunk in self.chunks(spec.nbytes, spec.dtype):
            flat[done : done + len(chunk)] = memoryview(chunk).cast("B")
            done += len(chunk)
        return out


def write_safetensors(path: Path, specs: dict[str, TensorSpec], pool: RandomPool) -> None:
    """A safetensors file written tensor by tensor (never the whole file in memory)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, spec in specs.items():
        end = offset + spec.nbytes
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for spec in specs.values():
            for chunk in pool.chunks(spec.nbytes, spec.dtype):
                f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def write_release(root: Path, spec: ReleaseSpec, parts: tuple[str, ...]) -> dict[str, float]:
    """Write the parts not already complete under `root`; returns seconds per part written."""
    paths = CheckpointPaths.at(root)
    paths.base.mkdir(parents=True, exist_ok=True)
    pool = RandomPool()
    written: dict[str, float] = {}

    def fresh(part: str) -> bool:
        return not (root / f".{part}.complete").exists()

    def done(part: str, start: float) -> None:
        (root / f".{part}.complete").touch()
        written[part] = time.perf_counter() - start

    if "dit" in parts and fresh("dit"):
        start = time.perf_counter()
        shards: list[dict[str, TensorSpec]] = [{}]
        for name, tensor in spec.dit_specs().items():
            if (
                shards[-1]
                and sum(s.nbytes for s in shards[-1].values()) + tensor.nbytes > SHARD_BYTES
            ):
                shards.append({})
            shards[-1][name] = tensor
        weight_map = {}
        for i, shard in enumerate(shards):
            file = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(paths.base / file, shard, pool)
            weight_map |= dict.fromkeys(shard, file)
        total = sum(s.nbytes for s in spec.dit_specs().values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        paths.dit_index.write_text(json.dumps(index, indent=2))
        paths.dit_config.write_text(json.dumps(spec.dit.to_config(), indent=2))
        paths.lora.parent.mkdir(parents=True, exist_ok=True)
        write_safetensors(paths.lora, spec.lora_specs(), pool)
        done("dit", start)
    for part, path, specs in (
        ("text", paths.text_encoder, spec.text_specs),
        ("vae", paths.vae, spec.vae_specs),
    ):
        if part in parts and fresh(part):
            start = time.perf_counter()
            torch.save({name: pool.tensor(s) for name, s in specs().items()}, path)
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
            done(part, start)
    return written


def part_files(root: Path, part: str) -> list[Path]:
    paths = CheckpointPaths.at(root)
    if part == "dit":
        return [*sorted(paths.base.glob("diffusion_pytorch_model-*.safetensors")), paths.lora]
    return [paths.text_encoder if part == "text" else paths.vae]


# --------------------------------------------------------------------------- measuring a load


def _status_kib(field: str) -> int:
    """A memory figure of /proc/self/status in KiB (0 where the kernel does not report it)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class RssSampler:
    """Peaks of anonymous and file-backed resident memory, sampled every few milliseconds.

    VmHWM counts both. Pages of a memory-mapped file (torch.load(mmap=True) for the .pth
    files) are file-backed: resident while mapped, but the kernel can drop them at any time,
    unlike anonymous memory (copies, staging buffers), which is what a load really costs.
    """

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.peak_anon_kib = self.peak_file_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_anon_kib = max(self.peak_anon_kib, _status_kib("RssAnon"))
            self.peak_file_kib = max(self.peak_file_kib, _status_kib("RssFile"))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class BusyPython:
    """A thread that runs Python bytecode without pause while the `with` block runs, as the
    opening thread does beside the DiT's load (imports, torch.compile's tracing)."""

    def __init__(self) -> None:
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="busy-python", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for i in range(20_000):  # pure bytecode: holds the GIL until made to switch
                total += i * i
            self.rounds += 1

    def __enter__(self) -> BusyPython:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# (cache, a busy Python thread beside, the load inside pipeline.gil.loading())
CASES = (("cold", False, False), ("warm", False, False))
CONTENDED = (("warm", True, False), ("warm", True, True))


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def evict(files: list[Path]) -> None:
    """Drop the files' pages from the page cache, so the next read comes from disk."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def load_once(part: str, root: Path, spec: ReleaseSpec, device: torch.device) -> dict[str, Any]:
    paths = CheckpointPaths.at(root)
    extra: dict[str, Any] = {}
    if part == "dit":
        module = module_from_shapes(dit_shapes(spec.dit), torch.bfloat16)  # meta
        start = time.perf_counter()
        report = load_dit(paths.base, module, device, lora=paths.lora)
        seconds = time.perf_counter() - start
        nbytes = report.weights.bytes + (report.lora.bytes if report.lora else 0)
        extra = {
            "weights_seconds": round(report.weights.seconds, 3),
            "lora_merge_seconds": round(report.lora.seconds, 3) if report.lora else None,
            "tensors": report.weights.tensors,
        }
        del module
    elif part == "text":
        start = time.perf_counter()
        model = load_text_encoder(paths.text_encoder, device, config=umt5_config(spec.text))
        _sync(device)
        seconds = time.perf_counter() - start
        nbytes = sum(s.nbytes for s in spec.text_specs().values())
        del model
    else:
        start = time.perf_counter()
        model = load_vae(paths.vae, device, config=vae_config(spec.vae))
        _sync(device)
        seconds = time.perf_counter() - start
        nbytes = sum(s.nbytes for s in spec.vae_specs().values())
        del model
    return {"seconds": round(seconds, 3), "gb": round(nbytes / 1e9, 3), **extra}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(part: str, root: Path, layout: str, device_name: str) -> list[dict[str, Any]]:
    """Cold then warm load of one part, in this (fresh) process; the DiT's also beside busy
    Python, with the default switch interval and with the loads' short one."""
    spec = LAYOUTS[layout]
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.init()
        torch.empty(1, device=device)  # the CUDA context belongs to the baseline
    rows = []
    for cache, busy, short in CASES + (CONTENDED if part == "dit" else ()):
        if cache == "cold":
            evict(part_files(root, part))
        peak_reset = _reset_peak_rss() or cache == "cold"
        baseline = _status_kib("VmRSS")
        baseline_anon = _status_kib("RssAnon")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        beside = BusyPython() if busy else nullcontext()
        switching = gil.loading() if short else nullcontext()
        with RssSampler() as sampled, beside, switching:
            interval = sys.getswitchinterval()
            row = {"part": part, "cache": cache, **load_once(part, root, spec, device)}
        row["beside"] = "busy python" if busy else None
        if isinstance(beside, BusyPython):  # what the busy thread got done meanwhile
            row["busy_rounds_per_s"] = round(beside.rounds / row["seconds"], 1)
        row["switch_interval_ms"] = round(interval * 1e3, 3)
        peak = _status_kib("VmHWM")
        row["peak_anon_above_baseline_gb"] = round(
            (sampled.peak_anon_kib - baseline_anon) / 2**20, 2
        )
        row["peak_file_backed_gb"] = round(sampled.peak_file_kib / 2**20, 2)
        row["gb_per_s"] = round(row["gb"] / row["seconds"], 2)
        row["baseline_rss_gb"] = round(baseline / 2**20, 2)
        row["peak_rss_gb"] = round(peak / 2**20, 2) if peak_reset else None
        row["peak_rss_above_baseline_gb"] = (
            round((peak - baseline) / 2**20, 2) if peak_reset else None
        )
        if device.type == "cuda":
            row["gpu_peak_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            torch.cuda.empty_cache()
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- driver


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.dir)
    parts = tuple(args.parts.split(","))
    write_seconds = write_release(root, LAYOUTS[args.layout], parts)
    results = []
    for part in parts:
        child = subprocess.run(
            [sys.executable, "-m", "ops.bench.load", "--measure", part, "--dir", str(root),
             "--layout", args.layout, "--device", args.device],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if child.returncode != 0:
            raise RuntimeError(f"loading {part} failed:\n{child.stderr[-4000:]}")
        results += json.loads(child.stdout.strip().splitlines()[-1])
    device = torch.device(args.device)
    report = {
        "benchmark": "checkpoint load",
        "layout": args.layout,
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "note": "random tensors with the release's names, shapes, dtypes and file formats",
        "write_seconds": {k: round(v, 1) for k, v in write_seconds.items()},
        "results": results,
    }
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return report


def _gb(row: dict[str, Any], key: str) -> str:
    return "-" if row.get(key) is None else f"{row[key]:.2f}"


def table(report: dict[str, Any]) -> str:
    lines = [
        f"checkpoint load, layout {report['layout']}, {report['device']}",
        f"{'part':5} {'cache':5} {'beside':11} {'switch':>7} {'GB':>7} {'s':>7} {'GB/s':>6} "
        f"{'RSS peak':>9} {'above base':>10} {'anon above':>10} {'GPU peak':>9}",
    ]
    for r in report["results"]:
        line = (
            f"{r['part']:5} {r['cache']:5} {r.get('beside') or '-':11} "
            f"{r.get('switch_interval_ms', 5.0):5.1f}ms {r['gb']:7.2f} {r['seconds']:7.2f} "
            f"{r['gb_per_s']:6.2f} {_gb(r, 'peak_rss_gb'):>9} "
            f"{_gb(r, 'peak_rss_above_baseline_gb'):>10} "
            f"{_gb(r, 'peak_anon_above_baseline_gb'):>10} {_gb(r, 'gpu_peak_gb'):>9}"
        )
        if r.get("lora_merge_seconds") is not None:
            line += f"   (LoRA merge {r['lora_merge_seconds']:.2f} s of it)"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="14b")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument(
        "--dir", default="/tmp/longtake-load-bench", help="scratch space (~46 GB for 14b)"
    )
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated: dit,text,vae")
    parser.add_argument("--out", help="write the results here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--measure", choices=PARTS, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, Path(args.dir), args.layout, args.device)))
        return
    report = run(args)
    print(table(report))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
