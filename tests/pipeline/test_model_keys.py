"""The DiT's state dict is the released Wan2.2-S2V-14B checkpoint's, key for key, shape for shape.

The expected names are written out here from Wan2.2's `WanModel_S2V` as LiveAvatar configures it
(framepack motion, adaptive-norm audio injection at 12 layers, pose-condition encoder), not from
our module, so a renamed or reshaped parameter fails.
"""

from __future__ import annotations

import torch

from pipeline.model import WanS2VTransformer
from pipeline.presets import LIVEAVATAR_14B, TINY, DiTConfig


def released_keys(num_layers: int = 40, num_injectors: int = 12) -> set[str]:
    keys = {
        "patch_embedding.weight",
        "patch_embedding.bias",
        "cond_encoder.weight",
        "cond_encoder.bias",
        "trainable_cond_mask.weight",
        "head.head.weight",
        "head.head.bias",
        "head.modulation",
        "casual_audio_encoder.weights",
        "casual_audio_encoder.encoder.padding_tokens",
        "casual_audio_encoder.encoder.final_linear.weight",
        "casual_audio_encoder.encoder.final_linear.bias",
    }
    for seq, layers in (("text_embedding", (0, 2)), ("time_embedding", (0, 2))):
        keys |= {f"{seq}.{i}.{p}" for i in layers for p in ("weight", "bias")}
    keys |= {"time_projection.1.weight", "time_projection.1.bias"}
    for conv in ("conv1_local", "conv1_global", "conv2", "conv3"):
        keys |= {f"casual_audio_encoder.encoder.{conv}.conv.{p}" for p in ("weight", "bias")}
    for proj in ("proj", "proj_2x", "proj_4x"):
        keys |= {f"frame_packer.{proj}.{p}" for p in ("weight", "bias")}

    def attention(prefix: str) -> set[str]:
        names = {f"{prefix}.{lin}.{p}" for lin in "qkvo" for p in ("weight", "bias")}
        return names | {f"{prefix}.norm_q.weight", f"{prefix}.norm_k.weight"}

    for i in range(num_layers):
        b = f"blocks.{i}"
        keys |= attention(f"{b}.self_attn") | attention(f"{b}.cross_attn")
        keys |= {f"{b}.norm3.weight", f"{b}.norm3.bias", f"{b}.modulation"}
        keys |= {f"{b}.ffn.{j}.{p}" for j in (0, 2) for p in ("weight", "bias")}
    for j in range(num_injectors):
        keys |= attention(f"audio_injector.injector.{j}")
        keys |= {f"audio_injector.injector_adain_layers.{j}.linear.{p}" for p in ("weight", "bias")}
    return keys


def test_liveavatar_14b_has_exactly_the_released_keys_and_shapes():
    with torch.device("meta"):
        model = WanS2VTransformer(LIVEAVATAR_14B.dit)
    state = model.state_dict()
    assert set(state) == released_keys()

    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["patch_embedding.weight"] == (5120, 16, 1, 2, 2)
    assert shapes["cond_encoder.weight"] == (5120, 16, 1, 2, 2)
    assert shapes["text_embedding.0.weight"] == (5120, 4096)
    assert shapes["time_embedding.0.weight"] == (5120, 256)
    assert shapes["time_projection.1.weight"] == (30720, 5120)
    assert shapes["blocks.0.self_attn.q.weight"] == (5120, 5120)
    assert shapes["blocks.39.self_attn.norm_k.weight"] == (5120,)
    assert shapes["blocks.0.ffn.0.weight"] == (13824, 5120)
    assert shapes["blocks.0.ffn.2.weight"] == (5120, 13824)
    assert shapes["blocks.0.modulation"] == (1, 6, 5120)
    assert shapes["blocks.0.norm3.weight"] == (5120,)
    assert shapes["head.head.weight"] == (64, 5120)
    assert shapes["head.modulation"] == (1, 2, 5120)
    assert shapes["trainable_cond_mask.weight"] == (3, 5120)
    assert shapes["casual_audio_encoder.weights"] == (1, 25, 1, 1)
    assert shapes["casual_audio_encoder.encoder.conv1_local.conv.weight"] == (5120, 1024, 3)
    assert shapes["casual_audio_encoder.encoder.conv1_global.conv.weight"] == (1280, 1024, 3)
    assert shapes["casual_audio_encoder.encoder.conv2.conv.weight"] == (2560, 1280, 3)
    assert shapes["casual_audio_encoder.encoder.conv3.conv.weight"] == (5120, 2560, 3)
    assert shapes["casual_audio_encoder.encoder.padding_tokens"] == (1, 1, 1, 5120)
    assert shapes["audio_injector.injector.11.q.weight"] == (5120, 5120)
    assert shapes["audio_injector.injector_adain_layers.0.linear.weight"] == (10240, 5120)
    assert shapes["frame_packer.proj.weight"] == (5120, 16, 1, 2, 2)
    assert shapes["frame_packer.proj_2x.weight"] == (5120, 16, 2, 4, 4)
    assert shapes["frame_packer.proj_4x.weight"] == (5120, 16, 4, 8, 8)
    # the release's 32.6 GB of bf16 tensors
    assert 16.2e9 < sum(v.numel() for v in state.values()) < 16.4e9


def test_tiny_is_the_same_architecture_smaller():
    with torch.device("meta"):
        tiny = WanS2VTransformer(TINY.dit)
    cfg = TINY.dit
    expected = released_keys(cfg.num_layers, len(cfg.audio_inject_layers))
    assert set(tiny.state_dict()) == expected


def test_reduced_depth_keeps_only_existing_injection_layers():
    shallow = LIVEAVATAR_14B.with_dit(num_layers=5)
    assert shallow.dit.audio_inject_layers == (0, 4)
    assert isinstance(shallow.dit, DiTConfig)


def test_the_audio_injectors_adaptive_norm_keeps_diffusers_keys_and_random_weights():
    """The injectors' AdaLN is the project's own (diffusers' costs its import before the DiT
    can load): the same weight names and shapes as diffusers' `AdaLayerNorm(dim,
    output_dim=2 * dim, chunk_dim=1)`, and the same seeded random weights."""
    import torch
    from diffusers.models.normalization import AdaLayerNorm

    from pipeline.dit_loading import random_init
    from pipeline.model.audio import AudioAdaLayerNorm

    ours, theirs = AudioAdaLayerNorm(16), AdaLayerNorm(16, output_dim=32, chunk_dim=1)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }
    random_init(ours, torch.Generator().manual_seed(3))
    random_init(theirs, torch.Generator().manual_seed(3))
    for name, t in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[name], t), name
