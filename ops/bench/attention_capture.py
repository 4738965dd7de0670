"""FP8 attention on the DiT's own inputs: q, k and v captured from a stream, per layer.

    python -m ops.bench.attention_capture --out bench-out/attention-capture.json   # 14B, 720x400
    python -m ops.bench.attention_capture --preset tiny --device cpu --layers 0,1 \
        --out x.json                                                                 # dry run

Random inputs say little about attention's error: how flat the softmax is, how many keys carry
the mass, how large the values are, all come from the model. This opens a stream (fp8 linears,
bf16 caches), renders `--clips-before` clips (the rings full), and on the next block's first
step keeps the queries, keys and values each chosen self-attention layer attends with. For each
layer, against float32 attention on the same inputs, with the keys and values held as the
fp8-attention caches hold them (power-of-two multipliers with `pipeline.cache.KV_HEADROOM`,
here from the whole cache's largest magnitude) and the queries at their own multiplier:

  emulated      `fp8_attention.emulate`'s float32 arithmetic with every rounding, in chunks;
  one pass      the FP8 kernel over all the keys in one call (on a CPU: its emulation);
  chunks        `fp8_attention.partials` and `merge_rows`, as the DiT runs it;

the relative error and the output's norm over the exact one's (below 1: mass lost), and the
logits' spread (their standard deviation, and the mean gap from a row's largest to its mean).
Random weights: real weights may differ. Prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

from ops.bench.fp8_attention import reference, rel_error
from ops.bench.generate import request
from ops.bench.options import add_model_options
from ops.bench.report import finish
from pipeline import Generator
from pipeline.cache import KV_HEADROOM
from pipeline.model import fp8_attention as fa
from pipeline.model import layers

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


class Capture:
    """Wraps the attention call of `pipeline.model.layers`: once armed, keeps the inputs of the
    next `num_layers` self-attention calls (one DiT forward, layer by layer) whose index is in
    `keep`. A self-attention call is one over `keys` keys, the stream's whole cache; the
    cross-attention calls pass through."""

    def __init__(self, num_layers: int, keep: set[int]):
        self.num_layers, self.keep = num_layers, keep
        self.keys = 0  # the stream's cache_tokens, set once it is open
        self.armed, self.seen = False, 0
        self.inputs: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._attention = layers.attention

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.armed and k.shape[1] == self.keys:
            if self.seen in self.keep:
                self.inputs[self.seen] = (
                    q.detach().clone(),
                    k.detach().clone(),
                    v.detach().clone(),
                )
            self.seen += 1
            self.armed = self.seen < self.num_layers
        return self._attention(q, k, v)

    def __enter__(self) -> Capture:
        layers.attention = self
        return self

    def __exit__(self, *exc: object) -> None:
        layers.attention = self._attention


def one_layer(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_keys: int) -> dict[str, Any]:
    """The figures of one layer's captured inputs q [1, Lq, H, D], k and v [1, Lk, H, D]."""
    exact = reference(q, k, v)
    mq = fa.pow2_multiplier(q.abs().amax())
    mk = fa.pow2_multiplier(k.abs().amax() * KV_HEADROOM)
    mv = fa.pow2_multiplier(v.abs().amax() * KV_HEADROOM)
    q8, k8, v8 = (fa.quantize(t, m).contiguous() for t, m in ((q, mq), (k, mk), (v, mv)))
    factors = fa.factors_of(mq, mk, mv)
    out: dict[str, Any] = {"keys": k.shape[1]}

    def record(name: str, got: torch.Tensor) -> None:
        out[name] = {
            "rel_error": rel_error(got, exact),
            "norm_ratio": float(got.float().norm() / exact.norm()),
        }

    # the emulation on the held tensors (it quantises them again: by powers of two, exactly)
    held = [t.float() / m for t, m in ((q8, mq), (k8, mk), (v8, mv))]
    record("emulated", fa.emulate(*held, chunk_keys=chunk_keys))
    del held
    for name, most in (("one_pass", k.shape[1]), ("chunks", chunk_keys)):
        rows, scales = fa.merge_rows(*fa.partials(q8, k8, v8, factors, most), factors)
        record(name, (rows.float() * scales).view(q.shape))
    # the logits' spread, on the first 8 heads of the first 512 queries
    a = q[:, :512, :8].float().transpose(1, 2)
    b = k[:, :, :8].float().transpose(1, 2)
    logits = a @ b.transpose(-1, -2) / math.sqrt(q.shape[-1])
    out["logit_std"] = float(logits.std())
    out["logit_max_minus_mean"] = float((logits.amax(-1) - logits.mean(-1)).mean())
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    precision = "fp8" if device.type == "cuda" else "bf16"
    log(f"building {args.preset} (random weights, {precision}) on {device}")
    gen = Generator.from_preset(
        args.preset, device=device, random_weights=True, precision=precision
    )
    num_layers = gen.preset.dit.num_layers
    keep = {int(x) for x in args.layers.split(",")}
    if not keep <= set(range(num_layers)):
        raise SystemExit(f"--layers: the DiT has layers 0..{num_layers - 1}")
    with Capture(num_layers, keep) as capture:
        stream = gen.open(request(args.size, args.clips_before + 2, args.steps))
        capture.keys = stream.geometry.cache_tokens
        for _ in range(args.clips_before):
            next(stream)
        capture.armed = True
        next(stream)
        stream.close()
    log(f"captured layers {sorted(capture.inputs)} after {args.clips_before} clips")
    report: dict[str, Any] = {
        "benchmark": "attention_capture",
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "fp8_path": "cudnn" if fa.available(device) else "emulated",
        "preset": args.preset,
        "weights": "random",
        "size": args.size,
        "clips_before": args.clips_before,
        "chunk_keys": args.chunk_keys,
        "layers": {},
    }
    for layer in sorted(capture.inputs):
        q, k, v = capture.inputs.pop(layer)
        report["layers"][str(layer)] = figures = one_layer(q, k, v, args.chunk_keys)
        log(
            f"layer {layer}: "
            + ", ".join(
                f"{n} {figures[n]['rel_error']:.4f} ({figures[n]['norm_ratio']:.3f})"
                for n in ("emulated", "one_pass", "chunks")
            )
        )
        del q, k, v
    return report


def table(report: dict[str, Any]) -> str:
    lines = [
        f"self-attention on the DiT's own inputs: {report['preset']}, {report['size']}, after "
        f"{report['clips_before']} clips ({report['device']}, fp8 path: {report['fp8_path']}); "
        "relative error against float32 (output norm / exact)",
        "| layer | keys | emulated | one pass | chunks | logits: std, max - mean |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for layer, f in report["layers"].items():
        cells = [f"{f[n]['rel_error']:.2%} ({f[n]['norm_ratio']:.3f})" for n in
                 ("emulated", "one_pass", "chunks")]  # fmt: skip
        lines.append(
            f"| {layer} | {f['keys']} | {' | '.join(cells)} | "
            f"{f['logit_std']:.2f}, {f['logit_max_minus_mean']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(p)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--clips-before", type=int, default=2, help="clips rendered before the capture")
    p.add_argument("--layers", default="0,1,10,20,30,39", help="comma-separated layer indices")
    p.add_argument("--chunk-keys", type=int, default=fa.CHUNK_KEYS)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    report = run(args)
    finish(args.out, report, T0, table)


if __name__ == "__main__":
    main()
