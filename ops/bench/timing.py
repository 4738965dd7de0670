"""Timing a call on the device it runs on (shared by the benchmarks)."""

from __future__ import annotations

import statistics
import sys
import threading
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


class StackSampler:
    """Where one thread spends its wall time: its stack sampled every `interval` seconds by a
    daemon thread while the `with` block runs. `top()`: seconds by the innermost frame of the
    project (pipeline/, ops/, worker/) and by the innermost frame of all, most first. Time a
    thread spends waiting for the GIL counts against the line it waits at."""

    PROJECT = ("/pipeline/", "/ops/", "/worker/")

    def __init__(self, interval: float = 0.05, thread_id: int | None = None):
        self.interval = interval
        self.thread_id = thread_id if thread_id is not None else threading.get_ident()
        self.project: dict[str, int] = {}
        self.innermost: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stack-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            frame = sys._current_frames().get(self.thread_id)
            if frame is None:
                continue
            inner = f"{frame.f_code.co_name} ({frame.f_code.co_filename.rsplit('/', 2)[-1]})"
            self.innermost[inner] = self.innermost.get(inner, 0) + 1
            f: Any = frame
            while f is not None and not any(p in f.f_code.co_filename for p in self.PROJECT):
                f = f.f_back
            where = (
                "outside"
                if f is None
                else (f"{f.f_code.co_filename.rsplit('/', 2)[-1]}:{f.f_code.co_name}:{f.f_lineno}")
            )
            self.project[where] = self.project.get(where, 0) + 1

    def __enter__(self) -> StackSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def top(self, n: int = 8) -> dict[str, dict[str, float]]:
        def most(counts: dict[str, int]) -> dict[str, float]:
            ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
            return {k: round(v * self.interval, 2) for k, v in ranked}

        return {"project": most(self.project), "innermost": most(self.innermost)}
