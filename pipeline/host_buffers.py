"""Page-locked host buffers for a stream's state captures, made ahead of time and kept.

A capture copies the whole stream state (48 GB at 14B and 720x400) from the GPU into host
memory between two clips; the GPU waits for it. Into page-locked memory the copy runs at bus
speed (0.9 s on an H200 host), but page-locking that much memory takes tens of seconds, and
torch's pinned-memory allocator rounds every block up to a power of two (its rule, read in
its source: an 11 GB ring cache would take 16 GB, ~70 GB for a 48 GB state). Made at the first
capture, the buffers stalled a stream's GPU for 45 s once per stream (an H200 host,
2026-12-03).

`HostBuffers` makes buffers of exactly the tensors' sizes (ordinary host memory, then
`cudaHostRegister`), in a thread of its own as soon as a stream knows what it will capture
(`reserve`, at the end of its open), and keeps them for the next streams of the same shapes:
a worker page-locks its capture memory once, beside generation. Beside generation means
without the driver's lock for long: the pages are faulted in first (by torch's threads), then
registered in pieces (`CHUNK_BYTES`). On an H200 host (2026-12-03, ops/bench/host_register.py,
16 GB beside blocks of matmuls) that took 1.6 s with the blocks 1.2x slower meanwhile, where
one registration per buffer took 7.6 s with the GPU work stopped for all of it; in the tiers
benchmark a resumed stream's first clip went from 23.5 s to 6.7 s (steady: 4.4 s).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Mapping
from concurrent.futures import Future, wait

import torch

log = logging.getLogger(__name__)

Spec = tuple[tuple[int, ...], torch.dtype]
"""A buffer's shape and dtype."""


CHUNK_BYTES = 64 << 20
"""Host memory is page-locked in pieces of at most this many bytes, split at multiples of it
in the address space (so page-aligned). One `cudaHostRegister` of an 11 GB buffer holds
locks the rendering thread's CUDA calls wait on: registered whole beside a stream's first
clip, 48 GB of buffers stretched that clip from 4.4 s to 23.5 s (an H200 host, 2026-12-03)."""


def chunks(ptr: int, nbytes: int) -> list[tuple[int, int]]:
    """(start, length) of the pieces [ptr, ptr + nbytes) is registered in: split where the
    address crosses a multiple of CHUNK_BYTES."""
    out = []
    start, end = ptr, ptr + nbytes
    while start < end:
        stop = min((start // CHUNK_BYTES + 1) * CHUNK_BYTES, end)
        out.append((start, stop - start))
        start = stop
    return out


def _register(ptr: int, nbytes: int) -> bool:
    try:
        return int(torch.cuda.cudart().cudaHostRegister(ptr, nbytes, 0)) == 0
    except (AssertionError, RuntimeError, TypeError, ValueError):  # no CUDA in this build
        return False


def register(buf: torch.Tensor) -> list[int] | None:
    """Page-lock a host tensor's memory in place, piece by piece (`chunks`), so device copies
    into it run at full speed where the system allows it. The pieces' start addresses (to
    unregister), or None if it could not (copies are then merely slower)."""
    if not buf.numel():
        return None
    done: list[int] = []
    for start, length in chunks(buf.data_ptr(), buf.nbytes):
        if not _register(start, length):
            for ptr in done:
                unregister(ptr)
            return None
        done.append(start)
    return done


def unregister(ptr: int) -> None:
    with contextlib.suppress(RuntimeError, TypeError, ValueError):  # no driver, at exit
        torch.cuda.cudart().cudaHostUnregister(ptr)


def _unregister_all(ptrs: list[int]) -> None:
    for ptr in ptrs:
        unregister(ptr)


def copy_piecewise(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """`dst.copy_(src)` without blocking the host, in one copy per registered piece (`chunks`)
    of each host side: the driver refuses a copy that spans two registrations ("invalid
    argument", an H200 host). A non-contiguous side goes through a contiguous copy on its own
    device. Returns `dst`."""
    if dst.shape != src.shape or dst.dtype != src.dtype:
        raise ValueError(
            f"copy of {src.dtype}{tuple(src.shape)} into {dst.dtype}{tuple(dst.shape)}"
        )
    if (dst.device.type != "cpu" and src.device.type != "cpu") or dst.numel() == 0:
        return dst.copy_(src)
    flat_src = src.contiguous().view(-1)
    staged = (
        dst if dst.is_contiguous() else torch.empty_like(dst, memory_format=torch.contiguous_format)
    )
    flat_dst = staged.view(-1)
    size = dst.element_size()
    cuts = {0, dst.numel()}
    for t in (flat_dst, flat_src):
        if t.device.type == "cpu":
            cuts.update(
                (start - t.data_ptr()) // size for start, _ in chunks(t.data_ptr(), t.nbytes)
            )
    bounds = sorted(cuts)
    for a, b in zip(bounds, bounds[1:], strict=False):
        flat_dst[a:b].copy_(flat_src[a:b], non_blocking=True)
    if staged is not dst:
        dst.copy_(staged)
    return dst


def make_buffer(
    spec: Spec, page_lock: bool, shared: bool = False, prefault: bool = True
) -> torch.Tensor:
    """An uninitialised host tensor of exactly `spec`'s size; `shared`: in shared memory (other
    processes can map it); `page_lock`: page-locked until the tensor object is collected, its
    pages faulted in first unless `prefault` is False (ops/bench/host_register.py compares)."""
    shape, dtype = spec
    buf = torch.empty(shape, dtype=dtype)
    if shared:
        buf.share_memory_()
    if page_lock and buf.numel():
        # the pages faulted in here, by torch's threads, and not inside the registration: it
        # holds a lock the rendering thread's launches wait on, and faulting the pages in was
        # most of its time (ops/bench/host_register.py)
        if prefault:
            buf.zero_()
        pieces = register(buf)
        if pieces is not None:
            # unlocked before the memory goes back (the tensor object dies before its storage)
            weakref.finalize(buf, _unregister_all, pieces)
        else:  # correct, but each capture then waits for a slower copy
            log.warning("could not page-lock a %.2f GB capture buffer", buf.nbytes / 1e9)
    return buf


class HostBuffers:
    """Named host buffers, made in a background thread ahead of use and reused while the
    shape and dtype asked for stay the same.

    The buffers belong to whoever holds this object (a generator: one set for its streams):
    a capture's tensors are these buffers, so write a capture out before the next capture of
    any stream that shares them. Thread-safe."""

    def __init__(self, page_lock: bool, shared: bool = False):
        self.page_lock = page_lock
        self.shared = shared
        self._lock = threading.Lock()
        self._made: dict[str, tuple[Spec, Future[torch.Tensor]]] = {}
        self.reserve_seconds: float | None = None
        """How long the last `reserve` took to make its buffers, once it has."""

    def reserve(self, specs: Mapping[str, Spec]) -> None:
        """Start making the buffers of `specs` that are not there yet, in a thread; returns at
        once. Buffers of other names or shapes are kept until asked for again."""
        todo: list[tuple[Spec, Future[torch.Tensor]]] = []
        with self._lock:
            for name, spec in specs.items():
                spec = (tuple(spec[0]), spec[1])
                held = self._made.get(name)
                if held is not None and held[0] == spec:
                    continue
                future: Future[torch.Tensor] = Future()
                self._made[name] = (spec, future)
                todo.append((spec, future))
        if not todo:
            return

        def make() -> None:
            started = time.perf_counter()
            for spec, future in todo:
                self._make_into(future, spec)
            self.reserve_seconds = time.perf_counter() - started
            log.info("host buffers: %d made in %.1f s", len(todo), self.reserve_seconds)

        threading.Thread(target=make, name="host-buffers", daemon=True).start()

    def buffer(
        self, name: str, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype
    ) -> torch.Tensor:
        """The buffer `name` of this shape and dtype: the one reserved (waiting for it if it is
        still being made), or one made now."""
        spec = (tuple(shape), dtype)
        with self._lock:
            held = self._made.get(name)
            if held is None or held[0] != spec:
                future: Future[torch.Tensor] = Future()
                self._made[name] = (spec, future)
                held = None
        if held is None:
            self._make_into(future, spec)
            return future.result()
        return held[1].result()

    def _make_into(self, future: Future[torch.Tensor], spec: Spec) -> None:
        try:
            future.set_result(make_buffer(spec, self.page_lock, self.shared))
        except BaseException as exc:  # raised to whoever asks for that buffer
            future.set_exception(exc)

    def wait(self) -> None:
        """Return once every buffer asked for so far is made (or has failed: `buffer` raises
        it). Page-locking beside a stream's first clips delays their launches; a benchmark of
        the steady loop waits here first."""
        with self._lock:
            held = [f for _, f in self._made.values()]
        wait(held)

    def nbytes(self) -> int:
        """Bytes of the buffers made so far."""
        with self._lock:
            held = [f for _, f in self._made.values()]
        return sum(
            t.numel() * t.element_size()
            for f in held
            if f.done() and f.exception() is None
            for t in [f.result()]
        )

    def clear(self) -> None:
        """Drop every buffer (their memory goes back once nobody else holds them)."""
        with self._lock:
            self._made = {}
