"""The attention-capture benchmark runs end to end on the tiny model (CPU: FP8 attention's
emulation) and reports each layer it was asked for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_benchmark_dry_run_reports_every_layer(tmp_path):
    out = tmp_path / "capture.json"
    subprocess.run(
        [sys.executable, "-m", "ops.bench.attention_capture", "--preset", "tiny", "--device",
         "cpu", "--size", "64*64", "--clips-before", "1", "--layers", "0,1",
         "--chunk-keys", "40", "--out", str(out)],
        cwd=REPO, check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert report["fp8_path"] == "emulated" and report["chunk_keys"] == 40
    assert set(report["layers"]) == {"0", "1"}
    keys = {f["keys"] for f in report["layers"].values()}
    assert len(keys) == 1 and keys.pop() > 40  # the whole cache, in more than one chunk
    for figures in report["layers"].values():
        for name in ("emulated", "one_pass", "chunks"):
            # three mantissa bits cost a few per cent, never the output's scale
            assert 1e-3 < figures[name]["rel_error"] < 0.1
            assert 0.9 < figures[name]["norm_ratio"] < 1.1
        # the DiT runs what the emulation computes
        chunks, emulated = figures["chunks"]["rel_error"], figures["emulated"]["rel_error"]
        assert abs(chunks - emulated) < 1e-3
        assert figures["logit_std"] > 0
