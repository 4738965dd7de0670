"""Crash injection for the fault-tolerance tests: kill -9 the worker at a named point.

``LONGTAKE_FAULT=<point>[:<occurrence>]`` makes the worker process SIGKILL itself the
``occurrence``-th time (default 1) it reaches ``point``; unset, nothing happens. The points are
the moments where a crash is most likely to leave inconsistent state behind:

    during_clip       a clip's frames came back from the engine, before they are encoded (the
                      open interval's clips exist only in memory)
    segment_upload    an interval's segment is in storage, its checkpoint not yet written
    checkpoint_write  the first file of a checkpoint is in storage, its manifest.json is not
    stitch            the output video is in storage, the manifest and the success not recorded

A SIGKILL runs no handlers, flushes nothing and releases nothing, exactly like the OOM killer
or a lost node; what survives is what was in the database and storage at that instant.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)

POINTS = ("during_clip", "segment_upload", "checkpoint_write", "stitch")


@dataclass
class FaultPlan:
    point: str | None = None
    occurrence: int = 1
    seen: int = 0

    @classmethod
    def parse(cls, spec: str | None) -> FaultPlan:
        """``None``/"" -> inert; "stitch" or "segment_upload:2" -> armed (ValueError if bad)."""
        if not spec:
            return cls()
        point, _, count = spec.partition(":")
        if point not in POINTS:
            raise ValueError(f"unknown fault point {point!r}; use one of {', '.join(POINTS)}")
        try:
            occurrence = int(count) if count else 1
        except ValueError:
            raise ValueError(f"fault occurrence must be an integer, got {count!r}") from None
        if occurrence < 1:
            raise ValueError(f"fault occurrence must be at least 1, got {occurrence}")
        return cls(point, occurrence)

    @property
    def armed(self) -> bool:
        return self.point is not None

    def hit(self, point: str) -> None:
        """Mark that the worker reached `point`; die there if this is the planned occurrence."""
        if point != self.point:
            return
        self.seen += 1
        if self.seen == self.occurrence:
            log.critical(
                "fault injection: killing this worker (SIGKILL) at %s #%d", point, self.seen
            )
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
