"""Host buffers for state captures: made ahead in a thread, of exactly the size asked for,
reused while the shape stays, and never shared between two names."""

from __future__ import annotations

import threading

import pytest
import torch

from pipeline import host_buffers as hb
from pipeline.host_buffers import HostBuffers


def test_reserved_buffers_are_made_in_a_thread_and_handed_out_once_made(monkeypatch):
    gate = threading.Event()
    made_in: list[str] = []
    make = hb.make_buffer

    def slow_make(spec, page_lock, shared=False):
        gate.wait(timeout=30)
        made_in.append(threading.current_thread().name)
        return make(spec, page_lock, shared)

    monkeypatch.setattr(hb, "make_buffer", slow_make)
    buffers = HostBuffers(page_lock=False)
    buffers.reserve({"ring": ((3, 5), torch.bfloat16), "sink": ((7,), torch.float32)})
    assert buffers.nbytes() == 0  # reserve returned before anything was made
    got: list[torch.Tensor] = []
    waiter = threading.Thread(
        target=lambda: got.append(buffers.buffer("ring", (3, 5), torch.bfloat16))
    )
    waiter.start()
    gate.set()
    waiter.join(timeout=30)
    assert got and got[0].shape == (3, 5) and got[0].dtype == torch.bfloat16
    assert made_in and all(name == "host-buffers" for name in made_in)
    assert buffers.buffer("sink", (7,), torch.float32).shape == (7,)
    assert buffers.nbytes() == 3 * 5 * 2 + 7 * 4


def test_a_buffer_is_reused_while_its_shape_stays_and_replaced_when_it_changes():
    buffers = HostBuffers(page_lock=False)
    a = buffers.buffer("decoder.feat.3", (2, 4), torch.float32)
    assert buffers.buffer("decoder.feat.3", torch.Size([2, 4]), torch.float32) is a
    buffers.reserve({"decoder.feat.3": ((2, 4), torch.float32)})  # nothing new to make
    assert buffers.buffer("decoder.feat.3", (2, 4), torch.float32) is a
    b = buffers.buffer("decoder.feat.3", (1, 4), torch.float32)
    assert b is not a and b.shape == (1, 4)
    c = buffers.buffer("decoder.feat.3", (1, 4), torch.bfloat16)
    assert c is not b and c.dtype == torch.bfloat16
    other = buffers.buffer("decoder.feat.4", (1, 4), torch.bfloat16)
    assert other.data_ptr() != c.data_ptr()


def test_a_buffer_has_exactly_the_size_asked_for():
    """No rounding up (torch's page-locked allocator rounds to a power of two: an 11 GB ring
    cache would take 16 GB)."""
    buf = hb.make_buffer(((3, 1000, 3), torch.bfloat16), page_lock=False)
    assert buf.untyped_storage().nbytes() == 3 * 1000 * 3 * 2


def test_shared_buffers_live_in_shared_memory():
    buf = hb.make_buffer(((4, 4), torch.float32), page_lock=False, shared=True)
    assert buf.is_shared()


def test_a_failed_reservation_raises_where_the_buffer_is_asked_for(monkeypatch):
    def broken(spec, page_lock, shared=False):
        raise MemoryError("no memory for it")

    monkeypatch.setattr(hb, "make_buffer", broken)
    buffers = HostBuffers(page_lock=False)
    buffers.reserve({"ring": ((2,), torch.float32)})
    with pytest.raises(MemoryError, match="no memory"):
        buffers.buffer("ring", (2,), torch.float32)


def test_streams_of_one_generator_share_its_buffers(tiny):
    """A worker page-locks its capture memory once: every stream of a generator captures into
    the generator's buffers, not into buffers of its own."""
    from tests.pipeline.conftest import request

    req = request(seconds=2.0, num_clips=3)
    first = tiny.open(req)
    held = first._host_buffers
    second = tiny.open(req)
    assert held is tiny.host_buffers and second._host_buffers is tiny.host_buffers
    assert tiny.host_buffers.page_lock is False  # on the CPU: nothing to page-lock


def test_memory_is_page_locked_in_bounded_pieces_split_at_page_aligned_addresses(monkeypatch):
    """One registration of a whole 11 GB buffer stalls the rendering thread's CUDA calls for
    its duration; pieces bound each stall."""
    monkeypatch.setattr(hb, "CHUNK_BYTES", 1 << 16)
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(hb, "_register", lambda ptr, n: calls.append((ptr, n)) or True)
    buf = torch.empty(300_001, dtype=torch.uint8)
    pieces = hb.register(buf)
    assert pieces == [ptr for ptr, _ in calls]
    assert all(n <= 1 << 16 for _, n in calls)
    # the pieces cover the buffer exactly, in order, and meet only at multiples of the piece
    # size (page-aligned: no page belongs to two registrations)
    assert calls[0][0] == buf.data_ptr()
    assert sum(n for _, n in calls) == buf.nbytes
    for (p0, n0), (p1, _) in zip(calls, calls[1:], strict=False):
        assert p0 + n0 == p1 and p1 % (1 << 16) == 0 and p1 % 4096 == 0


def test_a_piece_that_cannot_be_locked_unlocks_the_pieces_before_it(monkeypatch):
    monkeypatch.setattr(hb, "CHUNK_BYTES", 1 << 16)
    locked: list[int] = []
    unlocked: list[int] = []

    def register(ptr, n):
        if len(locked) == 2:
            return False
        locked.append(ptr)
        return True

    monkeypatch.setattr(hb, "_register", register)
    monkeypatch.setattr(hb, "unregister", unlocked.append)
    assert hb.register(torch.empty(1 << 18, dtype=torch.uint8)) is None
    assert sorted(unlocked) == sorted(locked) and len(locked) == 2


@pytest.mark.parametrize("direction", ["to_host", "from_host"])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_a_copy_is_split_at_the_host_buffers_pieces_and_copies_every_value(
    monkeypatch, direction, layout
):
    """The driver refuses a copy that spans two registrations: every copy to or from a
    buffer registered in pieces stays within one piece, whatever the other side's layout."""
    monkeypatch.setattr(hb, "CHUNK_BYTES", 1 << 12)
    host = torch.empty(37, 101, dtype=torch.float32)
    other = torch.randn(37, 101, dtype=torch.float32)
    if layout == "strided":  # same values and shape, column-major (a channels-last cache)
        other = other.t().contiguous().t()
    if direction == "from_host":
        host.copy_(torch.randn(37, 101))
        dst, src = other, host
    else:
        dst, src = host, other
    expected = src.clone()
    spans: list[tuple[int, int]] = []
    real_copy = torch.Tensor.copy_

    def recording_copy(self, source, non_blocking=False):
        for t in (self, source):
            if t.untyped_storage().data_ptr() == host.untyped_storage().data_ptr():
                spans.append((t.data_ptr(), t.nbytes))
        return real_copy(self, source, non_blocking=non_blocking)

    monkeypatch.setattr(torch.Tensor, "copy_", recording_copy)
    assert hb.copy_piecewise(dst, src) is dst
    pieces = hb.chunks(host.data_ptr(), host.nbytes)
    monkeypatch.undo()
    assert torch.equal(dst, expected)
    assert len(pieces) > 1
    assert sum(n for _, n in spans) == host.nbytes  # every byte once, each copy in one piece
    for ptr, n in spans:
        assert any(p <= ptr and ptr + n <= p + length for p, length in pieces)
    with pytest.raises(ValueError, match="copy of"):
        hb.copy_piecewise(dst, src[:3])


def test_wait_returns_once_every_reserved_buffer_is_made(monkeypatch):
    gate = threading.Event()
    make = hb.make_buffer

    def slow_make(spec, page_lock, shared=False):
        gate.wait(timeout=30)
        return make(spec, page_lock, shared)

    monkeypatch.setattr(hb, "make_buffer", slow_make)
    buffers = HostBuffers(page_lock=False)
    buffers.reserve({"ring": ((3, 5), torch.bfloat16), "sink": ((7,), torch.float32)})
    waited = threading.Event()
    waiter = threading.Thread(target=lambda: (buffers.wait(), waited.set()))
    waiter.start()
    assert not waited.wait(timeout=0.2)  # the buffers are still being made
    assert buffers.nbytes() == 0
    gate.set()
    waiter.join(timeout=30)
    assert waited.is_set() and buffers.nbytes() == 3 * 5 * 2 + 7 * 4
