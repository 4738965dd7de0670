"""Scratch space for a benchmark run: the directory asked for, or a temporary one."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def scratch_dir(path: Path | None, name: str) -> Iterator[Path]:
    """`path` (created, kept afterwards) or a temporary directory removed at the end."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=f"longtake-bench-{name}-") as tmp:
        yield Path(tmp)
