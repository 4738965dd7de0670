"""Where a rank's time goes: busy intervals of its device work, and what it waited for.

On a GPU, intervals are CUDA events on the stream that ran the work (the DiT on the default
stream, the decode on its own), read against one reference event, so overlapping work on two
streams counts once in the busy union. On a CPU, the host clock brackets synchronous work.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import torch


class Timeline:
    def __init__(self, device: torch.device, enabled: bool):
        self.cuda = device.type == "cuda"
        self.enabled = enabled
        self._lock = threading.Lock()
        self._intervals: dict[str, list[tuple[Any, Any]]] = {}
        self._waits: dict[str, float] = {}
        self._ref: Any = None
        self._host_start = 0.0
        self._host_end: float | None = None

    def start(self) -> None:
        """Open the measured window (idempotent)."""
        if not self.enabled or self._ref is not None:
            return
        self._host_start = time.perf_counter()
        self._ref = self._mark()

    @property
    def running(self) -> bool:
        return self.enabled and self._ref is not None

    def _mark(self) -> Any:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def begin(self) -> Any:
        return self._mark() if self.running else None

    def end(self, kind: str, token: Any) -> None:
        if token is None:
            return
        with self._lock:
            self._intervals.setdefault(kind, []).append((token, self._mark()))

    def waited(self, kind: str, seconds: float) -> None:
        if self.running:
            with self._lock:
                self._waits[kind] = self._waits.get(kind, 0.0) + seconds

    def stop(self) -> None:
        if self.running and self._host_end is None:
            if self.cuda:
                torch.cuda.synchronize()
            self._host_end = time.perf_counter()

    def summary(self) -> dict[str, Any]:
        """Seconds busy per kind, the busy union, the window and the idle fraction."""
        if not self.running:
            return {}
        self.stop()
        spans: dict[str, list[tuple[float, float]]] = {}
        for kind, pairs in self._intervals.items():
            spans[kind] = [(self._at(a), self._at(b)) for a, b in pairs]
        every = sorted(s for v in spans.values() for s in v)
        union, last_end, cur = 0.0, 0.0, None
        for a, b in every:
            if cur is None or a > cur[1]:
                if cur is not None:
                    union += cur[1] - cur[0]
                cur = [a, b]
            else:
                cur[1] = max(cur[1], b)
            last_end = max(last_end, b)
        if cur is not None:
            union += cur[1] - cur[0]
        window = max(last_end, 1e-9)
        out: dict[str, Any] = {
            "window_s": window,
            "host_window_s": (self._host_end or time.perf_counter()) - self._host_start,
            "busy_s": union,
            "idle_fraction": max(0.0, 1.0 - union / window),
            "waits_s": dict(self._waits),
        }
        for kind, v in spans.items():
            durations = [b - a for a, b in v]
            out[kind] = {
                "count": len(v),
                "total_s": sum(durations),
                "median_s": statistics.median(durations),
            }
        return out

    def _at(self, mark: Any) -> float:
        """Seconds from the window's start."""
        if self.cuda:
            return self._ref.elapsed_time(mark) / 1000.0
        return mark - self._ref
