"""The streaming decoder's convolutions one by one: which kernel each gets, and what each costs.

    python -m ops.bench.decoder_convs --out bench-out/decoder-convs.json                  # GPU
    python -m ops.bench.decoder_convs --preset tiny --device cpu --size 64*64 --out x.json

The compiled decoder's steady frame calls cuDNN for its convolutions (inductor leaves them to
`aten.convolution`), and without `cudnn.benchmark` (which times algorithms, so that two
processes may pick different ones and give different bits) cuDNN's heuristics choose the
kernel from the shapes and the memory layout alone. This benchmark, on the preset's VAE with
seeded random weights (channels-last on a GPU), primed eagerly as a stream is:

  steady    one compiled steady frame profiled: its time, and the convolutions' kernels
            grouped by input shape;
  convs     every distinct convolution of an eager steady frame (captured at
            `_conv_forward`: the padded input, the kernel, strides), timed alone (median of
            --repeats calls) in the decoder's layout (channels-last), in the default layout,
            and channels-last with its channels padded (zero kernels, the extra outputs
            dropped): a convolution with fewer than 16 outputs to 16, one whose outputs are
            not a multiple of 64 (the sm90 kernels' tile) to the next, with its inputs too
            where they allow; a 3-D kernel also as one 2-D convolution per time tap, summed.
            Reported: time per call, calls per frame, the kernels, and whether each form's
            output equals the decoder layout's bit for bit (and the largest difference).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ops.bench.decoder_precompile import random_vae
from ops.bench.timing import time_call
from pipeline import vae as vae_mod

PAD_TO = 16


def _key(x: torch.Tensor, w: torch.Tensor, m: torch.nn.Module) -> tuple:
    return (
        tuple(x.shape),
        tuple(w.shape),
        tuple(m.stride),
        tuple(m.padding) if not isinstance(m.padding, str) else m.padding,
        m.groups,
    )


def capture(decode: Any) -> tuple[Counter, dict[tuple, tuple[torch.nn.Module, torch.Tensor]]]:
    """Run `decode()` with every Conv2d/Conv3d's padded input recorded: calls per key, and
    one (module, input) per key."""
    calls: Counter = Counter()
    seen: dict[tuple, tuple[torch.nn.Module, torch.Tensor]] = {}
    originals = {cls: cls._conv_forward for cls in (torch.nn.Conv2d, torch.nn.Conv3d)}

    def wrap(cls: type) -> Any:
        def forward(self: torch.nn.Module, x: torch.Tensor, w: torch.Tensor, b: Any) -> Any:
            k = _key(x, w, self)
            calls[k] += 1
            seen.setdefault(k, (self, x.detach().clone(memory_format=torch.preserve_format)))
            return originals[cls](self, x, w, b)

        return forward

    try:
        for cls in originals:
            cls._conv_forward = wrap(cls)
        decode()
    finally:
        for cls, fn in originals.items():
            cls._conv_forward = fn
    return calls, seen


def conv(m: torch.nn.Module, x: torch.Tensor, w: torch.Tensor, b: Any) -> torch.Tensor:
    fn = F.conv3d if x.dim() == 5 else F.conv2d
    return fn(x, w, b, m.stride, m.padding, m.dilation, m.groups)


def kernels_of(fn: Any, device: torch.device) -> list[str]:
    if device.type != "cuda":
        return []
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    return sorted({e.name for e in prof.events() if e.device_type.name == "CUDA"})


def variants(m: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """The convolution in each form: name -> a call returning its output (the decoder's
    channels-last form first: the others are compared with it)."""
    w, b = m.weight, m.bias
    fmt = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
    xl, wl = x.contiguous(memory_format=fmt), w.contiguous(memory_format=fmt)
    xc, wc = x.contiguous(), w.contiguous()
    out: dict[str, Any] = {
        "channels-last": lambda: conv(m, xl, wl, b),
        "default": lambda: conv(m, xc, wc, b),
    }
    if w.shape[0] < PAD_TO:
        wp = torch.zeros((PAD_TO, *w.shape[1:]), dtype=w.dtype, device=w.device)
        wp[: w.shape[0]] = w
        wp = wp.contiguous(memory_format=fmt)
        bp = None
        if b is not None:
            bp = torch.zeros(PAD_TO, dtype=b.dtype, device=b.device)
            bp[: b.shape[0]] = b
        n = w.shape[0]
        out[f"channels-last, {PAD_TO} outputs"] = lambda: conv(m, xl, wp, bp)[:, :n]
    c_out, c_in = w.shape[:2]
    if c_out >= PAD_TO and c_out % 64:  # channel counts off the sm90 kernels' 64-wide tiles
        up = -(-c_out // 64) * 64
        wo = torch.zeros((up, *w.shape[1:]), dtype=w.dtype, device=w.device)
        wo[:c_out] = w
        wo = wo.contiguous(memory_format=fmt)
        bo = None if b is None else torch.cat([b, b.new_zeros(up - c_out)])
        out[f"outputs padded to {up}"] = lambda: conv(m, xl, wo, bo)[:, :c_out]
        if c_in % 64 == 0 or c_in == c_out:
            cin = -(-c_in // 64) * 64
            xi = torch.cat([x, x.new_zeros((x.shape[0], cin - c_in, *x.shape[2:]))], dim=1)
            xi = xi.contiguous(memory_format=fmt)
            wi = torch.zeros((up, cin, *w.shape[2:]), dtype=w.dtype, device=w.device)
            wi[:c_out, :c_in] = w
            wi = wi.contiguous(memory_format=fmt)
            out[f"inputs and outputs padded to {cin}, {up}"] = lambda: conv(m, xi, wi, bo)
    if x.dim() == 5 and w.shape[2] > 1 and tuple(m.stride) == (1, 1, 1) and m.padding[0] == 0:
        # a 3-D kernel as one 2-D convolution per time tap, summed: [T, C, H, W] views of the
        # channels-last input, frames in the batch
        frames = xl[0].transpose(0, 1)  # [T, C, H, W]
        taps = w.shape[2]
        t_out = x.shape[2] - taps + 1
        w2 = [w[:, :, i].contiguous(memory_format=torch.channels_last) for i in range(taps)]

        def by_taps() -> torch.Tensor:
            y = F.conv2d(frames[0:t_out], w2[0], b, 1, tuple(m.padding[1:]))
            for i in range(1, taps):
                y = y + F.conv2d(frames[i : i + t_out], w2[i], None, 1, tuple(m.padding[1:]))
            return y.transpose(0, 1).unsqueeze(0)

        out["2-D per time tap"] = by_taps
    return out


def run(preset_name: str, device_name: str, size: str, repeats: int) -> dict[str, Any]:
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    vae, z = random_vae(preset_name, device, size, 6)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    report: dict[str, Any] = {}
    with torch.no_grad():
        eager = vae_mod.StreamingDecoder(vae, channels_last=cuda, compiled=False)
        eager.decode(z[:, :2])  # the prime: a steady frame's cache
        calls, seen = capture(lambda: eager.decode(z[:, 2:3]))

        if cuda:  # the compiled steady frame, as a stream decodes it
            dec = vae_mod.StreamingDecoder(vae, channels_last=True, compiled=True)
            dec.decode(z[:, :4])
            sync()
            t0 = time.perf_counter()
            for i in range(4, 6):
                dec.decode(z[:, i : i + 1])
            sync()
            report["steady_frame_s"] = (time.perf_counter() - t0) / 2
            from torch.profiler import ProfilerActivity, profile

            with profile(
                activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True
            ) as prof:
                dec.decode(z[:, 5:6])
                sync()
            kern = Counter()
            for e in prof.events():
                if e.device_type.name == "CUDA":
                    kern[e.name] += e.device_time_total if hasattr(e, "device_time_total") else 0
            report["steady_kernels_ms"] = [
                {"name": k[:160], "ms": round(v / 1e3, 3)} for k, v in kern.most_common(25)
            ]

        rows = []
        for k, (m, x) in seen.items():
            row: dict[str, Any] = {
                "input": list(k[0]),
                "weight": list(k[1]),
                "stride": list(k[2]),
                "calls_per_frame": calls[k],
                "ms": {},
                "kernels": {},
                "equal_to_channels_last": {},
                "max_abs_diff": {},
            }
            ref = None
            for name, fn in variants(m, x).items():
                row["ms"][name] = round(time_call(fn, device, 3, repeats) * 1e3, 4)
                row["kernels"][name] = [n[:120] for n in kernels_of(fn, device)]
                y = fn()
                if ref is None:
                    ref = y
                y = y[:, : ref.shape[1]]
                row["equal_to_channels_last"][name] = bool(torch.equal(y, ref))
                row["max_abs_diff"][name] = float((y.float() - ref.float()).abs().max())
            rows.append(row)
        rows.sort(key=lambda r: -r["ms"]["channels-last"] * r["calls_per_frame"])
        report["convs"] = rows
    return report


def table(report: dict[str, Any]) -> str:
    lines = [
        f"decoder convolutions, {report['preset']} at {report['size']}, {report['device']}, "
        f"torch {report['torch']}"
    ]
    if "steady_frame_s" in report:
        lines.append(f"compiled steady frame {report['steady_frame_s'] * 1e3:.1f} ms")
    lines.append(
        "| input | weight | calls | ms per call by layout | equal | kernel (channels-last) |"
    )
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for r in report["convs"]:
        ms = ", ".join(f"{k} {v:.3f}" for k, v in r["ms"].items())
        eq = ", ".join(
            f"{k}: {v}" for k, v in r["equal_to_channels_last"].items() if k != "channels-last"
        )
        kern = "; ".join(r["kernels"]["channels-last"])[:90]
        lines.append(
            f"| {r['input']} | {r['weight']} | {r['calls_per_frame']} | {ms} | {eq} | {kern} |"
        )
    total = {
        name: sum(
            r["ms"].get(name, r["ms"]["channels-last"]) * r["calls_per_frame"]
            for r in report["convs"]
        )
        for name in {n for r in report["convs"] for n in r["ms"]}
    }
    lines.append(
        "per frame, each conv alone: " + ", ".join(f"{k} {v:.2f} ms" for k, v in total.items())
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="liveavatar-14b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", default="720*400")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    report = {
        "benchmark": "decoder convolutions",
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name(0)
        if a.device.startswith("cuda")
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "preset": a.preset,
        "size": a.size,
        **run(a.preset, a.device, a.size, a.repeats),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2))
    print(table(report))


if __name__ == "__main__":
    main()
