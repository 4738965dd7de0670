"""ops/bench/determinism.py: two processes' renders compared call by call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops.bench.determinism import first_difference, kernels_timed

REPO = Path(__file__).resolve().parents[2]


def rec(name: str, checksum: int, clip: int = 0) -> dict:
    return {"clip": clip, "name": name, "shape": [2, 3], "dtype": "float32", "checksum": checksum}


def test_the_first_call_that_differs_is_named():
    first = [rec("blocks.0.self_attn.q", 1), rec("fused.rope", 2), rec("blocks.0", 3)]
    assert first_difference(first, list(first)) is None
    other = [rec("blocks.0.self_attn.q", 1), rec("fused.rope", 5), rec("blocks.0", 6)]
    diff = first_difference(first, other)
    assert diff == {"index": 1, "first": first[1], "other": other[1]}


def test_a_process_that_stops_early_differs_where_it_stops():
    first = [rec("a", 1), rec("b", 2)]
    diff = first_difference(first, first[:1])
    assert diff is not None and diff["index"] == 1 and diff["other"] is None


@pytest.mark.slow
def test_two_tiny_processes_compute_the_same_calls(tmp_path):
    out = tmp_path / "determinism.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    subprocess.run(
        [sys.executable, "-m", "ops.bench.determinism", "--preset", "tiny", "--device", "cpu",
         "--layers", "0", "--size", "64*64", "--infer-frames", "24", "--clips", "2",
         "--out", str(out)],
        cwd=REPO, env=env, check=True, timeout=600, capture_output=True,
    )  # fmt: skip
    report = json.loads(out.read_text())
    hashes = report["frames_sha256"]
    assert len(hashes) == 2 and len(hashes[0]) == 2 and hashes[0] == hashes[1]
    assert report["first_difference"] == [None]
    assert report["calls"] > 100  # every module's and glue function's results, both clips
    assert report["kernels_outside_deterministic_mode"] == [0, 0]  # the CPU compiles none


def test_kernels_compiled_outside_deterministic_mode_are_counted(tmp_path):
    def kernel(where: str, deterministic: bool) -> None:
        path = tmp_path / where
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = f"inductor_meta={{'kernel_name': 'k', 'deterministic': {deterministic}}}"
        path.write_text(f"@triton_heuristics.reduction({meta})\n@triton.jit\ndef k(): pass\n")

    kernel("ab/one.py", True)
    kernel("cd/two.py", False)
    kernel("cd/three.py", False)
    (tmp_path / "ef").mkdir()
    (tmp_path / "ef" / "graph.py").write_text("# a graph's wrapper, no kernel of its own\n")
    assert kernels_timed(tmp_path) == (3, 2)
