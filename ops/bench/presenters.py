"""Presenter cache benchmark: how long a stream takes to open, cold and for a presenter seen
before, on one device; and whether the frames are the same.

    python -m ops.bench.presenters --device cuda --out ops/bench/results/presenters-h200.json
    python -m ops.bench.presenters --preset tiny --device cpu --out /tmp/presenters.json  # dry run

The 14B architecture (`--preset liveavatar-14b`, the default) is built with random weights:
open times do not depend on weight values. One request (`--size`, default 720*400, 4 steps,
`--clips` clips, default 1) is opened five times on one generator:

  cold (first)   no cache, the process's first stream: its time includes one-off work
                 (kernel compilation, the text encoder's first visit to the device)
  cold           no cache, everything warm: the open a new presenter costs
  cold + store   the same, with a presenter cache: computed, then stored (a miss)
  cached (device) the presenter from the cache's device tier (the GPU)
  cached (host)  the presenter from the host tier (page-locked host memory), copied back

Each open is timed to the moment the stream can render (device synchronised), then its clips
are rendered and timed; every open's frames are compared bit for bit with the warm cold
open's. Also reported: the cold open's parts measured alone (the prompt's text encoding, the
portrait's VAE encoding) and the size of a cache entry by part.

Prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ops.bench.generate import request as bench_request
from ops.bench.report import save_report
from pipeline import Generator, RenderRequest
from pipeline.inputs import fit_image, load_image
from pipeline.presenters import PresenterCache
from pipeline.stream import portrait_latents
from pipeline.text import encode_prompt

T0 = time.perf_counter()
GB = 1e9


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def open_and_render(
    gen: Generator, req: RenderRequest, device: torch.device, namespace: str | None
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Open a stream (timed until it can render), render its clips (timed each)."""
    sync(device)
    t = time.perf_counter()
    stream = gen.open(req, namespace=namespace)
    sync(device)
    open_s = time.perf_counter() - t
    clip_s, frames = [], []
    for _ in range(stream.num_clips):
        t = time.perf_counter()
        clip = next(stream)
        clip_s.append(time.perf_counter() - t)
        frames.append(clip.frames)
    result = {
        "open_s": open_s,
        "clip_s": clip_s,
        "presenter_cached": stream.presenter_cached,
    }
    stream.close()
    return result, frames


def same_frames(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def entry_parts(cache: PresenterCache) -> dict[str, int]:
    """Bytes of the (one) cache entry by part: text, motion, sink, decoder."""
    (key,) = cache.keys()
    entry = cache.get(key)
    assert entry is not None
    parts: dict[str, int] = {}
    for name, t in entry.tensors.items():
        part = name.split(".")[0]
        parts[part] = parts.get(part, 0) + t.numel() * t.element_size()
    return parts


def cold_parts(gen: Generator, req: RenderRequest, device: torch.device) -> dict[str, float]:
    """The slow parts of a cold open, each alone (warm): text and portrait encoding."""
    comps = gen.components
    assert comps.text_encoder is not None and comps.tokenizer is not None
    sync(device)
    t = time.perf_counter()
    encode_prompt(
        comps.text_encoder,
        comps.tokenizer,
        req.prompt,
        gen.preset.dit.text_len,
        device=comps.text_device,
    )
    sync(device)
    text_s = time.perf_counter() - t
    assert isinstance(req.image, bytes)
    frame = fit_image(load_image(req.image), req.size)
    t = time.perf_counter()
    portrait_latents(comps.vae, frame, gen.preset.stream.motion_frames)
    sync(device)
    return {"text_encode_s": text_s, "portrait_encode_s": time.perf_counter() - t}


def table(r: dict[str, Any]) -> str:
    lines = [
        f"presenters: {r['preset']} ({r['weights']} weights) at {r['size']}, {r['steps']} steps, "
        f"{r['device']}, {r['date']}",
        f"{'open':<16}{'open s':>9}{'1st clip s':>12}{'from cache':>12}{'same frames':>13}",
    ]
    for name, o in r["opens"].items():
        lines.append(
            f"{name:<16}{o['open_s']:>9.3f}{o['clip_s'][0]:>12.3f}"
            f"{'yes' if o['presenter_cached'] else 'no':>12}"
            f"{'yes' if o['same_frames_as_cold'] else 'NO':>13}"
        )
    parts = ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in r["entry_bytes"].items())
    lines.append(f"cache entry: {r['entry_total_bytes'] / 1e6:.1f} MB ({parts})")
    c = r["cold_parts"]
    lines.append(
        f"cold open parts alone: text encode {c['text_encode_s']:.3f} s, "
        f"portrait encode {c['portrait_encode_s']:.3f} s"
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="liveavatar-14b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", default=None, help="default 720*400 (tiny: 64*64)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--clips", type=int, default=1, help="clips rendered after each open")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--dit-layers", type=int, default=None, help="a reduced depth (smoke runs)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads of torch (0: its default)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    size = args.size or ("64*64" if args.preset == "tiny" else "720*400")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    log(f"device {name or 'cpu'}; torch {torch.__version__}")

    log(f"building {args.preset} (random weights) on {device}")
    t = time.perf_counter()
    overrides = {"num_layers": args.dit_layers} if args.dit_layers else None
    gen = Generator.from_preset(
        args.preset,
        device=device,
        random_weights=True,
        dit_overrides=overrides,
        precision=args.precision,
    )
    sync(device)
    report: dict[str, Any] = {
        "benchmark": "presenters",
        "date": date.today().isoformat(),
        "device": name or "cpu",
        "torch": torch.__version__,
        "preset": args.preset,
        "weights": "random",
        "dit_layers": gen.preset.dit.num_layers,
        "precision": args.precision,
        "size": size,
        "steps": args.steps,
        "clips": args.clips,
        "build_s": time.perf_counter() - t,
        "opens": {},
    }

    def save() -> None:
        save_report(args.out, report, T0)

    req = bench_request(size, args.clips, args.steps)
    opens: dict[str, tuple[dict[str, Any], list[np.ndarray]]] = {}

    def run(label: str, cache: PresenterCache | None, namespace: str | None) -> None:
        gen.presenter_cache = cache
        result, frames = open_and_render(gen, req, device, namespace)
        opens[label] = (result, frames)
        log(f"{label}: open {result['open_s']:.3f} s, clips {result['clip_s']}")

    run("cold (first)", None, None)
    run("cold", None, None)
    device_tier = PresenterCache(device_bytes=int(64 * GB), host_bytes=0)
    run("cold + store", device_tier, "bench")
    run("cached (device)", device_tier, "bench")
    report["entry_bytes"] = entry_parts(device_tier)
    report["entry_total_bytes"] = sum(report["entry_bytes"].values())
    del device_tier
    host_tier = PresenterCache(device_bytes=0, host_bytes=int(64 * GB))
    gen.presenter_cache = host_tier
    gen.open(req, namespace="bench").close()  # stored straight into the host tier
    run("cached (host)", host_tier, "bench")
    gen.presenter_cache = None
    del host_tier

    reference = opens["cold"][1]
    for label, (result, frames) in opens.items():
        result["same_frames_as_cold"] = same_frames(frames, reference)
        report["opens"][label] = result
    save()
    report["cold_parts"] = cold_parts(gen, req, device)
    save()
    print(table(report))


if __name__ == "__main__":
    main()
