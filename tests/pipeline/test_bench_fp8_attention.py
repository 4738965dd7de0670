"""The FP8 attention benchmark runs end to end (CPU: the emulated path) and reports each row."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_benchmark_dry_run_reports_every_row(tmp_path):
    out = tmp_path / "fp8-attention.json"
    subprocess.run(
        [sys.executable, "-m", "ops.bench.fp8_attention", "--device", "cpu", "--quick",
         "--out", str(out)],
        cwd=REPO, check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert set(rows) == {"bf16", "fp8_emulated", "int8_qk_emulated", "quantise_qkv"}
    assert report["fp8_path"].startswith("emulated")
    assert report["layers"] == 40 and report["head_dim"] == 128
    # bf16 attention is close to float32; the fp8 emulation pays its three mantissa bits
    assert rows["bf16"]["rel_error_vs_fp32"] < 0.01
    assert 0.005 < rows["fp8_emulated"]["rel_error_vs_fp32"] < 0.15
    # int8 logits (7 bits, a scale per token and head) err less than e4m3 and more than bf16
    int8 = rows["int8_qk_emulated"]["rel_error_vs_fp32"]
    assert rows["bf16"]["rel_error_vs_fp32"] < int8 < rows["fp8_emulated"]["rel_error_vs_fp32"]
    for r in rows.values():
        assert r["seconds"] > 0 and r["per_step_s"] == r["seconds"] * 40
    # the error taken apart: every rounding alone costs less than all of them together
    parts = report["rel_error_by_rounding"]
    assert set(parts) == {"q", "k", "v", "p", "o", "all_but_o", "all"}
    assert parts["all"] == rows["fp8_emulated"]["rel_error_vs_fp32"]
    assert all(0 < parts[n] < parts["all"] for n in ("q", "k", "v", "p", "o", "all_but_o"))
