"""Page-locking host memory beside generation: what it costs the GPU work running meanwhile.

    python -m ops.bench.host_register --out bench-out/host-register.json      # a GPU host
    python -m ops.bench.host_register --device cpu --gb 0.25 --out x.json      # dry run

A stream page-locks its capture buffers (48 GB at 14B and 720x400) in a thread while its
first clips render. The main thread here runs blocks of GPU work (bf16 matmuls, a host sync
at the end of each block, as a clip's blocks do) while another thread makes `--gb` of
buffers in each way below; it reports the blocks' mean and worst time against the same
blocks alone, and how long the making took:

  whole        one `cudaHostRegister` per buffer (how HostBuffers made them before);
  chunked      registered in pieces of CHUNK_BYTES (`pipeline.host_buffers.register`);
  prefaulted   `pipeline.host_buffers.make_buffer`: pages faulted in by torch's threads, then
               registered in pieces;
  torch pin    torch's pinned allocator (`pin_memory=True`), for reference.

Then the device-to-host copy speed of one buffer made each way (one copy of the whole
buffer, and `copy_piecewise`'s piecewise copy into a chunked buffer): a copy that spans several
registrations may be staged by the driver as if the memory were pageable.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import threading
import time
import weakref
from datetime import date
from pathlib import Path
from typing import Any

import torch

from pipeline import host_buffers as hb

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def whole(spec: hb.Spec) -> torch.Tensor:
    """A buffer registered in one call (the old way)."""
    buf = torch.empty(spec[0], dtype=spec[1])
    if torch.cuda.is_available():
        rc = int(torch.cuda.cudart().cudaHostRegister(buf.data_ptr(), buf.nbytes, 0))
        if rc == 0:
            weakref.finalize(buf, hb.unregister, buf.data_ptr())
    return buf


def torch_pin(spec: hb.Spec) -> torch.Tensor:
    return torch.empty(spec[0], dtype=spec[1], pin_memory=torch.cuda.is_available())


def chunked(spec: hb.Spec) -> torch.Tensor:
    """Registered in pieces, its pages faulted in by the registration."""
    return hb.make_buffer(spec, page_lock=torch.cuda.is_available(), prefault=False)


def prefaulted(spec: hb.Spec) -> torch.Tensor:
    """`make_buffer`: the pages faulted in first (torch's threads), then registered in pieces."""
    return hb.make_buffer(spec, page_lock=torch.cuda.is_available())


WAYS = {"whole": whole, "chunked": chunked, "prefaulted": prefaulted, "torch_pin": torch_pin}


def blocks_beside(
    make: Any, specs: list[hb.Spec], device: torch.device, size: int, per_block: int
) -> dict[str, Any]:
    """Blocks of GPU work timed while `make` builds `specs` in a thread (None: 20 blocks
    alone)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    made: list[torch.Tensor] = []
    done = threading.Event()
    took: list[float] = []

    def run() -> None:
        t = time.perf_counter()
        try:
            for spec in specs:
                made.append(make(spec))
            took.append(time.perf_counter() - t)
        finally:
            done.set()

    times: list[float] = []
    if make is None:
        done.set()
    else:
        threading.Thread(target=run, daemon=True).start()
    minimum = 1 if make is not None else 20
    while not done.is_set() or len(times) < minimum:
        t = time.perf_counter()
        for _ in range(per_block):
            a = torch.tanh(a @ a * (1.0 / size))  # bounded values, a matmul's time
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
        if make is None and len(times) >= minimum:
            break
    out = {
        "blocks": len(times),
        "block_mean_s": statistics.fmean(times),
        "block_max_s": max(times),
        "make_s": took[0] if took else None,
    }
    if make is not None and not took:
        raise RuntimeError("the buffers could not be made")
    made.clear()  # the buffers go back before the next way is timed
    return out


def copy_speed(device: torch.device, nbytes: int) -> dict[str, float | str]:
    """GB/s of one device-to-host copy of `nbytes` into a buffer made each way."""
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    out: dict[str, float | str] = {}
    for name, copy in (
        ("whole", lambda b: b.copy_(src, non_blocking=True)),
        ("pieces_one_copy", lambda b: b.copy_(src, non_blocking=True)),
        ("pieces_piecewise", lambda b: hb.copy_piecewise(b, src)),
        ("pageable", lambda b: b.copy_(src, non_blocking=True)),
    ):
        make = {"whole": whole, "pageable": lambda s: torch.empty(s[0], dtype=s[1])}.get(
            name, prefaulted
        )
        buf = make(((nbytes,), torch.uint8))
        buf.fill_(0)  # pages touched before the timing
        best = float("inf")
        try:
            for _ in range(3):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t = time.perf_counter()
                copy(buf)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                best = min(best, time.perf_counter() - t)
        except (RuntimeError, torch.AcceleratorError) as exc:  # the driver may refuse it
            out[name] = f"refused: {str(exc).splitlines()[0]}"
            continue
        assert torch.equal(buf[-4096:], src[-4096:].cpu()), name
        out[name] = nbytes / best / 1e9
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--gb", type=float, default=16.0, help="host memory made per way")
    p.add_argument("--buffers", type=int, default=4, help="the GB split into this many buffers")
    p.add_argument("--size", type=int, default=8192, help="matmul size of the GPU work")
    p.add_argument("--per-block", type=int, default=40, help="matmuls per block")
    p.add_argument("--copy-gb", type=float, default=4.0)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    device = torch.device(a.device)
    each = int(a.gb * 1e9 / a.buffers) // 2
    specs: list[hb.Spec] = [((each,), torch.bfloat16)] * a.buffers
    result: dict[str, Any] = {
        "benchmark": "host_register",
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "machine": platform.node(),
        "gb": a.gb,
        "buffers": a.buffers,
        "chunk_bytes": hb.CHUNK_BYTES,
    }
    result["alone"] = blocks_beside(None, specs, device, a.size, a.per_block)
    log(f"alone: {result['alone']}")
    for name, make in WAYS.items():
        result[name] = blocks_beside(make, specs, device, a.size, a.per_block)
        log(f"{name}: {result[name]}")
    result["copy_gb_s"] = copy_speed(device, int(a.copy_gb * 1e9))
    log(f"copy GB/s: {result['copy_gb_s']}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    alone = result["alone"]["block_mean_s"]
    print(f"host memory page-locked beside GPU work on {result['device']}: {a.gb} GB")
    print("| way | making | blocks | block mean | vs alone | worst block |")
    for name in WAYS:
        r = result[name]
        print(
            f"| {name} | {r['make_s']:.1f} s | {r['blocks']} | {r['block_mean_s'] * 1e3:.0f} ms | "
            f"{r['block_mean_s'] / alone:.2f}x | {r['block_max_s'] * 1e3:.0f} ms |"
        )
    speeds = result["copy_gb_s"].items()
    print(
        "device-to-host GB/s: "
        + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in speeds)
    )


if __name__ == "__main__":
    main()
