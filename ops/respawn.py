"""`longtake worker` as two processes: a parent that imports the heavy modules once, and the
worker it forks, replaced by a new fork whenever it dies.

A worker process that dies (a crash, an out-of-memory kill, kill -9 of the worker alone) comes
back as a fork of this parent, which has imported torch, torch.compile's modules, the encoders'
libraries (transformers, diffusers), Celery and the project's worker code already: the new
worker starts loading its model at once instead of after the imports (15-16 s on an H200 host,
more than the model's own load: docs/benchmarks.md, tiers run e). The parent does nothing else:
it initialises no CUDA (torch is asked to check for GPUs through NVML), starts no thread and
opens no connection, so forking it is safe; it checks before each fork that it holds one
thread and no initialised CUDA driver, and runs the worker in its own process when not.

Signals: SIGTERM and SIGINT are passed on to the worker (its warm shutdown), and the parent
exits with the worker's status once it has ended. A worker that ends with status 0 was told to
stop and is not replaced. The worker dies with its parent (Linux's parent-death signal), so
kill -9 of the parent stops both, as it stopped the single process before. A worker that keeps
dying is replaced after a growing pause (`Backoff`).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass


def _say(message: str) -> None:
    """The parent's few lines, on stderr beside the worker's log (it configures no logging:
    the worker's Celery does, after the fork)."""
    print(f"longtake worker[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


PIPELINE_PREIMPORTS = (
    "torch",
    "torch._dynamo",  # also what a meta-device draw imports in the DiT's declaration
    "torch._inductor.compile_fx",
    "transformers",
    "diffusers",
    "pipeline.components",
    "pipeline.stream",
    "pipeline.warm_up",
    "pipeline.dit_loading",
    "pipeline.weights.dit",
)
"""What the pipeline imports on a stream's way to its first frame."""

PREIMPORTS = (
    *PIPELINE_PREIMPORTS,
    "celery",
    "db.database",
    "dispatch.tasks",
    "worker.lifecycle",
    "worker.engine",
)
"""What a worker imports on its way to its first frame, imported once in the parent."""

_PR_SET_PDEATHSIG = 1


def preimport(modules: tuple[str, ...] = PREIMPORTS) -> float:
    """Import `modules` in this process (after `prepare`), then `prewarm` what the imports
    allow; returns the seconds it took."""
    prepare()
    started = time.perf_counter()
    for name in modules:
        importlib.import_module(name)
    prewarm()
    return time.perf_counter() - started


COMPILER_KEYS = ("torch_key", "triton_key")
"""Inductor's hashes of torch's and Triton's sources (`torch._inductor.codecache`), part of
every compiled graph's cache key: each process computes them once, by reading and hashing
those packages' files, on its way to its first compiled call (Triton's took 0.7 s of a forked
resume's open on an H200, docs/benchmarks.md, run 2026-12-04b; torch's 0.8 s on a CPU host)."""


def prewarm() -> None:
    """Compute the COMPILER_KEYS here, where torch.compile's modules are imported, so that
    every forked worker inherits them. Hashing files only: no CUDA, no thread. A key that
    cannot be computed here (no Triton) is left for the worker, which meets the same."""
    codecache = sys.modules.get("torch._inductor.codecache")
    if codecache is None:
        return
    for name in COMPILER_KEYS:
        key = getattr(codecache, name, None)
        if key is not None:
            with contextlib.suppress(Exception):
                key()


def can_fork() -> bool:
    """Whether forking this process is safe: a POSIX system, no thread but this one (a forked
    child holds a copy of every lock another thread held), and no CUDA driver initialised (a
    child of a process that did cannot use CUDA)."""
    return hasattr(os, "fork") and threading.active_count() == 1 and not cuda_driver_initialised()


_CUDA_ERROR_NOT_INITIALIZED = 3


def cuda_driver_initialised() -> bool:
    """Whether this process has initialised the CUDA driver (`cuInit`): every driver call
    before it answers CUDA_ERROR_NOT_INITIALIZED. False where the driver is not loaded."""
    try:  # only a library already loaded (RTLD_NOLOAD): loading it here would not answer
        libcuda = ctypes.CDLL(
            "libcuda.so.1", mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL
        )
    except OSError:
        return False
    count = ctypes.c_int(0)
    return libcuda.cuDeviceGetCount(ctypes.byref(count)) != _CUDA_ERROR_NOT_INITIALIZED


def prepare() -> None:
    """Before the parent's imports: torch answers `torch.cuda.is_available()` (which libraries
    may ask as they import) from NVML, without initialising the CUDA driver."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (elsewhere: nothing); a parent
    already gone before the request took effect ends this process now."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(128 + signal.SIGKILL)


@dataclass
class Backoff:
    """The pause before a dead worker is replaced: `first` seconds, doubled (up to `most`)
    while workers keep dying within `healthy_after` seconds of their start."""

    first: float = 1.0
    most: float = 60.0
    healthy_after: float = 300.0
    _next: float = 0.0

    def after(self, ran_s: float) -> float:
        if ran_s >= self.healthy_after or self._next == 0.0:
            self._next = self.first
        else:
            self._next = min(self._next * 2, self.most)
        return self._next


def run(target: Callable[[], int], backoff: Backoff | None = None) -> int:
    """Run `target` (the worker; it returns its exit status) in forked children, one at a
    time, replacing each that dies; returns the status to exit with. Runs `target` in this
    process instead where forking is not safe."""
    if not can_fork():
        _say(
            "this process cannot fork safely (threads, or the CUDA driver initialised); "
            "the worker runs without a parent"
        )
        return target()
    backoff = backoff or Backoff()
    stopping = threading.Event()
    child = 0

    def forward(signum: int, _frame: object) -> None:
        stopping.set()
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    passed_on = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.signal(s, forward) for s in passed_on}
    try:
        while True:
            if not can_fork():  # a library started a thread (or CUDA) here after all
                _say("the worker's parent cannot fork safely any more; the worker runs in it")
                return target()
            started, parent = time.monotonic(), os.getpid()
            # held while the two processes set up: a stop asked meanwhile reaches the worker
            signal.pthread_sigmask(signal.SIG_BLOCK, passed_on)
            child = os.fork()
            if child == 0:  # the worker
                for s, handler in previous.items():
                    signal.signal(s, handler)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, passed_on)
                _die_with_parent(parent)
                os._exit(exit_status(target))
            signal.pthread_sigmask(signal.SIG_UNBLOCK, passed_on)
            _say(f"worker process {child} started")
            status = _wait_for(child)
            code = os.waitstatus_to_exitcode(status)
            if stopping.is_set() or code == 0:
                return code if code >= 0 else 128 - code
            pause = backoff.after(time.monotonic() - started)
            how = f"signal {-code}" if code < 0 else f"status {code}"
            _say(f"worker process {child} ended ({how}); a new one starts in {pause:.1f} s")
            child = 0
            if stopping.wait(pause):
                return 128 + signal.SIGTERM
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def exit_status(target: Callable[[], int]) -> int:
    """`target`'s exit status, as the interpreter would have made it, for a forked child to
    leave with through os._exit (the parent's exit handlers are not the child's to run): its
    SystemExit's code, 1 with the traceback printed for an exception; output flushed."""
    status = 1
    try:
        status = target()
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
    return status


def _wait_for(pid: int) -> int:
    """Wait for `pid` to end (reaping any other child this process inherits meanwhile: a dead
    worker's own children come to the parent where it is PID 1); its wait status."""
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:  # nothing left to wait for
            return 0
        except InterruptedError:
            continue
        if done == pid:
            return status
