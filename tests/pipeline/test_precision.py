"""Precision is part of a stream's identity: chosen when the engine is built, recorded in
every state and checkpoint, enforced on resume; within a precision, resume is exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline import Generator, params
from pipeline import state as state_io
from pipeline.engine import PrecisionMismatch
from tests.pipeline.conftest import request


@pytest.fixture(scope="module")
def tiny_fp8() -> Generator:
    return Generator.from_preset("tiny", device="cpu", random_weights=True, precision="fp8")


def test_the_precisions_and_their_check():
    assert params.PRECISIONS == ("bf16", "fp8", "fp8-attention")
    assert params.PRECISION_DEFAULT == "bf16"
    assert params.check_precision("fp8") == "fp8"
    assert params.check_precision("fp8-attention") == "fp8-attention"
    assert [params.linears_in_fp8(p) for p in params.PRECISIONS] == [False, True, True]
    assert [params.attention_in_fp8(p) for p in params.PRECISIONS] == [False, False, True]
    with pytest.raises(ValueError, match="use one of: bf16, fp8, fp8-attention"):
        params.check_precision("fp16")
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        Generator.from_preset("tiny", random_weights=True, precision="int8")


def test_the_engine_says_its_precision(tiny, tiny_fp8, tiny_fp8_attention):
    assert tiny.precision == "bf16" and tiny_fp8.precision == "fp8"
    assert tiny_fp8_attention.precision == "fp8-attention"
    # the fp8 precisions quantise the blocks' linear layers only
    for gen in (tiny_fp8, tiny_fp8_attention):
        dit = gen.components.dit
        assert all(block.self_attn.q.weight is None for block in dit.blocks)
        assert dit.head.head.weight is not None and dit.patch_embedding.weight is not None
    # and fp8-attention's streams hold their self-attention caches in e4m3
    req = request(seconds=1.0, num_clips=1)
    for gen, dtype in ((tiny_fp8, torch.float32), (tiny_fp8_attention, torch.float8_e4m3fn)):
        stream = gen.open(req)
        assert {c.kv.dtype for c in stream.caches} == {dtype}
        stream.close()


def test_a_dit_is_set_to_a_precision_once(tiny_fp8):
    with pytest.raises(ValueError, match="already runs at precision 'fp8'"):
        tiny_fp8.components.dit.set_precision("fp8-attention")


def test_every_state_and_checkpoint_records_its_precision(
    tiny, tiny_fp8, tiny_fp8_attention, tmp_path
):
    for gen, want in ((tiny, "bf16"), (tiny_fp8, "fp8"), (tiny_fp8_attention, "fp8-attention")):
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


def test_fp8_and_fp8_attention_refuse_each_others_checkpoints(tiny_fp8, tiny_fp8_attention):
    req = request(seconds=2.0, num_clips=2)
    for saver, other in ((tiny_fp8, tiny_fp8_attention), (tiny_fp8_attention, tiny_fp8)):
        stream = saver.open(req)
        next(stream)
        state = stream.state_dict()
        with pytest.raises(PrecisionMismatch, match=f"runs '{other.precision}'"):
            other.open(req, state=state)


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


@pytest.mark.parametrize("precision", ["fp8", "fp8-attention"])
def test_fp8_resumes_exactly(precision, tiny_fp8, tiny_fp8_attention, tmp_path):
    # fp8-attention: the resumed stream's sink prefill picks the multipliers its rings were
    # written with (after the adaptive sink rescaled them), from the state's sink alone
    gen = tiny_fp8 if precision == "fp8" else tiny_fp8_attention
    req = request(seconds=4.0, num_clips=4)
    whole = [c.frames for c in gen.open(req)]
    stream = gen.open(req)
    first = [next(stream).frames for _ in range(2)]
    stream.checkpoint(tmp_path / "ckpt")
    other = Generator.from_preset("tiny", device="cpu", random_weights=True, precision=precision)
    rest = [c.frames for c in other.open(req, resume_from=tmp_path / "ckpt")]
    assert len(first + rest) == 4
    for got, want in zip(first + rest, whole, strict=True):
        assert np.array_equal(got, want)


def test_fp8_frames_differ_from_bf16_frames_by_quantisation_only(
    tiny, tiny_fp8, tiny_fp8_attention
):
    req = request(seconds=1.0, num_clips=1)
    a = next(iter(tiny.open(req))).frames.astype(np.float64)
    for gen in (tiny_fp8, tiny_fp8_attention):
        b = next(iter(gen.open(req))).frames.astype(np.float64)
        psnr = 10 * np.log10(255**2 / np.mean((a - b) ** 2))
        assert 25 < psnr < 80


def test_fp8_attention_states_hold_their_rings_in_e4m3(tiny_fp8, tiny_fp8_attention):
    req = request(seconds=2.0, num_clips=2)
    rings = {}
    for gen in (tiny_fp8, tiny_fp8_attention):
        stream = gen.open(req)
        next(stream)
        tensors = stream.state_dict()["tensors"]
        rings[gen.precision] = {k: t for k, t in tensors.items() if k.endswith(".ring")}
        stream.close()
    assert rings["fp8"].keys() == rings["fp8-attention"].keys() and rings["fp8"]
    for name, ring in rings["fp8-attention"].items():
        assert ring.dtype == torch.float8_e4m3fn and ring.shape == rings["fp8"][name].shape
        assert ring.float().abs().max() > 0  # written, not left empty
