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
