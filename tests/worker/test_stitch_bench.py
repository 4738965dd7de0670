"""Smoke test of ops/bench/stitch.py at toy sizes: it runs end to end and writes its JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from ops.bench import stitch as bench


def test_stitch_benchmark_runs_at_toy_size(tmp_path: Path):
    out = tmp_path / "stitch.json"
    argv = [
        "--minutes", "0.1",
        "--segment-seconds", "2",
        "--width", "160",
        "--height", "96",
        "--encoder-frames", "48",
        "--moviepy-segments", "1",
        "--workdir", str(tmp_path / "media"),
        "--out", str(out),
        "--quiet",
    ]  # fmt: skip
    if importlib.util.find_spec("moviepy") is None:  # the bench extra is optional
        argv.append("--skip-moviepy")
    doc = bench.main(argv)

    assert json.loads(out.read_text()) == doc
    r = doc["results"]
    assert r["input"]["segments"] == 3 and r["input"]["frames"] == 150
    assert r["encoder_fps"] > 0 and r["watermark_fps"] > 0
    assert r["stitch"]["stitch_prepared_audio_s"] > 0
    assert r["manifest"]["frames_per_s"] > 0 and r["manifest"]["from_segment_hashes_s"] > 0
    assert (tmp_path / "media" / "output.mp4").stat().st_size > 0
