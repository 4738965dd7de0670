"""Copying tensors from a file on disk into a module on its target device, one at a time.

On a CUDA device two pinned staging buffers alternate: while tensor i is copied host→device
from one, a reader thread fills the other with tensor i+1, so the disk and the PCIe link work
at the same time. Each tensor is converted to the destination dtype on the device, never on
the host, so an fp32 copy of a bf16 checkpoint never exists in host memory. On CPU tensors are
read straight into their destination.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from .module_tensors import ModuleTensors
from .safetensors_file import TensorEntry, TensorFile


@dataclass
class CopyStats:
    tensors: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def add(self, other: CopyStats) -> None:
        self.tensors += other.tensors
        self.bytes += other.bytes
        self.seconds += other.seconds


def copy_tensors(
    source: TensorFile,
    items: Sequence[tuple[TensorEntry, str]],
    targets: ModuleTensors,
    device: torch.device,
) -> CopyStats:
    """Fill `targets[name]` from `entry` for each (entry, name), in the given order.

    Shapes must already have been checked. `device` is where meta tensors are materialised;
    tensors that already exist are filled where they are.
    """
    start = time.perf_counter()
    if device.type == "cuda" and items:
        _copy_via_pinned_buffers(source, items, targets, device)
    else:
        scratch: torch.Tensor | None = None
        for entry, name in items:
            dst_dtype = targets.dtype(name)
            dst_device = _destination_device(targets, name, device)
            if dst_device.type == "cpu" and dst_dtype == entry.dtype:
                targets.fill(name, device, lambda dst, e=entry: source.read_into(e, dst))
                continue
            if scratch is None or scratch.numel() < entry.nbytes:
                scratch = torch.empty(max(entry.nbytes, 1), dtype=torch.uint8)
            src = source.read_into(entry, scratch)
            targets.fill(name, device, lambda dst, s=src: dst.copy_(s))
    return CopyStats(len(items), sum(e.nbytes for e, _ in items), time.perf_counter() - start)


def _destination_device(targets: ModuleTensors, name: str, device: torch.device) -> torch.device:
    current = targets.get(name).device
    return device if current.type == "meta" else current


def _copy_via_pinned_buffers(
    source: TensorFile,
    items: Sequence[tuple[TensorEntry, str]],
    targets: ModuleTensors,
    device: torch.device,
) -> None:
    size = max(max(e.nbytes for e, _ in items), 1)
    buffers = [torch.empty(size, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
    done: list[torch.cuda.Event | None] = [None, None]  # last copy out of each buffer

    def read(slot: int, entry: TensorEntry) -> torch.Tensor:
        event = done[slot]
        if event is not None:
            event.synchronize()  # the buffer's previous tensor has reached the device
        return source.read_into(entry, buffers[slot])

    with torch.cuda.device(device), ThreadPoolExecutor(max_workers=1) as reader:
        pending: Future[torch.Tensor] = reader.submit(read, 0, items[0][0])
        for i, (_, name) in enumerate(items):
            src = pending.result()
            if i + 1 < len(items):
                pending = reader.submit(read, (i + 1) % 2, items[i + 1][0])
            targets.fill(name, device, lambda dst, s=src: dst.copy_(s, non_blocking=True))
            event = torch.cuda.Event()
            event.record()
            done[i % 2] = event
        torch.cuda.current_stream().synchronize()
