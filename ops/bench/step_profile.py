"""Where a steady clip's GPU time goes, bf16 and fp8 side by side: the kernels of one clip by
kind, and the DiT's products and attention alone at the stream's shapes.

    python -m ops.bench.step_profile --out bench-out/step-profile.json        # 14B, 720x400
    python -m ops.bench.step_profile --preset tiny --device cpu --quick --out x.json  # dry run

Measures, in one run:
  1. the DiT's linear shapes of one block ([tokens, in] x [in, out] for the attention
     projections and the FFN) in bf16 (`F.linear`) and fp8 (`pipeline.model.fp8.linear`,
     inputs already quantised, with and without the bias), and the self-attention of a block
     over a full cache, the text cross-attention, and SDPA's kernels one by one: median
     milliseconds and TFLOP/s (CUDA events, 20 repeats after 3);
  2. per precision, the 14B architecture (random weights) at `--size`: a stream warmed up for
     `--warm-clips` clips, then one clip under `torch.profiler`, its kernels' device time
     summed by kind (matmul, attention, triton = the compiled elementwise glue, conv = the
     VAE, copy, other) and the 40 costliest kernels. The fp8 model is the bf16 one quantised
     in place, so the two render with the same weights.

A clip is blocks_per_clip blocks of `--steps` DiT steps and one decode each: per-step figures
are the clip's over blocks_per_clip * steps. Prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import collections
import platform
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ops.bench.generate import (
    block_velocities,
    e4m3_velocities,
    refresh_text_kv,
    relative_errors,
    request,
)
from ops.bench.options import add_model_options
from ops.bench.report import finish, save_report
from ops.bench.timing import time_call
from pipeline import Generator
from pipeline.geometry import Geometry
from pipeline.model import attention as attention_mod
from pipeline.model import fp8, fp8_rows, fused, layers
from pipeline.model.attention import attention
from pipeline.stream import prepare_inputs

T0 = time.perf_counter()
KINDS = ("matmul", "attention", "triton", "conv", "copy", "other")


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def kind_of(kernel: str) -> str:
    """The kind of a GPU kernel (or, on a CPU, an operator) by its name: cuBLAS/cuBLASLt/
    CUTLASS products, cuDNN and flash attention, the DiT's Triton kernels from torch.compile,
    convolutions (the VAE decoder's, with its compiled padding and upsampling), copies."""
    n = kernel.lower()
    vae = ("conv", "implicit_gemm", "nchwtonhwc", "constant_pad_nd", "_unsafe_index")
    if any(s in n for s in vae):
        return "conv"
    if any(s in n for s in ("fmha", "flash", "attention", "sdpa")):
        return "attention"
    matmuls = ("gemm", "nvjet", "cutlass", "xmma", "scaled_mm", "::linear", "addmm", "::mm")
    if any(s in n for s in matmuls):
        return "matmul"
    if n.startswith("triton") or n.endswith("rows_fp8"):  # (ours: pipeline/model/fp8_rows.py)
        return "triton"
    if any(s in n for s in ("copy", "memcpy", "memset")):
        return "copy"
    return "other"


def median_ms(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """`time_call` (ops/bench/generate.py) after 3 warm-up calls, in milliseconds."""
    return time_call(fn, device, 3, repeats) * 1e3


def bench_shapes(gen: Generator, device: torch.device, tokens: int, keys: int, reps: int) -> dict:
    """Part 1: the block's products and attentions alone."""
    cfg = gen.preset.dit
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    d, ffn, heads = cfg.dim, cfg.ffn_dim, cfg.num_heads
    gen_ = torch.Generator(device=device).manual_seed(0)
    out: dict[str, Any] = {"linears": {}, "attention": {}}
    for k, n in ((d, d), (d, ffn), (ffn, d)):
        x = torch.randn(tokens, k, device=device, dtype=dtype, generator=gen_)
        w = torch.randn(n, k, device=device, dtype=dtype, generator=gen_)
        b = torch.randn(n, device=device, dtype=dtype, generator=gen_)
        rows, wq = fp8.Fp8Rows(*fp8.quantize_rows(x)), fp8.Fp8Weight.quantize(w)
        flop = 2 * tokens * k * n
        figures = {
            "bf16_ms": median_ms(lambda x=x, w=w, b=b: F.linear(x, w, b), device, reps),
            "fp8_ms": median_ms(lambda r=rows, q=wq, b=b: fp8.linear(r, q, b, dtype), device, reps),
            "fp8_no_bias_ms": median_ms(
                lambda r=rows, q=wq: fp8.linear(r, q, None, dtype), device, reps
            ),
        }
        figures["bf16_tflops"] = flop / figures["bf16_ms"] / 1e9
        figures["fp8_tflops"] = flop / figures["fp8_ms"] / 1e9
        out["linears"][f"{tokens}x{k}->{n}"] = figures
        log(
            f"linear {tokens}x{k}->{n}: bf16 {figures['bf16_ms']:.3f} ms "
            f"({figures['bf16_tflops']:.0f} TF), fp8 {figures['fp8_ms']:.3f} ms "
            f"({figures['fp8_tflops']:.0f} TF)"
        )
    hd = d // heads
    cache = torch.randn(2, keys, heads, hd, device=device, dtype=dtype, generator=gen_)
    q = torch.randn(1, tokens, heads, hd, device=device, dtype=dtype, generator=gen_)
    k, v = cache[0].unsqueeze(0), cache[1].unsqueeze(0)  # views of the cache, as the model reads
    flop = 4 * tokens * keys * d
    ms = median_ms(lambda: attention(q, k, v), device, reps)
    out["attention"]["self"] = {"ms": ms, "tflops": flop / ms / 1e9, "keys": keys}
    log(
        f"self-attention, {tokens} queries over {keys} keys: {ms:.3f} ms ({flop / ms / 1e9:.0f} TF)"
    )
    text = torch.randn(1, cfg.text_len, heads, hd, device=device, dtype=dtype, generator=gen_)
    out["attention"]["text_ms"] = median_ms(lambda: attention(q, text, text), device, reps)
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        for name, backend in (
            ("cudnn", SDPBackend.CUDNN_ATTENTION),
            ("flash", SDPBackend.FLASH_ATTENTION),
            ("efficient", SDPBackend.EFFICIENT_ATTENTION),
        ):
            try:
                with sdpa_kernel([backend]):
                    ms = median_ms(lambda: F.scaled_dot_product_attention(qt, kt, vt), device, reps)
                out["attention"][f"sdpa_{name}"] = {"ms": ms, "tflops": flop / ms / 1e9}
            except RuntimeError as exc:
                out["attention"][f"sdpa_{name}"] = {"error": str(exc)[:200]}
        out["fp8_attention_in_sdpa"] = hasattr(
            torch.ops.aten, "_scaled_dot_product_attention_quantized"
        )
    return out


def profile_clip(gen: Generator, args: argparse.Namespace, device: torch.device) -> dict:
    """Part 2: one steady clip of the stream under the profiler."""
    from torch.profiler import ProfilerActivity, profile

    stream = gen.open(request(args.size, args.warm_clips + 2, args.steps))
    for i in range(args.warm_clips):
        t = time.perf_counter()
        next(stream)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        log(f"[{gen.precision}] warm-up clip {i}: {time.perf_counter() - t:.2f} s")
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        t = time.perf_counter()
        next(stream)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - t
    g = stream.geometry
    stream.close()
    by_kind: collections.Counter[str] = collections.Counter()
    launches: collections.Counter[str] = collections.Counter()
    by_kernel: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    for ev in prof.events():
        on_device = ev.device_type == torch.autograd.DeviceType.CUDA
        if device.type == "cuda" and not on_device:
            continue
        if device.type != "cuda" and (ev.cpu_parent is not None or ev.name.startswith("[")):
            continue  # CPU: top-level operators only, so that nothing is counted twice
        us = ev.device_time_total if on_device else ev.cpu_time_total
        kind = kind_of(ev.name)
        by_kind[kind] += us
        launches[kind] += 1
        by_kernel[ev.name[:120]] += us
        calls[ev.name[:120]] += 1
    steps = g.blocks_per_clip * args.steps
    return {
        "precision": gen.precision,
        "clip_wall_s": wall,
        "frames": g.blocks_per_clip * g.video_frames_per_block,
        "fps": g.blocks_per_clip * g.video_frames_per_block / wall,
        "steps_in_clip": steps,
        "device_s": sum(by_kind.values()) / 1e6,
        "by_kind_s": {k: by_kind[k] / 1e6 for k in KINDS},
        "launches": {k: launches[k] for k in KINDS},
        "per_step_ms": {
            k: by_kind[k] / 1e3 / steps for k in ("matmul", "attention", "triton", "copy", "other")
        },
        "top_kernels": [
            {"name": name, "ms": us / 1e3, "calls": calls[name]}
            for name, us in by_kernel.most_common(40)
        ],
    }


def velocity_errors(gen: Generator, args: argparse.Namespace) -> dict[str, list[float]]:
    """What each fp8 form costs against bf16 on the same inputs: the velocity of each step of
    one steady block (after two clips) in bf16, then with the DiT quantised in place, through
    fp8_rows' kernels (the default), and as asked through inductor's FP8 steps (--fp8-rows) or
    with attention in FP8 as well (--fp8-attention: self-attention over the caches quantised
    to e4m3, as at precision fp8-attention, and every attention through the per-call `fp8`
    backend). Leaves the DiT quantised."""
    stream = gen.open(request(args.size, 3, args.steps))
    next(stream)
    next(stream)
    block = stream.next_clip * stream.geometry.blocks_per_clip
    xs, v16 = block_velocities(stream, block)
    gen.components.dit.to_fp8()
    refresh_text_kv(gen, stream)
    _, v8_rows = block_velocities(stream, block, xs)
    errors = {"fp8": relative_errors(v8_rows, v16)}
    if args.fp8_rows:
        fp8_rows.set_enabled(False)
        try:
            _, v8 = block_velocities(stream, block, xs)
        finally:
            fp8_rows.set_enabled(True)
        errors["fp8+inductor-rows"] = relative_errors(v8, v16)
        errors["fp8 against fp8+inductor-rows"] = relative_errors(v8_rows, v8)
    if args.fp8_attention:
        errors["fp8-attention"] = relative_errors(e4m3_velocities(stream, block, xs), v16)
        attention_mod.set_backend("fp8")
        try:
            _, v8_attention = block_velocities(stream, block, xs)
        finally:
            attention_mod.set_backend("auto")
        errors["fp8+fp8-backend-attention"] = relative_errors(v8_attention, v16)
    stream.close()
    return errors


def table(report: dict) -> str:
    rows: list[tuple[str, str]] = [("device", report["device"])]
    for name, f in report["shapes"]["linears"].items():
        rows.append(
            (
                f"linear {name}: bf16 / fp8",
                f"{f['bf16_ms']:.3f} / {f['fp8_ms']:.3f} ms "
                f"({f['bf16_tflops']:.0f} / {f['fp8_tflops']:.0f} TFLOP/s)",
            )
        )
    att = report["shapes"]["attention"]["self"]
    rows.append(
        (f"self-attention over {att['keys']} keys", f"{att['ms']:.3f} ms ({att['tflops']:.0f} TF)")
    )
    clips = report["clips"]
    names = list(clips)
    rows.append(("", " / ".join(names)))
    rows.append(("clip wall", " / ".join(f"{clips[n]['clip_wall_s']:.2f} s" for n in names)))
    rows.append(("frames per second", " / ".join(f"{clips[n]['fps']:.2f}" for n in names)))
    for kind in KINDS:
        rows.append(
            (
                f"  {kind} (s per clip, launches)",
                " / ".join(
                    f"{clips[n]['by_kind_s'][kind]:.3f} ({clips[n]['launches'][kind]})"
                    for n in names
                ),
            )
        )
    for name, errors in report.get("velocity_rel_error", {}).items():
        rows.append((f"velocity error, {name}", ", ".join(f"{e:.2%}" for e in errors)))
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(p)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--precisions", default="bf16,fp8", help="bf16 first: fp8 quantises it")
    p.add_argument(
        "--int8-attention",
        action="store_true",
        help="profile the last precision again with attention's logits in int8",
    )
    p.add_argument(
        "--fp8-attention",
        action="store_true",
        help="profile the same weights again at precision fp8-attention (self-attention's "
        "caches in e4m3, cuDNN's FP8 kernel); with bf16,fp8: and the velocity's error against "
        "bf16 with every attention through pipeline.model.attention's 'fp8' backend (scales "
        "per call, on the bf16 stream's caches: an estimate of the precision's)",
    )
    p.add_argument(
        "--persistent-rows",
        action="store_true",
        help="profile the last precision again with rows of up to 16 384 elements reduced in "
        "one pass (pipeline.model.fused.set_persistent_rows)",
    )
    p.add_argument(
        "--fp8-rows",
        action="store_true",
        help="profile the last precision again with the FP8 steps compiled by inductor "
        "instead of pipeline/model/fp8_rows.py's kernels (with bf16,fp8: and compare the "
        "velocities of one block's steps, bf16 against both fp8 forms)",
    )
    p.add_argument(
        "--row-major",
        action="store_true",
        help="profile the last precision again with the residual stream in the other layout "
        "(WanS2VTransformer.row_major_stream switched over; with --fused-cache-writes, that "
        "layout's clip is profiled again with them)",
    )
    p.add_argument(
        "--fused-cache-writes",
        action="store_true",
        help="profile the last precision again with self-attention's norms, rotations and "
        "cache writes in one compiled graph (pipeline.model.layers.set_fused_cache_writes)",
    )
    p.add_argument("--warm-clips", type=int, default=3, help="clips before the profiled one")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="tiny counts for a dry run")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if args.quick:
        args.warm_clips, args.repeats = 1, 2
    precisions = [v for v in args.precisions.split(",") if v]
    if precisions not in (["bf16"], ["fp8"], ["bf16", "fp8"]):
        p.error("--precisions: bf16, fp8 or bf16,fp8")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    log(f"device {name or 'cpu'}; torch {torch.__version__}")
    gen = Generator.from_preset(
        args.preset, device=device, random_weights=True, precision=precisions[0]
    )
    # the stream's geometry, from its inputs as the stream makes it (no model work)
    req = request(args.size, 1, args.steps)
    inputs = prepare_inputs(req, gen.preset)
    geometry = Geometry(
        inputs.width, inputs.height, req.infer_frames, gen.preset.dit.zip_frame_buckets
    )
    report: dict[str, Any] = {
        "benchmark": "step_profile",
        "date": date.today().isoformat(),
        "device": name or "cpu",
        "torch": torch.__version__,
        "preset": args.preset,
        "weights": "random",
        "size": args.size,
        "steps": args.steps,
        "block_tokens": geometry.block_tokens,
        "cache_tokens": geometry.cache_tokens,
        "shapes": bench_shapes(
            gen, device, geometry.block_tokens, geometry.cache_tokens, args.repeats
        ),
        "clips": {},
    }
    for precision in precisions:
        if precision == "fp8" and gen.precision != "fp8":
            if args.fp8_rows or args.fp8_attention:  # quantises the DiT
                report["velocity_rel_error"] = velocity_errors(gen, args)
                log(f"velocity relative error per step: {report['velocity_rel_error']}")
            else:
                gen.components.dit.to_fp8()  # the same weights, quantised in place
        report["clips"][precision] = clip = profile_clip(gen, args, device)
        log(
            f"[{precision}] clip {clip['clip_wall_s']:.2f} s, device {clip['device_s']:.2f} s: "
            + ", ".join(f"{k} {v:.3f}" for k, v in clip["by_kind_s"].items())
        )
        save_report(args.out, report, T0)

    def again(variant: str, undo: Callable[[], object]) -> None:
        """The last precision's clip profiled again, with a variant switched on (`undo`
        switches it off after)."""
        label = f"{precisions[-1]}+{variant}"
        try:
            report["clips"][label] = clip = profile_clip(gen, args, device)
        finally:
            undo()
        log(f"[{label}] clip {clip['clip_wall_s']:.2f} s, device {clip['device_s']:.2f} s")
        save_report(args.out, report, T0)

    if args.persistent_rows:
        report["persistent_rows_applied"] = fused.set_persistent_rows(True)
        if report["persistent_rows_applied"]:
            again("persistent-rows", lambda: fused.set_persistent_rows(False))
        else:
            log("this torch cannot change inductor's reduction heuristics: no persistent rows")
    if args.fp8_rows:  # the default: the same clip with inductor's steps instead
        fp8_rows.set_enabled(False)
        again("inductor-rows", lambda: fp8_rows.set_enabled(True))
    if args.row_major:  # the layout of the streams opened from now on
        from pipeline.model import WanS2VTransformer

        default = WanS2VTransformer.row_major_stream
        WanS2VTransformer.row_major_stream = not default

        def back() -> None:
            WanS2VTransformer.row_major_stream = default

        label = "row-major" if not default else "conv-layout"
        if args.fused_cache_writes:  # the fused writes in this layout too, before switching back
            again(label, lambda: None)
            layers.set_fused_cache_writes(True)
            again(
                f"{label}+fused-cache-writes",
                lambda: (layers.set_fused_cache_writes(False), back()),
            )
        else:
            again(label, back)
    if args.fused_cache_writes:
        layers.set_fused_cache_writes(True)
        again("fused-cache-writes", lambda: layers.set_fused_cache_writes(False))
    if args.int8_attention:
        attention_mod.set_backend("int8")
        again("int8-attention", lambda: attention_mod.set_backend("auto"))
    if args.fp8_attention:  # the same weights at precision fp8-attention: e4m3 caches
        dit = gen.components.dit
        dit.fp8_attention = True
        report["clips"]["fp8-attention"] = clip = profile_clip(gen, args, device)
        dit.fp8_attention = False
        log(f"[fp8-attention] clip {clip['clip_wall_s']:.2f} s, device {clip['device_s']:.2f} s")
    finish(args.out, report, T0, table)


if __name__ == "__main__":
    main()
