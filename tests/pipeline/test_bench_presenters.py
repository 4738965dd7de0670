"""The presenter benchmark runs end to end (tiny model, CPU) and finds every open's frames
equal to a cold open's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_benchmark_dry_run(tmp_path):
    out = tmp_path / "presenters.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "ops.bench.presenters", "--preset", "tiny", "--device", "cpu"]
    subprocess.run([*cmd, "--threads", "1", "--out", str(out)], check=True, env=env, timeout=600)
    r = json.loads(out.read_text())
    opens = r["opens"]
    assert list(opens) == [
        "cold (first)",
        "cold",
        "cold + store",
        "cached (device)",
        "cached (host)",
    ]
    assert [o["presenter_cached"] for o in opens.values()] == [False, False, False, True, True]
    assert all(o["same_frames_as_cold"] for o in opens.values())
    assert r["entry_total_bytes"] > 0 and set(r["entry_bytes"]) == {
        "text",
        "motion",
        "sink",
        "decoder",
    }
