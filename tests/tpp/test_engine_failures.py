"""A rank that dies or hangs ends the stream with a clear error, within a bounded time; every
rank process is ended and reaped, and the engine can be restarted."""

from __future__ import annotations

import os
import signal
import time

import pytest

from pipeline.tpp import EngineError
from tests.tpp.conftest import config, rank_children, request


@pytest.mark.parametrize("victim", [1, pytest.param(0, marks=pytest.mark.slow)])
def test_a_rank_killed_mid_stream_raises_in_the_caller_and_leaves_no_process(
    engines, reference, victim
):
    before = set(rank_children())
    engine = engines.fresh(config(2))
    pids = engine.pids
    assert set(pids) <= set(rank_children())
    stream = engine.open(request(12, 4))
    next(stream)
    os.kill(pids[victim], signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(EngineError, match=rf"rank {victim} died \(killed by signal 9\)"):
        for _ in stream:
            pass
    assert time.monotonic() - started < 20
    left = rank_children()
    assert not set(pids) & set(left)  # ended and reaped: no zombies either
    assert set(left) <= before
    with pytest.raises(EngineError, match="call restart"):
        engine.open(request(1, 4))

    engine.restart()
    restarted = engine.pids
    stream = engine.open(request(3, 4))
    assert next(stream).frames.tobytes() == reference(3, 4)[0].tobytes()
    engine.shutdown()  # with a stream open
    assert not engine.pids and not set(restarted) & set(rank_children())
    with pytest.raises(EngineError, match="not started"):
        engine.open(request(1, 4))


@pytest.mark.slow
def test_a_hung_rank_is_given_up_after_the_stall_timeout(engines):
    engine = engines.fresh(config(2, stall_timeout_s=8.0))
    pids = engine.pids
    stream = engine.open(request(12, 4))
    next(stream)
    os.kill(pids[1], signal.SIGSTOP)  # alive, silent
    started = time.monotonic()
    with pytest.raises(EngineError, match="no rank answered for 8 s"):
        for _ in stream:
            pass
    assert time.monotonic() - started < 25
    assert not set(pids) & set(rank_children())
