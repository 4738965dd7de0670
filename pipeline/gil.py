"""Loads in background threads beside a busy interpreter: a short GIL switch interval meanwhile.

A thread that loads tensors (the DiT's shards, a checkpoint's state) gives the GIL up at every
tensor (it waits in a file read or on a CUDA event) and then needs it back for a few
microseconds of Python. While the main thread runs Python meanwhile (imports, torch.compile's
tracing of the decoder), every such return waits until the main thread is made to give the GIL
up, which CPython does only every `sys.getswitchinterval()` seconds (5 ms by default): over
the DiT's thousands of tensors, with a handful of returns each, the waits add up to seconds.
While at least one load runs, the interval is shortened; it goes back when the last one ends.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

LOADING_SWITCH_INTERVAL = 0.0005
"""Seconds: CPython's switch interval while a background load runs (its default is 0.005)."""

_lock = threading.Lock()
_loads = 0
_saved = 0.0


@contextmanager
def loading(interval: float = LOADING_SWITCH_INTERVAL) -> Iterator[None]:
    """Run the block with the switch interval at most `interval` (never lengthened); loads
    may overlap, from any threads: the interval in force before the first returns after the
    last."""
    global _loads, _saved
    with _lock:
        if _loads == 0:
            _saved = sys.getswitchinterval()
        _loads += 1
        sys.setswitchinterval(min(interval, sys.getswitchinterval()))
    try:
        yield
    finally:
        with _lock:
            _loads -= 1
            if _loads == 0:
                sys.setswitchinterval(_saved)
