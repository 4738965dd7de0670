"""`longtake checkpoints download`: what it fetches and how it fails offline."""

import shutil

import pytest

from pipeline.weights import CheckpointError, download, download_plan

from .tiny_release import TINY


def test_plan_fetches_the_release_files_only():
    base, lora = download_plan()
    assert (base.repo, base.local_dir) == ("Wan-AI/Wan2.2-S2V-14B", "Wan2.2-S2V-14B")
    assert "diffusion_pytorch_model-*.safetensors" in base.patterns
    assert "models_t5_umt5-xxl-enc-bf16.pth" in base.patterns
    assert "google/umt5-xxl/spiece.model" in base.patterns
    assert "wav2vec2-large-xlsr-53-english/model.safetensors" in base.patterns
    assert not any(p.endswith("pytorch_model.bin") for p in base.patterns)
    assert (lora.repo, lora.local_dir, lora.patterns) == (
        "Quark-Vision/Live-Avatar",
        "LiveAvatar",
        ["liveavatar.safetensors"],
    )


def test_unreachable_hub_gives_an_actionable_error(tmp_path):
    # Nothing listens on port 9 of this machine: the request fails at once.
    with pytest.raises(CheckpointError, match=r"needs internet access.*README"):
        download(tmp_path, endpoint="http://127.0.0.1:9")


def test_fetched_files_are_verified(pristine_release, tmp_path):
    def fetch(repo_id, allow_patterns, local_dir, endpoint, token):
        source = pristine_release.root / local_dir.name
        shutil.copytree(source, local_dir, dirs_exist_ok=True)
        return str(local_dir)

    report = download(tmp_path, fetch=fetch, spec=TINY)
    assert report.ok, str(report)
    assert set(report.fetched) == {"Wan-AI/Wan2.2-S2V-14B", "Quark-Vision/Live-Avatar"}
    assert "OK" in str(report)
