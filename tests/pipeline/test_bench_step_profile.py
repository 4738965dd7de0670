"""The step-profile benchmark runs end to end (tiny model, CPU) and reports every figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops.bench.step_profile import KINDS, kind_of

REPO = Path(__file__).resolve().parents[2]


def test_kernels_are_sorted_by_kind():
    """Names as the profiler gives them on an H200 (and operators on a CPU)."""
    assert kind_of("nvjet_sm90_qqtst_128x128_128x6_1x1_h_bz_coopA_algo2_ovscale_bias_TNT") == (
        "matmul"
    )
    assert kind_of("sm90_xmma_gemm_bf16bf16_bf16f32") == "matmul"
    assert kind_of("aten::linear") == kind_of("aten::_scaled_mm") == "matmul"
    assert kind_of("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16") == "attention"
    assert kind_of("aten::scaled_dot_product_attention") == "attention"
    assert kind_of("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc") == "conv"
    assert kind_of("triton_red_fused__to_copy_abs_amax_clamp_div_gelu_0") == "triton"
    assert kind_of("norm_rows_fp8") == kind_of("act_rows_fp8") == "triton"  # our own
    # the compiled decoder's glue goes with its convolutions
    assert kind_of("triton_poi_fused_constant_pad_nd_2") == "conv"
    assert kind_of("triton_poi_fused__to_copy__unsafe_index_add_arange_clone_mul_0") == "conv"
    assert kind_of("Memcpy DtoD (Device -> Device)") == "copy"
    assert kind_of("void at::native::vectorized_elementwise_kernel<8, GeluCUDAKernelImpl>") == (
        "other"
    )


@pytest.mark.slow
def test_benchmark_dry_run_reports_every_figure(tmp_path):
    out = tmp_path / "step-profile.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    subprocess.run(
        [sys.executable, "-m", "ops.bench.step_profile", "--preset", "tiny", "--device", "cpu",
         "--size", "64*64", "--steps", "2", "--quick", "--persistent-rows", "--int8-attention", "--fp8-rows", "--row-major",
         "--fused-cache-writes", "--fp8-attention", "--out", str(out)],
        cwd=REPO, env=env, check=True, timeout=600, capture_output=True,
    )  # fmt: skip
    report = json.loads(out.read_text())
    # the second fp8 profiles: row reductions held whole (where this torch can), int8 logits,
    # inductor's FP8 steps instead of fp8_rows', the residual stream in the other layout, the
    # attention's inputs and cache writes in one graph (in both layouts); and the same weights
    # at precision fp8-attention
    rows = {"fp8+persistent-rows"} if report["persistent_rows_applied"] else set()
    assert (
        set(report["clips"])
        == {
            "bf16",
            "fp8",
            "fp8+int8-attention",
            "fp8-attention",
            "fp8+inductor-rows",
            # the default layout is row-major: the other is the convolution's
            "fp8+conv-layout",
            "fp8+conv-layout+fused-cache-writes",
            "fp8+fused-cache-writes",
        }
        | rows
    )
    assert len(report["shapes"]["linears"]) == 3
    for figures in report["shapes"]["linears"].values():
        assert figures["bf16_ms"] > 0 and figures["fp8_ms"] > 0
    for clip in report["clips"].values():
        assert set(clip["by_kind_s"]) == set(KINDS)
        assert clip["device_s"] > 0
        assert clip["fps"] == pytest.approx(clip["frames"] / clip["clip_wall_s"])
        assert clip["top_kernels"] and clip["by_kind_s"]["matmul"] > 0
    assert report["clips"]["bf16"]["by_kind_s"]["conv"] > 0  # the VAE's decode
    # one block's velocities, bf16 against both fp8 forms (the same on the CPU: no Triton)
    errors = report["velocity_rel_error"]
    assert set(errors) == {
        "fp8",
        "fp8+inductor-rows",
        "fp8 against fp8+inductor-rows",
        "fp8-attention",
        "fp8+fp8-backend-attention",
    }
    assert all(len(e) == 2 for e in errors.values())
    assert 0 < errors["fp8"][0] < 0.5 and errors["fp8 against fp8+inductor-rows"] == [0.0, 0.0]
    # every attention through the fp8 backend too: a velocity of its own, its error bounded
    fp8_attention = errors["fp8+fp8-backend-attention"]
    assert fp8_attention != errors["fp8"] and 0 < fp8_attention[0] < 0.5
    # self-attention over the caches in e4m3, as at precision fp8-attention
    assert errors["fp8-attention"] != errors["fp8"] and 0 < errors["fp8-attention"][0] < 0.5
