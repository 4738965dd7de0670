"""Where two processes' renders of the same request part, call by call.

    python -m ops.bench.determinism --out bench-out/determinism.json            # 14B, 4 layers
    python -m ops.bench.determinism --preset tiny --device cpu --out x.json      # anywhere

A resumed stream continues bit for bit only if every process computes what the first one
computed. This runs `--processes` fresh processes one after another, sharing one inductor
cache directory, new for the run: the first compiles the DiT's glue, the later ones load it
from the cache, as a worker's processes on one node do (`--cold`: each process a new cache of
its own, as workers on different nodes). Each builds the engine as a worker does
(`ops.bench.tiers.build_deferred_engine`: random weights, seeded; the DiT loading beside the
open), opens a fresh stream and renders `--clips` clips while it records, in call order, a
checksum of every tensor each of the DiT's modules returns, and of every result of the compiled
glue (`pipeline.model.fused`) and of attention. The report gives each clip's frame hash per
process and the first recorded call where a later process parts from the first (its clip, the
module or function, its shape), or that none does.

Options for experiments: `--row-major` writes the residual stream row-major after the patch
embedding (`WanS2VTransformer.row_major_stream`; see docs/benchmarks.md); `--inductor NAME=VALUE`
sets a `torch._inductor.config` attribute (VALUE in JSON: `false`, `1`) in every process and
every thread that compiles.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from ops.bench.tiers import build_deferred_engine, checksum, frames_hash, make_request, sync

REPO = Path(__file__).resolve().parents[2]

GLUE = (
    "modulated_norm",
    "gated_residual",
    "rms_norm",
    "rope",
    "gated_residual_affine_norm",
    "residual_modulated_norm",
    "modulated_norm_fp8",
    "gated_residual_affine_norm_fp8",
    "residual_modulated_norm_fp8",
    "gelu_fp8",
    "quantize_rows",
)
"""The compiled glue's public functions (pipeline/model/fused.py), each recorded."""


def first_difference(first: list[dict], other: list[dict]) -> dict[str, Any] | None:
    """The first call where `other` parts from `first` (records of `Probe`): its index and both
    records; None when every call agrees and the lists are as long."""
    for i, (a, b) in enumerate(zip(first, other, strict=False)):
        if a != b:
            return {"index": i, "first": a, "other": b}
    if len(first) != len(other):
        i = min(len(first), len(other))
        return {
            "index": i,
            "first": first[i] if i < len(first) else None,
            "other": other[i] if i < len(other) else None,
        }
    return None


class Probe:
    """Checksums, in call order, of what the DiT's modules return and of the compiled glue's
    and attention's results, while `clip` is at most `last_clip`."""

    def __init__(self, dit: Any, last_clip: int):
        from pipeline.model import fused, layers, transformer

        self.records: list[dict[str, Any]] = []
        self.clip = 0
        self.last_clip = last_clip
        for name, module in dit.named_modules():
            module.register_forward_hook(self._hook(name or "dit"))
        for name in GLUE:
            setattr(fused, name, self._wrap(f"fused.{name}", getattr(fused, name)))
        for mod in (layers, transformer):
            mod.attention = self._wrap("attention", mod.attention)  # type: ignore[attr-defined]

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: Any, args: Any, out: Any) -> None:
            self.record(name, out)

        return hook

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            out = fn(*args, **kwargs)
            self.record(name, out)
            return out

        return call

    def record(self, name: str, out: Any) -> None:
        if self.clip > self.last_clip:
            return
        for i, t in enumerate(_tensors(out)):
            self.records.append(
                {
                    "clip": self.clip,
                    "name": name if i == 0 else f"{name}[{i}]",
                    "shape": list(t.shape),
                    "dtype": str(t.dtype).removeprefix("torch."),
                    "stride": list(t.stride()),
                    "checksum": checksum(t.detach()),  # summed on its device
                }
            )


def _tensors(out: Any) -> list[Any]:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    fields = getattr(out, "__dataclass_fields__", None)  # Fp8Rows and the like
    if fields:
        return [t for f in fields for t in _tensors(getattr(out, f))]
    return []


def child(args: argparse.Namespace) -> None:
    """One process: build, record, render; the records and frame hashes to args.child_out."""
    import torch

    from pipeline.model import WanS2VTransformer, fused

    settings = {}
    for setting in args.inductor:
        name, _, value = setting.partition("=")
        settings[name] = json.loads(value)
    if settings:
        fused.set_inductor_settings(settings)  # in every thread that compiles

    device = torch.device(args.device)
    started = time.perf_counter()
    gen = build_deferred_engine(args.preset, device, args.layers, None, args.precision)
    gen.components.wait_dit()
    WanS2VTransformer.row_major_stream = args.row_major  # the layout of the streams it opens
    probe = Probe(gen.components.dit, args.clips - 1)
    stream = gen.open(make_request(args.size, args.infer_frames, args.clips))
    hashes = []
    for i in range(args.clips):
        probe.clip = i
        hashes.append(frames_hash(next(stream).frames))
    sync(device)
    stream.close()
    args.child_out.write_text(
        json.dumps(
            {
                "frames_sha256": hashes,
                "records": probe.records,
                "seconds": time.perf_counter() - started,
            }
        )
    )


def keep_kernels(cache: Path, dest: Path) -> None:
    """Copy the Triton kernels' sources and their chosen launch configurations out of an
    inductor cache (the compiled binaries stay behind)."""
    import shutil

    for src in cache.rglob("*"):
        if src.is_file() and src.suffix in (".py", ".best_config"):
            target = dest / src.relative_to(cache)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)


def kernels_timed(cache: Path) -> tuple[int, int]:
    """(Triton kernel sources in an inductor cache, those compiled outside deterministic mode:
    their launch configuration may be chosen by timing)."""
    total = timed = 0
    for src in cache.rglob("*.py"):
        text = src.read_text(errors="replace")
        if "@triton.jit" not in text:
            continue
        total += 1
        timed += "'deterministic': False" in text
    return total, timed


def main(argv: list[str] | None = None) -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="liveavatar-14b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--layers", type=int, default=4, help="DiT depth (0: the preset's)")
    p.add_argument("--size", default="720*400")
    p.add_argument("--infer-frames", type=int, default=48)
    p.add_argument("--clips", type=int, default=2)
    p.add_argument("--precision", choices=("bf16", "fp8"), default="bf16")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--row-major", action="store_true", help="the residual stream row-major")
    p.add_argument(
        "--inductor", action="append", default=[], help="NAME=VALUE (JSON) of inductor's config"
    )
    p.add_argument(
        "--cold",
        action="store_true",
        help="a new inductor cache for each process: every one compiles everything",
    )
    p.add_argument(
        "--keep-kernels", type=Path, help="copy the generated kernels and their chosen configs here"
    )
    p.add_argument("--out", type=Path)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_out is not None:
        child(args)
        return
    if args.out is None:
        p.error("--out is required")
    with tempfile.TemporaryDirectory(prefix="determinism-") as tmp:
        runs = []
        argv_child = list(argv if argv is not None else sys.argv[1:])
        for i in range(args.processes):
            cache = Path(tmp) / (f"inductor-{i}" if args.cold else "inductor")
            env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache))
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
            out = Path(tmp) / f"process-{i}.json"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "ops.bench.determinism",
                    *argv_child,
                    "--child-out",
                    str(out),
                ],
                cwd=REPO,
                env=env,
                check=True,
            )
            runs.append(json.loads(out.read_text()))
            runs[-1]["kernels"], runs[-1]["kernels_outside_deterministic_mode"] = kernels_timed(
                cache
            )
            print(
                f"process {i}: {runs[-1]['seconds']:.1f} s, {len(runs[-1]['records'])} calls, "
                f"{runs[-1]['kernels_outside_deterministic_mode']} of {runs[-1]['kernels']} "
                "kernels in the cache compiled outside deterministic mode"
            )
            if args.keep_kernels is not None and (args.cold or i == args.processes - 1):
                keep_kernels(
                    cache, args.keep_kernels / f"process-{i}" if args.cold else args.keep_kernels
                )
    first = runs[0]["records"]
    report = {
        "benchmark": "determinism",
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "settings": {
            k: v for k, v in vars(args).items() if k not in ("out", "child_out", "keep_kernels")
        },
        "frames_sha256": [r["frames_sha256"] for r in runs],
        # in the cache after each process (one shared cache: the running total)
        "kernels": [r["kernels"] for r in runs],
        "kernels_outside_deterministic_mode": [
            r["kernels_outside_deterministic_mode"] for r in runs
        ],
        "calls": len(first),
        "first_difference": [first_difference(first, r["records"]) for r in runs[1:]],
    }
    for i, diff in enumerate(report["first_difference"], start=1):
        same = runs[i]["frames_sha256"] == runs[0]["frames_sha256"]
        where = (
            "none" if diff is None else f"call {diff['index']}: {diff['first']} / {diff['other']}"
        )
        print(
            f"process {i} against process 0: frames {'equal' if same else 'differ'}; first difference {where}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
