"""The generation benchmark runs end to end (tiny model, CPU), bf16 and fp8 side by side, and
reports every figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops.bench import generate
from pipeline.presets import TINY

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
            "--precisions",
            "bf16,fp8,fp8-attention",
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
    assert report["matmul_tflops"] > 0 and report["fp8_matmul_tflops"] > 0
    assert set(report["precisions"]) == {"bf16", "fp8", "fp8-attention"}
    for precision, g in report["precisions"].items():
        assert g["precision"] == precision
        assert set(g["step_s"]) == {"step0", "step1", "step2", "step3"}
        assert g["fps"] > 0 and g["mfu"] > 0 and g["mfu_of_fp8_ceiling"] > 0
        assert g["vae_decode_per_block_s"] > 0 and g["step_eager_s"] > 0
    # fp8 keeps the blocks' linear weights in one byte (the CPU's bf16 path: four) plus one
    # float32 scale per output channel; nothing else changes
    cfg = TINY.dit
    per_layer = [(cfg.dim, cfg.dim)] * 8 + [(cfg.ffn_dim, cfg.dim), (cfg.dim, cfg.ffn_dim)]
    saved = cfg.num_layers * sum(n * k * (4 - 1) - 4 * n for n, k in per_layer)
    weights = report["dit_weight_bytes"]
    assert weights["bf16"] - weights["fp8"] == saved
    assert weights["fp8-attention"] == weights["fp8"]  # the same weights; other caches
    psnr = report["fp8_attention_psnr_db"]["64*64"]
    assert set(psnr) == {"1", "2"} and all(20 < v < 100 for v in psnr.values())
    err = report["fp8_error"]
    assert len(err["velocity_rel_error"]) == 4
    assert all(0 < e < 0.2 for e in err["velocity_rel_error"])
    # attention in FP8 on the same inputs, its caches quantised: the linears' error and more
    with_attention = err["velocity_rel_error_fp8_attention"]
    assert len(with_attention) == 4 and all(0 < e < 0.3 for e in with_attention)
    assert sum(with_attention) > sum(err["velocity_rel_error"])
    assert set(err["psnr_db"]["64*64"]) == {"1", "2"}
    assert all(20 < v < 100 for v in err["psnr_db"]["64*64"].values())
    dec = report["decode"]
    assert dec["eager"]["per_block_s"] > 0 and dec["blocks_timed"] == 2
    assert dec["restored_state_continues_exactly"]["equal"] is True
    assert dec["second_decoder_repeats_the_first"]["equal"] is True
    state = report["state"]
    assert state["bytes"] == sum(state["bytes_by_shard"].values()) > 0 and state["write_s"] > 0
    assert [s["clips"] for s in report["memory"]["online"]["samples"]] == [2]
    assert [s["clips"] for s in report["memory"]["offline"]["samples"]] == [1, 2]


def test_only_synchronisations_count_as_host_syncs():
    caught = [
        "Synchronization debug mode is a prototype feature and does not yet detect all "
        "synchronizing operations (Triggered internally at Module.cpp:1003.)",
        "called a synchronizing CUDA operation (Triggered internally at CUDAFunctions.cpp:151.)\n"
        "  x.item()",
        "some other warning",
    ]
    assert generate.sync_reports(caught) == [
        "called a synchronizing CUDA operation (Triggered internally at CUDAFunctions.cpp:151.)"
    ]


def test_quality_only_renders_both_precisions_and_reports_psnr(tmp_path):
    """`--quality-only`: the long PSNR renders alone, fp8 against bf16 on the same weights, a
    finite PSNR (the two precisions differ) at each asked clip count; nothing timed."""
    out = tmp_path / "quality.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    subprocess.run(
        [sys.executable, "-m", "ops.bench.generate", "--preset", "tiny", "--device", "cpu",
         "--quality-only", "--quality-size", "64*64", "--quality-clips", "1,3",
         "--quality-fp8-attention", "--out", str(out)],
        cwd=REPO, env=env, check=True, timeout=600, capture_output=True,
    )  # fmt: skip
    report = json.loads(out.read_text())
    psnr = report["fp8_error"]["psnr_db"]["64*64"]
    assert set(psnr) == {"1", "3"}
    assert all(20 < db < 80 for db in psnr.values())  # close, and not identical
    # the third render, at precision fp8-attention: its own frames, still close to bf16's
    with_attention = report["fp8_error"]["psnr_db_fp8_attention"]["64*64"]
    assert set(with_attention) == {"1", "3"}
    assert all(20 < db < 80 for db in with_attention.values())
    assert with_attention != psnr
    assert report["precisions"] == {} and "memory" not in report
