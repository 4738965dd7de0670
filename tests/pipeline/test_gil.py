"""Background loads shorten CPython's switch interval while they run (pipeline/gil.py): the
DiT's load and a checkpoint's restore, each in a thread of its own beside the opening thread."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
import torch

from pipeline import gil
from pipeline import state as state_io
from pipeline.components import build_deferred
from pipeline.presets import get_preset
from tests.pipeline.conftest import request

WAIT_S = 120  # a bound on conditions, never a sleep


def near(seconds: float):  # CPython keeps the interval in whole microseconds
    return pytest.approx(seconds, abs=2e-6)


@pytest.fixture(autouse=True)
def default_interval():
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield
    sys.setswitchinterval(before)


def test_a_load_shortens_the_interval_and_gives_it_back():
    with gil.loading():
        assert sys.getswitchinterval() == near(gil.LOADING_SWITCH_INTERVAL)
    assert sys.getswitchinterval() == near(0.005)


def test_an_interval_already_shorter_is_never_lengthened():
    sys.setswitchinterval(0.0001)
    with gil.loading():
        assert sys.getswitchinterval() == near(0.0001)
    assert sys.getswitchinterval() == near(0.0001)


def test_overlapping_loads_keep_it_short_until_the_last_ends():
    first_in, second_in, first_may_end, first_out = (threading.Event() for _ in range(4))

    def first() -> None:
        with gil.loading():
            first_in.set()
            assert first_may_end.wait(WAIT_S)
        first_out.set()

    t = threading.Thread(target=first)
    t.start()
    assert first_in.wait(WAIT_S)
    with gil.loading():
        second_in.set()
        first_may_end.set()
        assert first_out.wait(WAIT_S)
        t.join(WAIT_S)
        # the first load ended while the second runs: still short
        assert sys.getswitchinterval() == near(gil.LOADING_SWITCH_INTERVAL)
    assert sys.getswitchinterval() == near(0.005)


def test_a_failed_load_gives_the_interval_back():
    with pytest.raises(RuntimeError), gil.loading():
        raise RuntimeError("read failed")
    assert sys.getswitchinterval() == near(0.005)


def test_the_dit_loads_with_the_short_interval():
    seen: list[float] = []
    preset = get_preset("tiny")
    comps = build_deferred(
        preset,
        torch.device("cpu"),
        torch.float32,
        "bf16",
        seed=0,
        prepare=lambda _dit: seen.append(sys.getswitchinterval()),
    )
    assert comps.dit_loading is not None
    comps.dit_loading.result()
    assert seen == [near(gil.LOADING_SWITCH_INTERVAL)]
    assert sys.getswitchinterval() == near(0.005)


def test_a_checkpoint_is_restored_with_the_short_interval(tiny, tmp_path, monkeypatch):
    req = request(seconds=3.0, num_clips=3)
    stream = tiny.open(req)
    first = next(stream)
    stream.checkpoint(tmp_path / "ckpt")
    want = [c.frames for c in stream]
    del first

    seen: list[float] = []
    fill = state_io.CheckpointSource.fill

    def watched(self, targets):  # the real read, its interval noted
        seen.append(sys.getswitchinterval())
        return fill(self, targets)

    monkeypatch.setattr(state_io.CheckpointSource, "fill", watched)
    resumed = tiny.open(req, resume_from=tmp_path / "ckpt")
    got = [c.frames for c in resumed]
    assert seen == [near(gil.LOADING_SWITCH_INTERVAL)]
    assert sys.getswitchinterval() == near(0.005)
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w)
