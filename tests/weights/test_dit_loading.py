"""The sharded DiT and LiveAvatar's LoRA: every tensor lands where it belongs, or a clear error."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.weights.dit import INDEX_NAME, load_dit
from pipeline.weights.errors import (
    CorruptFileError,
    KeyMismatchError,
    MissingFileError,
    ShapeMismatchError,
)
from pipeline.weights.spec_module import module_from_shapes
from pipeline.weights.specs import LORA_ALPHA, dit_shapes, lora_target_modules

from .tiny_release import TINY, TinyRelease, merged_weight


def tiny_dit(dtype=torch.bfloat16, device="meta") -> torch.nn.Module:
    return module_from_shapes(dit_shapes(TINY.dit), dtype, device)


def shard_files(base: Path) -> list[Path]:
    return sorted(base.glob("diffusion_pytorch_model-*.safetensors"))


def rewrite_shard(path: Path, change) -> None:
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize("readers", [1, 3])  # one shard at a time; all three at once
def test_every_tensor_lands_where_it_belongs(pristine_release: TinyRelease, readers: int):
    module = tiny_dit()
    report = load_dit(pristine_release.paths.base, module, "cpu", readers=readers)
    state = module.state_dict()
    written = pristine_release.written["dit"]
    assert set(state) == set(written)
    for name, tensor in written.items():
        assert state[name].device.type == "cpu"
        assert state[name].dtype == torch.bfloat16
        assert torch.equal(state[name], tensor), name
    assert report.weights.tensors == len(written)
    assert report.weights.bytes == sum(t.numel() * 2 for t in written.values())
    assert len(report.shards) == 3 and report.lora is None


def test_materialised_module_is_filled_in_place_in_its_own_dtype(pristine_release):
    module = tiny_dit(torch.float32, "cpu")
    before = {n: p for n, p in module.named_parameters()}
    load_dit(pristine_release.paths.base, module, "cpu")
    for name, tensor in pristine_release.written["dit"].items():
        param = module.get_parameter(name)
        assert param is before[name]  # same Parameter object, now holding the weights
        assert param.dtype == torch.float32
        assert torch.equal(param, tensor.float())


def test_lora_is_merged_exactly_and_only_into_its_targets(pristine_release):
    module = tiny_dit()
    report = load_dit(pristine_release.paths.base, module, "cpu", lora=pristine_release.paths.lora)
    targets = lora_target_modules(dit_shapes(TINY.dit))
    # q, k, v, o of self-, cross- and audio attention, and both FFN linears
    assert len(targets) == TINY.dit.num_layers * 10 + len(TINY.dit.audio_inject_layers) * 4
    assert report.lora_rank == TINY.lora_rank
    assert report.lora_scale == LORA_ALPHA / TINY.lora_rank
    for name, tensor in pristine_release.written["dit"].items():
        got = module.get_parameter(name)
        module_name = name.removesuffix(".weight")
        if name.endswith(".weight") and module_name in targets:
            assert torch.equal(got, merged_weight(pristine_release, module_name, got.dtype)), name
            assert not torch.equal(got, tensor)
        else:
            assert torch.equal(got, tensor), name


@pytest.mark.parametrize(
    "rename",
    [
        lambda k: k.removeprefix("base_model.model."),  # LiveAvatar adds the prefix if absent
        lambda k: k.replace(".default.", "."),  # PEFT's own adapter files
    ],
)
def test_lora_key_spellings_that_load_the_same(release, rename):
    tensors = load_file(release.paths.lora)
    save_file({rename(k): v for k, v in tensors.items()}, release.paths.lora)
    module = tiny_dit()
    load_dit(release.paths.base, module, "cpu", lora=release.paths.lora)
    name = "blocks.1.ffn.2"
    assert torch.equal(
        module.get_parameter(f"{name}.weight"), merged_weight(release, name, torch.bfloat16)
    )


def test_missing_shard_names_the_shard(release):
    shard_files(release.paths.base)[1].unlink()
    with pytest.raises(MissingFileError, match=r"1 of 3 shards missing: .*00002-of-00003"):
        load_dit(release.paths.base, tiny_dit(), "cpu")


def test_truncated_shard_says_truncated(release):
    shard = shard_files(release.paths.base)[2]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match=r"00003-of-00003.safetensors: truncated"):
        load_dit(release.paths.base, tiny_dit(), "cpu")


def test_corrupt_index(release):
    (release.paths.base / INDEX_NAME).write_text('{"metadata": {}}')
    with pytest.raises(CorruptFileError, match="no weight_map"):
        load_dit(release.paths.base, tiny_dit(), "cpu")


def test_missing_index(release):
    (release.paths.base / INDEX_NAME).unlink()
    with pytest.raises(MissingFileError, match="index not found"):
        load_dit(release.paths.base, tiny_dit(), "cpu")


def test_wrong_shape_names_tensor_and_shapes_before_copying_anything(release):
    name = "blocks.2.ffn.0.weight"  # in the last shard
    shard = next(p for p in shard_files(release.paths.base) if name in load_file(p))
    rewrite_shard(shard, lambda t: t.__setitem__(name, torch.zeros(48, 31, dtype=torch.bfloat16)))
    module = tiny_dit()
    with pytest.raises(ShapeMismatchError, match=rf"{name} has shape \[48, 31\].*\[48, 32\]"):
        load_dit(release.paths.base, module, "cpu")
    assert all(p.is_meta for p in module.parameters())  # failed before reading any data


def test_checkpoint_lacking_a_tensor_the_model_needs(release):
    name = "blocks.0.self_attn.norm_k.weight"
    shard = next(p for p in shard_files(release.paths.base) if name in load_file(p))
    rewrite_shard(shard, lambda t: t.pop(name))
    index = json.loads((release.paths.base / INDEX_NAME).read_text())
    del index["weight_map"][name]
    (release.paths.base / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(KeyMismatchError, match=rf"1 missing: {name}") as err:
        load_dit(release.paths.base, tiny_dit(), "cpu")
    assert err.value.missing == [name] and err.value.unexpected == []


def test_checkpoint_holding_a_tensor_the_model_lacks(pristine_release):
    shapes = dit_shapes(TINY.dit)
    del shapes["trainable_cond_mask.weight"]
    module = module_from_shapes(shapes, torch.bfloat16)
    with pytest.raises(KeyMismatchError, match=r"1 unexpected: trainable_cond_mask.weight"):
        load_dit(pristine_release.paths.base, module, "cpu")


def test_index_and_shards_from_different_downloads(release):
    shard = shard_files(release.paths.base)[0]
    rewrite_shard(shard, lambda t: t.__setitem__("stray.weight", torch.zeros(2)))
    with pytest.raises(CorruptFileError, match=r"does not list.*stray.weight"):
        load_dit(release.paths.base, tiny_dit(), "cpu")


def test_lora_with_half_a_pair(release):
    key = "base_model.model.blocks.1.cross_attn.v.lora_B.default.weight"
    tensors = load_file(release.paths.lora)
    del tensors[key]
    save_file(tensors, release.paths.lora)
    with pytest.raises(KeyMismatchError, match=r"blocks.1.cross_attn.v.lora_B"):
        load_dit(release.paths.base, tiny_dit(), "cpu", lora=release.paths.lora)


def test_lora_for_a_module_the_dit_does_not_have(release):
    tensors = load_file(release.paths.lora)
    tensors["base_model.model.blocks.9.self_attn.q.lora_A.default.weight"] = torch.zeros(4, 32)
    tensors["base_model.model.blocks.9.self_attn.q.lora_B.default.weight"] = torch.zeros(32, 4)
    save_file(tensors, release.paths.lora)
    with pytest.raises(KeyMismatchError, match=r"1 unexpected: blocks.9.self_attn.q"):
        load_dit(release.paths.base, tiny_dit(), "cpu", lora=release.paths.lora)


def test_lora_file_with_non_lora_tensors(release):
    tensors = load_file(release.paths.lora)
    tensors["base_model.model.blocks.0.norm3.weight"] = torch.zeros(32)
    save_file(tensors, release.paths.lora)
    with pytest.raises(KeyMismatchError, match=r"not LoRA A/B weights.*blocks.0.norm3.weight"):
        load_dit(release.paths.base, tiny_dit(), "cpu", lora=release.paths.lora)


def test_lora_whose_factors_do_not_fit_the_weight(release):
    tensors = load_file(release.paths.lora)
    tensors["base_model.model.blocks.0.ffn.0.lora_A.default.weight"] = torch.zeros(4, 31)
    save_file(tensors, release.paths.lora)
    with pytest.raises(ShapeMismatchError, match=r"blocks.0.ffn.0: A \[4, 31\]"):
        load_dit(release.paths.base, tiny_dit(), "cpu", lora=release.paths.lora)


def test_truncated_lora(release):
    release.paths.lora.write_bytes(release.paths.lora.read_bytes()[:-1])
    with pytest.raises(CorruptFileError, match="liveavatar.safetensors: truncated"):
        load_dit(release.paths.base, tiny_dit(), "cpu", lora=release.paths.lora)


def test_module_that_leaves_buffers_it_must_compute_itself(pristine_release):
    module = tiny_dit()
    module.register_buffer("freqs", torch.empty(4, device="meta"), persistent=False)
    with pytest.raises(RuntimeError, match="non-persistent buffers.*freqs"):
        load_dit(pristine_release.paths.base, module, "cpu")
