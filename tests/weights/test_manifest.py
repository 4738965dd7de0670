"""checkpoints/manifest.json is the layout the code checks, and the published sizes add up."""

import json
from pathlib import Path

from pipeline.weights.manifest import build_manifest, render_manifest

MANIFEST = Path(__file__).resolve().parents[2] / "checkpoints" / "manifest.json"


def test_committed_manifest_matches_the_code():
    assert MANIFEST.read_text() == render_manifest(build_manifest()), (
        "regenerate: python -m pipeline.weights.manifest > checkpoints/manifest.json"
    )


def test_tables_add_up_to_the_published_file_sizes():
    components = json.loads(MANIFEST.read_text())["components"]
    # Sizes of the files as published (tensor bytes; headers add a few kB).
    assert components["dit"]["bytes"] == 32_591_511_218  # 4 shards, "32.6 GB"
    assert len(components["dit"]["tensors"]) == 1260
    assert components["lora"]["bytes"] == 1_352_663_040  # "1.35 GB"
    assert len(components["lora"]["tensors"]) == 896
    assert round(components["text_encoder"]["bytes"] / 1e9, 1) == 11.4
    assert round(components["vae"]["bytes"] / 1e6) == 508


def test_every_file_has_a_source():
    files = json.loads(MANIFEST.read_text())["files"]
    assert {f["repo"] for f in files} == {"Wan-AI/Wan2.2-S2V-14B", "Quark-Vision/Live-Avatar"}
    required = [f["path"] for f in files if f["required"]]
    assert "LiveAvatar/liveavatar.safetensors" in required
    assert "Wan2.2-S2V-14B/wav2vec2-large-xlsr-53-english/model.safetensors" in required
