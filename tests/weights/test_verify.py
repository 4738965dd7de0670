"""`longtake checkpoints verify`: says exactly what is missing or wrong."""

import json
import logging
import struct
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pipeline.weights import ReleaseSpec, resolve_preset, verify
from pipeline.weights.layout import DIT_INDEX, DIT_SHARDS, CheckpointPaths
from pipeline.weights.specs import TensorSpec

from .tiny_release import TINY, dit_config


def test_complete_release_verifies(pristine_release):
    report = verify(pristine_release.root, TINY)
    assert report.ok, str(report)
    assert [i.status for i in report.items] == ["ok"] * 7
    assert "OK" in str(report).splitlines()[0]


def test_empty_root_lists_every_part_as_missing(tmp_path):
    report = verify(tmp_path)
    assert not report.ok
    assert len(report.missing) == 7
    assert report.headline() == f"no release files found under {tmp_path}"
    text = str(report)
    for name in ("config.json", "liveavatar.safetensors", "Wan2.1_VAE.pth", "google/umt5-xxl"):
        assert name in text


def test_each_problem_is_named(release):
    paths = release.paths
    paths.vae.unlink()
    shard = sorted(paths.base.glob("diffusion_pytorch_model-*"))[0]
    shard.write_bytes(shard.read_bytes()[:-8])
    (paths.tokenizer / "spiece.model").unlink()
    report = verify(release.root, TINY)
    by_label = {i.label.split("/")[-1] or i.label.split("/")[-2]: i for i in report.items}
    assert by_label["Wan2.1_VAE.pth"].status == "missing"
    dit = by_label["diffusion_pytorch_model-*.safetensors"]
    assert dit.status == "error" and "truncated" in dit.errors[0]
    assert by_label["umt5-xxl"].errors == ["missing spiece.model"]
    assert by_label["liveavatar.safetensors"].status == "ok"
    assert "3 of 7 parts failed" in report.headline()


def test_wrong_shape_and_missing_tensor_in_the_lora(release):
    path = release.paths.lora
    tensors = load_file(path)
    del tensors["base_model.model.audio_injector.injector.1.o.lora_A.default.weight"]
    del tensors["base_model.model.audio_injector.injector.1.o.lora_B.default.weight"]
    save_file(tensors, path)
    report = verify(release.root, TINY)
    lora = next(i for i in report.items if i.label.endswith("liveavatar.safetensors"))
    assert "1 missing: audio_injector.injector.1.o" in lora.errors[0]


def test_config_of_another_model_is_explained(release):
    config = dit_config(TINY.dit) | {"num_layers": 30, "enable_framepack": False}
    release.paths.dit_config.write_text(json.dumps(config))
    report = verify(release.root, TINY)
    errors = next(i for i in report.items if i.label.endswith("config.json")).errors
    assert "num_layers is 30, expected 3" in errors
    assert "enable_framepack is False, expected True" in errors


def test_other_float_dtype_is_a_warning_not_a_failure(release):
    path = release.paths.text_encoder
    torch.save({k: v.float() for k, v in torch.load(path).items()}, path)
    report = verify(release.root, TINY)
    assert report.ok
    item = next(i for i in report.items if i.label.endswith(".pth") and "t5" in i.label)
    assert item.status == "warning"
    assert "22 tensors stored as float32, the release has bfloat16" in item.warnings[0]


def test_wav2vec2_of_another_size(release):
    config = json.loads((release.paths.wav2vec2 / "config.json").read_text())
    config["num_hidden_layers"] = 12
    (release.paths.wav2vec2 / "config.json").write_text(json.dumps(config))
    report = verify(release.root, TINY)
    item = next(i for i in report.items if "wav2vec2" in i.label)
    assert item.errors == ["num_hidden_layers is 12, expected 2"]


def write_header_only(path: Path, specs: dict[str, TensorSpec]) -> None:
    """A safetensors file with the published header and a sparse (unallocated) data section."""
    names = {torch.bfloat16: "BF16", torch.float32: "F32"}
    header, offset = {}, 0
    for name, spec in specs.items():
        header[name] = {
            "dtype": names[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)


def test_the_published_dit_and_lora_layout_verifies(tmp_path):
    """Headers of the real 32.6 GB DiT and 1.35 GB LoRA, checked against the 14B tables."""
    spec = ReleaseSpec.liveavatar_14b()
    paths = CheckpointPaths.at(tmp_path)
    dit = spec.dit_specs()
    names = list(dit)
    weight_map = {}
    for i, shard in enumerate(DIT_SHARDS):
        part = {n: dit[n] for n in names[i * 315 : (i + 1) * 315]}
        write_header_only(paths.base / shard, part)
        weight_map |= dict.fromkeys(part, shard)
    (paths.base / DIT_INDEX).write_text(json.dumps({"weight_map": weight_map}))
    paths.dit_config.write_text(json.dumps(dit_config(spec.dit)))
    write_header_only(paths.lora, spec.lora_specs())
    report = verify(tmp_path)
    statuses = {i.label: i.status for i in report.items}
    assert statuses["Wan2.2-S2V-14B/config.json"] == "ok"
    assert statuses["Wan2.2-S2V-14B/diffusion_pytorch_model-*.safetensors"] == "ok"
    assert statuses["LiveAvatar/liveavatar.safetensors"] == "ok"
    assert "4 shards, 1260 tensors, 32.6 GB" in str(report)
    assert "448 adapted linears, rank 128" in str(report)


def test_preset_is_liveavatar_when_the_release_verifies(pristine_release, caplog):
    assert resolve_preset(pristine_release.root, TINY) == "liveavatar-14b"


def test_preset_falls_back_to_tiny_and_says_why(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.weights"):
        assert resolve_preset(tmp_path) == "tiny"
    message = caplog.text
    assert "'tiny' preset (random weights)" in message
    assert f"no release files found under {tmp_path}" in message
    assert "longtake checkpoints download" in message


def test_fallback_names_the_broken_part(release, caplog):
    release.paths.vae.unlink()
    with caplog.at_level(logging.WARNING, logger="pipeline.weights"):
        assert resolve_preset(release.root, TINY) == "tiny"
    assert "missing: Wan2.2-S2V-14B/Wan2.1_VAE.pth" in caplog.text


def test_malformed_config_is_reported_not_raised(release):
    (release.paths.wav2vec2 / "config.json").write_text("{ truncated")
    report = verify(release.root, TINY)
    item = next(i for i in report.items if "wav2vec2" in i.label)
    assert item.status == "error" and item.errors[0].startswith("cannot be read")
