"""Precision is part of a stream's identity: chosen when the engine is built, recorded in
every state and checkpoint, enforced on resume; within a precision, resume is exact."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline import Generator, params
from pipeline import state as state_io
from pipeline.engine import PrecisionMismatch
from tests.pipeline.conftest import request


@pytest.fixture(scope="module")
def tiny_fp8() -> Generator:
    return Generator.from_preset("tiny", device="cpu", random_weights=True, precision="fp8")


def test_the_precisions_and_their_check():
    assert params.PRECISIONS == ("bf16", "fp8") and params.PRECISION_DEFAULT == "bf16"
    assert params.check_precision("fp8") == "fp8"
    with pytest.raises(ValueError, match="use one of: bf16, fp8"):
        params.check_precision("fp16")
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        Generator.from_preset("tiny", random_weights=True, precision="int8")


def test_the_engine_says_its_precision(tiny, tiny_fp8):
    assert tiny.precision == "bf16" and tiny_fp8.precision == "fp8"
    # fp8 quantises the blocks' linear layers only
    dit = tiny_fp8.components.dit
    assert all(block.self_attn.q.weight is None for block in dit.blocks)
    assert dit.head.head.weight is not None and dit.patch_embedding.weight is not None


def test_every_state_and_checkpoint_records_its_precision(tiny, tiny_fp8, tmp_path):
    for gen, want in ((tiny, "bf16"), (tiny_fp8, "fp8")):
        stream = gen.open(request(seconds=2.0, num_clips=2))
        next(stream)
        assert stream.state_dict()["meta"]["precision"] == want
        stream.checkpoint(tmp_path / want)
        manifest = json.loads((tmp_path / want / "manifest.json").read_text())
        assert manifest["meta"]["precision"] == want


def test_a_checkpoint_resumes_only_at_its_own_precision(tiny, tiny_fp8, tmp_path):
    req = request(seconds=2.0, num_clips=2)
    stream = tiny.open(req)
    next(stream)
    stream.checkpoint(tmp_path / "bf16")
    with pytest.raises(PrecisionMismatch) as err:
        tiny_fp8.open(req, resume_from=tmp_path / "bf16")
    assert isinstance(err.value, ValueError)
    assert (err.value.saved, err.value.engine) == ("bf16", "fp8")
    assert "precision 'bf16'" in str(err.value) and "runs 'fp8'" in str(err.value)
    assert "Resume it on an engine built with precision 'bf16'" in str(err.value)

    stream = tiny_fp8.open(req)
    next(stream)
    state = stream.state_dict()
    with pytest.raises(PrecisionMismatch, match="rendered at precision 'fp8'"):
        tiny.open(req, state=state)


def test_a_checkpoint_from_before_precisions_counts_as_bf16(tiny, tiny_fp8, tmp_path):
    req = request(seconds=2.0, num_clips=2)
    stream = tiny.open(req)
    next(stream)
    state = stream.state_dict()
    del state["meta"]["precision"]
    state_io.write_checkpoint(state, tmp_path / "old")
    assert [c.index for c in tiny.open(req, resume_from=tmp_path / "old")] == [1]
    with pytest.raises(PrecisionMismatch):
        tiny_fp8.open(req, resume_from=tmp_path / "old")


def test_fp8_resumes_exactly(tiny_fp8, tmp_path):
    req = request(seconds=4.0, num_clips=4)
    whole = [c.frames for c in tiny_fp8.open(req)]
    stream = tiny_fp8.open(req)
    first = [next(stream).frames for _ in range(2)]
    stream.checkpoint(tmp_path / "ckpt")
    other = Generator.from_preset("tiny", device="cpu", random_weights=True, precision="fp8")
    rest = [c.frames for c in other.open(req, resume_from=tmp_path / "ckpt")]
    assert len(first + rest) == 4
    for got, want in zip(first + rest, whole, strict=True):
        assert np.array_equal(got, want)


def test_fp8_frames_differ_from_bf16_frames_by_quantisation_only(tiny, tiny_fp8):
    req = request(seconds=1.0, num_clips=1)
    a = next(iter(tiny.open(req))).frames.astype(np.float64)
    b = next(iter(tiny_fp8.open(req))).frames.astype(np.float64)
    psnr = 10 * np.log10(255**2 / np.mean((a - b) ** 2))
    assert 25 < psnr < 80
