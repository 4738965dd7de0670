"""The TPP benchmark runs end to end (tiny model, CPU ranks, gloo) and reports every figure."""

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
    out = tmp_path / "tpp.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.bench.tpp",
            "--quick",
            "--layouts",
            "2,1,1x2",
            "--both-splits",
            "2",
            "--checkpoint-layout",
            "2",
            "--clips",
            "2",
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
    two, one, side = report["layouts"]
    assert (two["layout"], one["layout"], side["layout"]) == ("2", "1", "1x2")
    splits = [s["split"] for s in two["streams"]]
    assert splits == ["layers", "layers", "steps"]  # the checkpointed one is timed again
    ck = two["streams"][0]["checkpoint"]
    assert ck["bytes"] > 0 and len(ck["capture_s"]) == len(ck["write_s"]) == 2
    for layout in (two, one):
        assert layout["best_fps"] > 0 and layout["scaling_efficiency"] > 0
        for stream in layout["streams"]:
            assert stream["first_clip_s"] > stream["first_block_s"] > 0
            for rank in stream["ranks"]:
                assert 0.0 <= rank["idle_fraction"] <= 1.0 and rank["busy_per_block_s"] > 0
                assert 0.0 <= rank["idle_of_block_time"] <= 1.0
    assert one["scaling_efficiency"] == pytest.approx(1.0)
    assert two["measured_vae_cost_layer_steps"] > 0

    # two engines side by side: one stream each, timed over the same clips, FPS summed
    assert side["engines"] == 2 and side["gpus"] == 2
    assert len(side["streams"]) == 2 and side["fps"] == pytest.approx(sum(side["engine_fps"]))
    assert all(f > 0 for f in side["engine_fps"])
    assert side["overlap_of_longest_window"] > 0.5
    assert side["scaling_efficiency"] == pytest.approx(side["fps"] / (2 * one["best_fps"]))
