"""ops/bench/load.py on a small layout: files in the release formats, loads measured."""

import json

import pytest
from safetensors import safe_open

from ops.bench.load import LAYOUTS, PARTS, main, measure, table, write_release
from pipeline import gil
from pipeline.weights import verify
from pipeline.weights.layout import CheckpointPaths


def test_generated_release_is_in_the_published_formats(tmp_path):
    spec = LAYOUTS["small"]
    write_release(tmp_path, spec, PARTS)
    report = verify(tmp_path, spec)
    statuses = {i.label.rsplit("/", 1)[-1] or i.label: i.status for i in report.items}
    for label in (
        "config.json",
        "diffusion_pytorch_model-*.safetensors",
        "liveavatar.safetensors",
        "models_t5_umt5-xxl-enc-bf16.pth",
        "Wan2.1_VAE.pth",
    ):
        assert statuses[label] == "ok", str(report)  # fmt: skip
    paths = CheckpointPaths.at(tmp_path)
    with safe_open(paths.lora, "pt") as f:  # the reference reader agrees
        assert len(list(f.keys())) == len(spec.lora_specs())


def test_measured_rows(tmp_path):
    write_release(tmp_path, LAYOUTS["small"], ("dit",))
    rows = measure("dit", tmp_path, "small", "cpu")
    assert [(r["cache"], r["beside"], r["switch_interval_ms"]) for r in rows] == [
        ("cold", None, 5.0),
        ("warm", None, 5.0),
        ("warm", "busy python", 5.0),  # the interpreter's default
        ("warm", "busy python", gil.LOADING_SWITCH_INTERVAL * 1e3),
    ]
    for row in rows:
        assert row["tensors"] == len(LAYOUTS["small"].dit_specs())
        assert row["seconds"] > 0 and row["lora_merge_seconds"] is not None
        assert row["peak_rss_above_baseline_gb"] is not None
    text = table({"layout": "small", "device": "cpu", "results": rows})
    assert "LoRA merge" in text and text.count("\ndit") == 4 and "busy python" in text


@pytest.mark.slow
def test_command_writes_json_and_cleans_up(tmp_path):
    scratch, out = tmp_path / "release", tmp_path / "load.json"
    main(["--layout", "small", "--device", "cpu", "--parts", "dit",
          "--dir", str(scratch), "--out", str(out)])  # fmt: skip
    report = json.loads(out.read_text())
    assert [(r["part"], r["cache"]) for r in report["results"]] == [
        ("dit", "cold"),
        ("dit", "warm"),
        ("dit", "warm"),
        ("dit", "warm"),
    ]
    assert report["results"][0]["peak_rss_gb"] > 0
    assert not scratch.exists()
