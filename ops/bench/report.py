"""Writing a benchmark's report (shared by the benchmarks)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def save_report(out: Path, report: dict[str, Any], started: float) -> None:
    """The report as JSON at `out` (its folder made if need be), with the seconds since
    `started` (a `time.perf_counter()` reading) as its "total_s". Benchmarks call it after each
    part too, so that a run cut short keeps what it has."""
    report["total_s"] = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


def finish(
    out: Path,
    report: dict[str, Any],
    started: float,
    table: Callable[[dict[str, Any]], str],
) -> None:
    """The last `save_report`, then the report's table printed after a blank line."""
    save_report(out, report, started)
    print()
    print(table(report))
