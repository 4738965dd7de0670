"""The TPP engine is an engine of the contract (pipeline.engine): the caller written against
the Protocol alone (tests/pipeline/contract.py) renders, checkpoints through the ranks' own
shards and resumes, with the single-device frames."""

from __future__ import annotations

import numpy as np

from pipeline.engine import Engine
from tests.pipeline.contract import render_with_a_resume
from tests.tpp.conftest import request


def test_the_tpp_engine_is_an_engine(engine2, reference, tmp_path):
    assert isinstance(engine2, Engine)
    assert engine2.writes_own_checkpoints is True
    got = render_with_a_resume(engine2, request(3, 4), tmp_path / "ckpt", cut=1)
    want = reference(3, 4)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a, b)
