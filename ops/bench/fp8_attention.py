"""FP8 attention against bf16 at the DiT's self-attention shapes: speed and error.

    python -m ops.bench.fp8_attention --out bench-out/fp8-attention.json        # H200, 720x400
    python -m ops.bench.fp8_attention --device cpu --quick --out x.json          # dry run

One block's self-attention at one layer of the 14B DiT in a steady stream: queries of one block
(3 latent frames), keys and values of the whole cache (the sink and four blocks), 40 heads of
128. Inputs: queries and keys of unit RMS with outliers (as after the RMS norms and RoPE),
values of a linear layer's scale, in bf16. For each way of computing it:

  bf16          torch SDPA (cuDNN on Hopper), as the DiT runs today;
  fp8 kernel    cuDNN's fused FP8 SDPA (pipeline/model/fp8_attention.py) on inputs already in
                e4m3 (what a cache kept in FP8 costs), over chunks of at most CHUNK_KEYS keys
                merged into the o-projection's per-token rows, as the DiT runs it; and in one
                pass over all the keys (where the sums' lost bits show), with the mean output
                for values all 1 (exact: 1) of each; the kernel alone; the merge alone, as a
                Triton kernel (at three widths) and compiled by inductor;
  fp8 + quant   the same with Q, K and V quantised per call (amax, scale, cast) and O
                dequantised: what it costs on today's bf16 cache;
  quantise      the quantisation of Q, K and V alone.

it reports the median time (CUDA events), TFLOP/s of the two products, the relative error of
the output against float32 attention, and the projection to a 40-layer step. On the CPU (a dry
run) the fp8 path is `fp8_attention.emulate`, and times mean nothing.
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ops.bench.options import add_model_options
from ops.bench.report import finish
from ops.bench.timing import time_call
from pipeline.geometry import Geometry
from pipeline.model import attention as attention_mod
from pipeline.model import fp8_attention as fa
from pipeline.model import fp8_rows, fused
from pipeline.model import int8_attention as ia
from pipeline.params import check_size_key
from pipeline.presets import get_preset

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def inputs(lq: int, lk: int, heads: int, dim: int, device: torch.device) -> list[torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, lq, heads, dim, generator=g, device=device)
    k = torch.randn(1, lk, heads, dim, generator=g, device=device)
    k[0, :: max(lk // 97, 1), :, 0] *= 8  # a few outliers set the scale, as RoPE'd keys have
    v = torch.randn(1, lk, heads, dim, generator=g, device=device) * 0.5
    return [t.to(torch.bfloat16) for t in (q, k, v)]


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """float32 attention, head by head (bounded memory)."""
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    for h in range(q.shape[2]):
        qh, kh, vh = (t[:, :, h : h + 1].float().transpose(1, 2) for t in (q, k, v))
        with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
            out[:, :, h : h + 1] = F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2)
    return out


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want).norm() / want.norm())


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    preset = get_preset(args.preset)
    width, height = check_size_key(args.size)
    g = Geometry(width, height, args.infer_frames, preset.dit.zip_frame_buckets)
    heads, dim, layers = preset.dit.num_heads, preset.dit.head_dim, preset.dit.num_layers
    lq, lk = g.block_tokens, g.cache_tokens
    if args.quick:
        lq, lk, heads = min(lq, 64), min(lk, 256), min(heads, 2)
    q, k, v = inputs(lq, lk, heads, dim, device)
    flops = 4 * lq * lk * heads * dim  # the two products
    want = reference(q, k, v)
    warmup, repeats = (1, 2) if args.quick else (5, args.repeats)
    rows: dict[str, dict[str, Any]] = {}
    mass: dict[str, float] = {}

    def measure(name: str, fn: Any, out: torch.Tensor | None, count_flops: bool = True) -> float:
        seconds = time_call(fn, device, warmup, repeats)
        rows[name] = {
            "seconds": seconds,
            "tflop_s": flops / seconds / 1e12 if count_flops else None,
            "rel_error_vs_fp32": None if out is None else rel_error(out, want),
            "per_step_s": seconds * layers,
        }
        log(
            f"{name}: {seconds * 1e3:.3f} ms"
            + (f", error {rows[name]['rel_error_vs_fp32']:.4f}" if out is not None else "")
        )
        return seconds

    measure("bf16", lambda: attention_mod.attention(q, k, v), attention_mod.attention(q, k, v))
    failure = None
    if fa.available(device):
        kernel_info = "cudnn"
        try:
            attend = fa.CudnnFp8Attention(device)
            (q8, mq), (k8, mk), (v8, mv) = (fa.quantize_per_tensor(t) for t in (q, k, v))
            factors = fa.factors_of(mq, mk, mv)
            # values all 1: the output must be 1; a sum over too many keys falls short
            ones = torch.ones_like(v8, dtype=torch.float32).to(torch.float8_e4m3fn)
            f1 = fa.factors_of(mq, mk, torch.ones((), device=device))
            for name, most in (("fp8_kernel_one_pass", lk), ("fp8_kernel", fa.CHUNK_KEYS)):

                def kernel(most: int = most) -> torch.Tensor:
                    out, scales = fused.fp8_attention_rows(
                        *fa.partials(q8, k8, v8, factors, most), factors
                    )
                    return (out.float() * scales).view(q.shape)

                measure(name, kernel, kernel())
                out, scales = fa.merge_rows(*fa.partials(q8, k8, ones, f1, most), f1)
                mass[name] = float((out.float() * scales).mean())
                log(f"{name}: values all 1 give {mass[name]:.4f}")
            measure("fp8_kernel_alone", lambda: fa.partials(q8, k8, v8, factors), None)
            o8, stats = fa.partials(q8, k8, v8, factors)  # the chunks' merge alone
            merge = lambda: fused.fp8_attention_rows(o8, stats, factors)  # noqa: E731
            measure("fp8_merge_of_the_chunks", merge, None, count_flops=False)
            for warps in (4, 16):  # the Triton kernel at other widths than its default
                fn = lambda w=warps: fp8_rows.merge_fp8(o8, stats, factors, w)  # noqa: E731
                measure(f"fp8_merge_triton_{warps}_warps", fn, None, count_flops=False)
            fp8_rows.set_enabled(False)  # the same merge compiled by inductor
            try:
                measure("fp8_merge_compiled", merge, None, count_flops=False)
            finally:
                fp8_rows.set_enabled(True)
            measure("fp8_with_quantisation", lambda: attend(q, k, v), attend(q, k, v))
        except Exception as exc:  # noqa: BLE001 - an unsupported plan is a result too
            failure = f"{type(exc).__name__}: {exc}"
            log(f"cuDNN FP8 attention failed: {failure}")
    else:
        emulated = fa.emulate(q, k, v)
        measure("fp8_emulated", lambda: fa.emulate(q, k, v), emulated)
        kernel_info = "emulated (no Hopper GPU with the cuDNN frontend here)"
    int8_rows(q, k, v, device, measure)
    # where the FP8 path's error comes from: each rounding alone, then all but the output's
    # (an output kept in bf16), emulated in float32 on the same inputs
    parts = {name: frozenset({name}) for name in ("q", "k", "v", "p", "o")}
    parts["all_but_o"] = fa.ROUNDINGS - {"o"}
    parts["all"] = fa.ROUNDINGS
    error_parts = {
        name: rel_error(fa.emulate(q, k, v, rounded=which), want) for name, which in parts.items()
    }
    log("emulated error by rounding: " + ", ".join(f"{n} {e:.4f}" for n, e in error_parts.items()))
    measure(
        "quantise_qkv",
        lambda: [fa.quantize_per_tensor(t) for t in (q, k, v)],
        None,
        count_flops=False,
    )
    return {
        "benchmark": "fp8_attention",
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "fp8_path": kernel_info,
        "fp8_failure": failure,
        "preset": args.preset,
        "size": args.size,
        "query_tokens": lq,
        "key_tokens": lk,
        "heads": heads,
        "head_dim": dim,
        "layers": layers,
        "rows": rows,
        "rel_error_by_rounding": error_parts,
        "chunk_keys": fa.CHUNK_KEYS,
        "output_with_values_all_one": mass,
    }


INT8_TILES = ((128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3))
"""Tile configurations of the int8 kernel tried: (query rows, key columns, warps, stages)."""


def int8_rows(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, device: torch.device, measure: Any
) -> None:
    """The int8-logits kernel (pipeline/model/int8_attention.py) at each tile configuration on
    inputs already quantised, the same kernel with bf16 logits (how far Triton is from cuDNN
    before int8), the best configuration with the quantisation per call, and the quantisation
    alone. On a machine without the kernel: its emulation's error."""
    if not ia.available(device):
        measure("int8_qk_emulated", lambda: ia.emulate(q, k, v), ia.emulate(q, k, v))
        return
    quantize = ia.quantize_compiled  # as the DiT's attention runs it
    q8, sq, k8, sk = quantize(q, k)
    best: tuple[float, tuple[int, int, int, int]] | None = None
    for tiles in INT8_TILES:
        name = "int8_qk_kernel_m{}_n{}_w{}_s{}".format(*tiles)
        try:
            fn = lambda tiles=tiles: ia.attend_quantized(q8, sq, k8, sk, v, *tiles)  # noqa: E731
            seconds = measure(name, fn, fn())
        except Exception as exc:  # noqa: BLE001 - a configuration that does not fit is a result
            log(f"{name} failed: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        if best is None or seconds < best[0]:
            best = (seconds, tiles)
    if best is None:
        return
    tiles = best[1]
    log(f"int8 kernel's best tiles: {tiles}")
    scale = ia.LOG2E / q.shape[-1] ** 0.5
    sq1 = torch.full(q.shape[:3], scale, device=device)
    sk1 = torch.ones(k.shape[:3], device=device)
    try:
        fn = lambda: ia.attend_quantized(q, sq1, k, sk1, v, *tiles)  # noqa: E731
        measure("triton_bf16_same_kernel", fn, fn())
    except Exception as exc:  # noqa: BLE001
        log(f"bf16 variant failed: {type(exc).__name__}: {str(exc)[:300]}")
    fn = lambda: ia.attend_quantized(*quantize(q, k), v, *tiles)  # noqa: E731
    measure("int8_qk_with_quantisation", fn, fn())
    measure("int8_quantise_qk", lambda: quantize(q, k), None, count_flops=False)


def table(report: dict[str, Any]) -> str:
    lines = [
        f"self-attention of one block, {report['query_tokens']} queries x {report['key_tokens']} "
        f"keys, {report['heads']} heads of {report['head_dim']} ({report['device']}, "
        f"fp8 path: {report['fp8_path']})",
        "| | ms per layer | TFLOP/s | per 40-layer step | error vs fp32 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in report["rows"].items():
        tflops = "" if r["tflop_s"] is None else f"{r['tflop_s']:.0f}"
        err = "" if r["rel_error_vs_fp32"] is None else f"{r['rel_error_vs_fp32']:.4f}"
        lines.append(
            f"| {name} | {r['seconds'] * 1e3:.3f} | {tflops} | {r['per_step_s'] * 1e3:.1f} ms | {err} |"
        )
    for name, mean in (report.get("output_with_values_all_one") or {}).items():
        lines.append(f"{name}: values all 1 give {mean:.4f} (exact: 1)")
    parts = report.get("rel_error_by_rounding") or {}
    if parts:
        lines.append(
            "emulated error, by the tensors rounded to e4m3: "
            + ", ".join(f"{n} {e:.4f}" for n, e in parts.items())
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(p)
    p.add_argument("--infer-frames", type=int, default=48)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--quick", action="store_true", help="small shapes for a dry run")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    report = run(args)
    finish(args.out, report, T0, table)


if __name__ == "__main__":
    main()
