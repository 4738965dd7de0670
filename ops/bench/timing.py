"""Timing a call on the device it runs on (shared by the benchmarks)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def seconds_of(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call of fn() (CUDA events on a GPU, the wall clock elsewhere)."""
    if device.type == "cuda":
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        return s.elapsed_time(e) / 1000
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of fn() after warm-up calls."""
    for _ in range(warmup):
        fn()
    return statistics.median(seconds_of(fn, device) for _ in range(repeats))
