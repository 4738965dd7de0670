"""ops/bench/lifecycle.py at toy sizes: it runs end to end, writes its JSON, and its overhead
model says what it should."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ops.bench import lifecycle as bench


def test_the_overhead_model():
    # 1 s capture, 30 s of background work, 2 s clips
    assert bench.overhead(1.0, 30.0, 2.0, 10) == pytest.approx((1 + 10) / 20)  # waits 10 s
    assert bench.overhead(1.0, 30.0, 2.0, 20) == pytest.approx(1 / 40)  # background fits
    assert bench.smallest_interval(1.0, 30.0, 2.0, 0.02) == 25
    # the 14B figures of docs/benchmarks.md: 0.92 s capture, 4.74 s clips, 46.2 s background
    assert bench.smallest_interval(0.92, 46.2, 4.74, 0.02) == 10
    assert bench.overhead(0.92, 46.2, 4.74, 20) == pytest.approx(0.0097, abs=1e-4)


@pytest.mark.slow
def test_the_benchmark_runs_at_toy_size(tmp_path: Path):
    out = tmp_path / "lifecycle.json"
    doc = bench.main(
        [
            "--parts", "engine,tiny",
            "--engine-preset", "tiny",
            "--engine-device", "cpu",
            "--engine-size", "64*64",
            "--engine-clips", "1",
            "--captures", "2",
            "--write-steps", "1",
            "--infer-frames", "12",
            "--tiny-clips", "4",
            "--tiny-intervals", "2",
            "--tiny-repeats", "1",
            "--tiny-storage", "dir",
            "--workdir", str(tmp_path / "work"),
            "--out", str(out),
        ]
    )  # fmt: skip
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc, default=str))
    engine = doc["parts"]["engine"]
    assert engine["state_bytes"] > engine["measured_on_bytes"] > 0  # 1 of 4 steps written
    assert set(engine["shard_bytes"]) == {
        "sink",
        "decoder",
        "prompt",
        *(f"step-{i}" for i in range(4)),
    }
    assert engine["clip_s"] > 0 and engine["smallest_interval_under_2pct"] >= 1
    tiny = doc["parts"]["tiny"]["by_interval"]
    assert set(tiny) == {"2", "none"}
    assert tiny["2"]["checkpoint_bytes"] > 0 and tiny["none"]["checkpoint_bytes"] == 0
    assert 0 <= tiny["2"]["stall_fraction"] < 1


@pytest.mark.slow
def test_the_tiers_part_runs_at_toy_size(tmp_path: Path):
    """The two tiers' benchmark (a local checkpoint, resumed in fresh processes): a resumed
    process's frames and sink are the uninterrupted stream's, and every figure is there."""
    doc = bench.main(
        [
            "--parts", "tiers",
            "--engine-preset", "tiny",
            "--engine-device", "cpu",
            "--engine-size", "64*64",
            "--infer-frames", "12",
            "--tiers-runs", "warm,cold,fresh,forked,forked-cold",
            "--tiers-row-major",
            "--tiers-dit-release", str(tmp_path / "release"),
            "--workdir", str(tmp_path / "work"),
            "--out", str(tmp_path / "tiers.json"),
        ]
    )  # fmt: skip
    tiers = doc["parts"]["tiers"]
    assert tiers["frames_identical"] and tiers["sink_identical"]
    # the checkpoint's layout: the resuming processes' default is the other one
    assert tiers["row_major"]
    for run in ("resume_local_warm", "resume_local_forked", "resume_local_cold", "fresh"):
        assert tiers[run]["row_major"], run
    assert tiers["fresh_first_clip_identical"]
    assert tiers["parts_that_differ"] == {
        "warm": [],
        "forked": [],  # a resume in a fork of a process with the modules imported
        "forked_cold": [],  # the same, the checkpoint evicted from the page cache first
        "cold": [],
        "warm_second_open": [],
    }
    forked, forked_cold = tiers["resume_local_forked"], tiers["resume_local_forked_cold"]
    for run in (forked, forked_cold):
        assert run["forked"] and run["imports_before_fork_s"] > 0
        assert run["clip_sha256"] == tiers["expected_clip_sha256"]
    assert (
        tiers["resume_local_warm"]["second_open"]["clip_sha256"] == (tiers["expected_clip_sha256"])
    )
    assert set(tiers["restore_read_gb_s_by_readers"]) == {"1", "8"}
    resumes = (tiers["resume_local_warm"], forked, forked_cold, tiers["resume_local_cold"])
    for run in (*resumes, tiers["fresh"]):
        assert run["first_clip_s"] > 0 and run["open_s"] > 0
        assert run["graphs_compiled_in_first_clip"] == 0  # the CPU compiles nothing
        # the DiT came from the release on disk, loaded beside the open, and the first frame's
        # time from the build's start is measured
        assert run["dit_load_s"] > 0 and "dit_wait" in run["open_parts_s"]
        assert run["first_frame_from_worker_start_s"] == run["from_build_start_s"] > 0
        # what came from the disk rather than the page cache, and the host's memory then
        assert run["disk_read_bytes_to_first_frame"] >= 0
        assert run["memory_at_start"]["MemTotal"] >= run["memory_at_start"]["MemAvailable"] > 0
        assert {"project", "innermost"} <= set(run["open_samples_s"])
    for run in resumes:
        # the seal's CRCs were read beside the open; the first clip waited for what was left
        assert run["verify_s"] > 0 and 0 <= run["verify_wait_s"] <= run["verify_s"]
    assert tiers["resume_local_warm"]["clip_index"] == tiers["fresh"]["clip_index"] + 3
    assert tiers["single_tier_bytes_per_video_hour"] > 0
