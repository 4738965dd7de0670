"""The streaming decoder's compile in a fresh process: torch.compile against a saved artefact.

    python -m ops.bench.decoder_precompile --out bench-out/decoder-precompile.json      # GPU
    python -m ops.bench.decoder_precompile --preset tiny --device cpu --size 64*64 --out x.json

A resumed worker compiles the decoder's steady graph (`pipeline.vae.decode_frame` on one latent
frame with a full cache) before its first frame, in every process, even with Inductor's cache
warm. torch's `aot_compile` (where this torch has it) saves the whole compiled function,
dynamo's tracing and guards included, and a later process loads it instead. Each mode runs in
a fresh process, in this order, on the preset's VAE with seeded random weights
(channels-last on a GPU), primed eagerly as a stream is:

  jit        torch.compile, as the pipeline does (the first run may find the cache cold);
  jit again  torch.compile with the cache the first run left;
  save       aot_compile, then the artefact saved;
  load       the artefact loaded.

Reported per mode: seconds until the compiled function exists, until its first frame is
decoded, a steady frame's time, and a hash of the frames and the cache they leave (the modes
must agree bit for bit). A torch without `aot_compile` reports why in `save` and `load`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

from pipeline import vae as vae_mod
from pipeline.model import fused

MODES = ("jit", "jit again", "save", "load")
FRAMES = 6  # compiled frames decoded after the eager prime


def random_vae(preset_name: str, device: torch.device, size: str, latent_frames: int) -> tuple:
    """The preset's VAE with seeded random weights (kernels channels-last on a GPU, the
    compiler configured as the pipeline does) and seeded latents [16, latent_frames, h, w] of
    a video of `size`: (vae, latents)."""
    from pipeline.components import build_random
    from pipeline.dit_loading import default_dtype
    from pipeline.geometry import Geometry
    from pipeline.params import check_size_key
    from pipeline.presets import get_preset
    from pipeline.weights.placement import Placement

    preset = get_preset(preset_name)
    vae = build_random(
        preset, device, default_dtype(device), placement=Placement({"vae": device})
    ).vae
    assert vae is not None
    if device.type == "cuda":
        vae_mod.use_channels_last(vae)
    fused.configure_compiler()
    width, height = check_size_key(size)
    g = Geometry(width, height, 48, preset.dit.zip_frame_buckets)
    z = torch.randn(
        16, latent_frames, g.latent_h, g.latent_w, device=device,
        generator=torch.Generator(device=device).manual_seed(0),
    )  # fmt: skip
    return vae, z


def child(mode: str, preset_name: str, device_name: str, size: str, artefact: Path) -> dict:
    """One mode, in this (fresh) process."""
    started = time.perf_counter()
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    vae, z = random_vae(preset_name, device, size, 2 + FRAMES)
    primed = vae_mod.StreamingDecoder(vae, channels_last=cuda, compiled=False)
    primed.decode(z[:, :2])  # eager, as a stream's prime: the cache of a steady frame
    param = next(vae.parameters())
    x = vae.post_quant_conv(vae_mod.denormalize_latents(vae, z.unsqueeze(0)).to(param.dtype))
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    frames = [x[:, :, i : i + 1] for i in range(2, 2 + FRAMES)]

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    module = vae_mod.FrameDecoder(vae.decoder)
    cache = [vae_mod._canonical(e, cuda) for e in primed._cache]
    t0 = time.perf_counter()
    try:
        fn = _compiled(mode, module, vae_mod._canonical(frames[0], cuda), cache, artefact)
    except (AttributeError, NotImplementedError, RuntimeError) as exc:
        return {"mode": mode, "unavailable": f"{type(exc).__name__}: {exc}"[:300]}
    ready_s = time.perf_counter() - t0
    out, first_s = [], 0.0
    for i, frame in enumerate(frames):
        cache = [vae_mod._canonical(e, cuda) for e in cache]
        out.append(fn(module, vae_mod._canonical(frame, cuda), cache))
        if i == 0:
            sync()
            first_s = time.perf_counter() - t0
    sync()
    t1 = time.perf_counter()
    for _ in range(3):
        fn(
            module,
            vae_mod._canonical(frames[-1], cuda),
            [vae_mod._canonical(e, cuda) for e in cache],
        )
    sync()
    steady_s = (time.perf_counter() - t1) / 3
    digest = hashlib.sha256()
    for t in [*out, *(e for e in cache if isinstance(e, torch.Tensor))]:
        digest.update(t.float().cpu().numpy().tobytes())
    return {
        "mode": mode,
        "ready_s": round(ready_s, 3),
        "first_frame_s": round(first_s, 3),
        "steady_frame_s": round(steady_s, 4),
        "sha256": digest.hexdigest(),
        "process_s": round(time.perf_counter() - started, 2),
    }


def _compiled(mode: str, module: Any, frame: Any, cache: list, artefact: Path) -> Any:
    if mode in ("jit", "jit again"):
        return fused.compile_static(vae_mod.call_frame_decoder, "inductor")  # as the pipeline
    if mode == "save":
        # off by default before torch 2.12 (the compiled function then has no aot_compile)
        if hasattr(torch._dynamo.config, "enable_aot_compile"):
            torch._dynamo.config.enable_aot_compile = True
        fn = fused.compile_static(vae_mod.call_frame_decoder, "inductor").aot_compile(
            ((module, frame, list(cache)), {})
        )
        fn.save_compiled_function(str(artefact))
        return fn
    if not artefact.exists():
        raise RuntimeError("no artefact: the save failed")
    with open(artefact, "rb") as f:
        return torch.compiler.load_compiled_function(
            f, f_globals=vae_mod.call_frame_decoder.__globals__
        )


def table(report: dict[str, Any]) -> str:
    lines = [
        f"decoder precompile, {report['preset']} at {report['size']}, {report['device']}, "
        f"torch {report['torch']}",
        f"{'mode':10} {'ready s':>8} {'1st frame s':>12} {'steady s':>9} {'process s':>10}  frames",
    ]
    want = next((r["sha256"] for r in report["modes"] if "sha256" in r), None)
    for r in report["modes"]:
        if "unavailable" in r:
            lines.append(f"{r['mode']:10} unavailable: {r['unavailable']}")
            continue
        same = "equal" if r["sha256"] == want else "DIFFER"
        lines.append(
            f"{r['mode']:10} {r['ready_s']:8.2f} {r['first_frame_s']:12.2f} "
            f"{r['steady_frame_s']:9.4f} {r['process_s']:10.1f}  {same}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="liveavatar-14b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", default="720*400")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--artefact", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        result = child(a.child, a.preset, a.device, a.size, a.artefact)
        print(json.dumps(result), flush=True)
        return
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        artefact = Path(scratch) / "decoder.aot"
        for mode in MODES:
            done = subprocess.run(
                [sys.executable, "-m", "ops.bench.decoder_precompile", "--child", mode,
                 "--preset", a.preset, "--device", a.device, "--size", a.size,
                 "--artefact", str(artefact), "--out", str(a.out)],
                capture_output=True, text=True, check=False, env=os.environ.copy(),
            )  # fmt: skip
            last = done.stdout.strip().splitlines()[-1:] if done.returncode == 0 else []
            rows.append(
                json.loads(last[0])
                if last
                else {"mode": mode, "unavailable": f"exit {done.returncode}: {done.stderr[-300:]}"}
            )
    report = {
        "benchmark": "decoder precompile",
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name(0)
        if a.device.startswith("cuda")
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "preset": a.preset,
        "size": a.size,
        "modes": rows,
    }
    print(table(report))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
