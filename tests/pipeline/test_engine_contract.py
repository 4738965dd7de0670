"""The single-device generator is an engine of the contract (pipeline.engine): a caller that
knows only the Protocol renders, checkpoints and resumes with it (the TPP engine:
tests/tpp/test_engine_contract.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import Generator
from pipeline.engine import Engine, RenderStream
from tests.pipeline.conftest import request
from tests.pipeline.contract import render_with_a_resume


def test_the_generator_is_an_engine(tiny, tmp_path):
    assert isinstance(tiny, Engine)
    assert tiny.writes_own_checkpoints is False
    req = request(seconds=3.0, num_clips=3)
    want = [c.frames for c in tiny.open(req)]
    got = render_with_a_resume(tiny, req, tmp_path / "ckpt", cut=2)
    assert len(got) == 3
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a, b)


def test_its_streams_checkpoint_themselves_too(tiny, tmp_path):
    req = request(seconds=2.0, num_clips=2)
    stream = tiny.open(req)
    assert isinstance(stream, RenderStream)
    first = next(stream).frames
    stream.checkpoint(tmp_path / "ckpt")
    resumed = tiny.open(req, resume_from=tmp_path / "ckpt")
    assert [c.index for c in resumed] == [1]
    assert np.array_equal(first, next(iter(tiny.open(req))).frames)


def test_shutdown_closes_the_stream_and_keeps_the_models():
    gen = Generator.from_preset("tiny", device="cpu", random_weights=True)
    stream = gen.open(request(seconds=1.0, num_clips=1))
    gen.shutdown()
    with pytest.raises(RuntimeError, match="closed"):
        next(stream)
    gen.shutdown()  # idempotent
    assert len(list(gen.open(request(seconds=1.0, num_clips=1)))) == 1
