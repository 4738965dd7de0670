"""The page-locking benchmark runs end to end (CPU: nothing is page-locked) and reports every
way of making buffers and every copy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_benchmark_dry_run_reports_every_way(tmp_path):
    out = tmp_path / "host-register.json"
    subprocess.run(
        [sys.executable, "-m", "ops.bench.host_register", "--device", "cpu", "--gb", "0.05",
         "--copy-gb", "0.02", "--size", "64", "--per-block", "2", "--out", str(out)],
        cwd=REPO, check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    report = json.loads(out.read_text())
    for way in ("alone", "whole", "chunked", "prefaulted", "torch_pin"):
        assert report[way]["blocks"] >= 1 and report[way]["block_mean_s"] > 0
    assert all(report[w]["make_s"] is not None for w in ("whole", "chunked", "prefaulted"))
    speeds = report["copy_gb_s"]
    assert set(speeds) == {"whole", "pieces_one_copy", "pieces_piecewise", "pageable"}
    assert all(isinstance(v, float) and v > 0 for v in speeds.values())  # no driver to refuse
