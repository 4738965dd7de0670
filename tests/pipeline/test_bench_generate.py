"""The generation benchmark runs end to end (tiny model, CPU) and reports every figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_benchmark_dry_run_reports_every_figure(tmp_path):
    out = tmp_path / "generate.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.bench.generate",
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--quick",
            "--mem-online",
            "2",
            "--mem-offline",
            "1,2",
            "--state-dir",
            str(tmp_path),
            "--out",
            str(out),
        ],
        cwd=REPO,
        env=env,
        check=True,
        timeout=600,
        capture_output=True,
    )
    report = json.loads(out.read_text())
    g = report["generation"]
    assert set(g["step_s"]) == {"step0", "step1", "step2", "step3"}
    assert g["fps"] > 0 and g["mfu"] > 0 and g["vae_decode_per_block_s"] > 0
    assert g["state"]["bytes"] == sum(g["state"]["bytes_by_shard"].values()) > 0
    assert g["state"]["write_s"] > 0 and g["step_eager_s"] > 0
    assert [s["clips"] for s in report["memory"]["online"]["samples"]] == [2]
    assert [s["clips"] for s in report["memory"]["offline"]["samples"]] == [1, 2]
