"""The TPP engine runs the fp8 precisions too (every DiT rank quantises its own copy of the
DiT): its frames are the single-device fp8 frames, its checkpoints record the precision, and
an engine of another precision refuses them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline import Generator
from pipeline.engine import PrecisionMismatch
from pipeline.tpp import EngineConfig
from tests.tpp.conftest import config, request


@pytest.mark.parametrize("precision", ["fp8", "fp8-attention"])
def test_an_fp8_engine_renders_the_single_device_fp8_frames(precision, engines, engine2, tmp_path):
    # split "layers" cuts step 1 between the ranks: with fp8-attention, each rank's sink
    # prefill picks the multipliers of its own layers' caches
    engine = engines.get(f"2-{precision}", config(2, precision=precision))
    assert engine.precision == precision and engine2.precision == "bf16"
    assert all(info["precision"] == precision for info in engine.ready_info)
    single = Generator.from_preset("tiny", device="cpu", random_weights=True, precision=precision)
    want = [c.frames for c in single.open(request(3, 3))]

    stream = engine.open(request(3, 3), split="layers")  # a cut inside step 1
    got = [next(stream).frames]
    stream.checkpoint(tmp_path / "ckpt")
    manifest = json.loads((tmp_path / "ckpt" / "manifest.json").read_text())
    assert manifest["meta"]["precision"] == precision
    got += [c.frames for c in stream]
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a, b)

    resumed = engine.open(request(3, 3), resume_from=tmp_path / "ckpt")
    assert np.array_equal(next(resumed).frames, want[1])
    resumed.close()
    with pytest.raises(PrecisionMismatch, match=f"rendered at precision '{precision}'"):
        engine2.open(request(3, 3), resume_from=tmp_path / "ckpt")


def test_an_engine_of_an_unknown_precision_is_refused_before_it_starts():
    with pytest.raises(ValueError, match="unknown precision 'fp4'"):
        EngineConfig(precision="fp4")
