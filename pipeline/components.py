"""Building the models of a preset: on the meta device, then materialised on the target device.

Nothing is ever built full-size in float32 on the host: modules are created on the meta device
(no memory), then given storage directly on the target device in the target dtype, and filled
either with random values (`random_init`) or by a checkpoint loader.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
from diffusers import AutoencoderKLWan
from transformers import UMT5Config, UMT5EncoderModel, Wav2Vec2Config, Wav2Vec2Model

from pipeline.model import WanS2VTransformer
from pipeline.presets import Preset
from pipeline.text import Tokenizer, byte_tokenizer, hf_tokenizer


@dataclass
class Components:
    dit: WanS2VTransformer
    text_encoder: UMT5EncoderModel
    tokenizer: Tokenizer
    audio_encoder: Wav2Vec2Model
    vae: AutoencoderKLWan


@contextmanager
def _on_meta(dtype: torch.dtype) -> Iterator[None]:
    """Build modules without memory, their tensors declared in `dtype`."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_empty(preset: Preset, device: torch.device | str, dtype: torch.dtype) -> Components:
    """Every model of the preset with uninitialised storage on `device` in `dtype`."""
    with _on_meta(dtype):
        dit = WanS2VTransformer(preset.dit)
        text_encoder = UMT5EncoderModel(UMT5Config(**preset.text_encoder))
        audio_encoder = Wav2Vec2Model(Wav2Vec2Config(**preset.audio_encoder))
        vae = AutoencoderKLWan(**preset.vae)
    for m in (dit, text_encoder, audio_encoder, vae):
        m.to_empty(device=device)
        m.eval().requires_grad_(False)
    return Components(dit, text_encoder, byte_tokenizer, audio_encoder, vae)


@torch.no_grad()
def random_init(module: nn.Module, generator: torch.Generator) -> None:
    """Random weights that keep activations at unit scale through any depth.

    Matrices, kernels and embedding tables ~ N(0, 1/fan_in), modulation tables and other
    vectors ~ N(0, 1/width), biases ~ N(0, 0.02), norm scales 1 and norm biases 0.
    Values are drawn in float32 on the generator's device and cast, one tensor at a time.
    """
    norm_types = (nn.LayerNorm, nn.GroupNorm)
    norm_params = {
        id(p)
        for m in module.modules()
        if isinstance(m, norm_types)
        or type(m).__name__.lower().endswith(("rmsnorm", "rms_norm", "layernorm"))
        for p in m.parameters(recurse=False)
    }
    for name, p in module.named_parameters():
        if id(p) in norm_params or name.endswith(("norm_q.weight", "norm_k.weight")):
            p.fill_(0.0 if name.endswith("bias") else 1.0)
            continue
        if "modulation" in name:
            std = 1.0 / math.sqrt(p.shape[-1])
        elif p.ndim >= 2:
            std = 1.0 / math.sqrt(math.prod(p.shape[1:]))
        elif name.endswith("bias"):
            std = 0.02
        else:
            std = 1.0 / math.sqrt(max(p.shape[-1], 1))
        draw = torch.randn(p.shape, generator=generator, device=generator.device) * std
        p.copy_(draw)


def build_random(
    preset: Preset, device: torch.device | str, dtype: torch.dtype, seed: int = 0
) -> Components:
    """The preset's models with seeded random weights (speed does not depend on weight values)."""
    comps = build_empty(preset, device, dtype)
    gen_device = torch.device(device)
    for i, m in enumerate((comps.dit, comps.text_encoder, comps.audio_encoder, comps.vae)):
        generator = torch.Generator(device=gen_device).manual_seed(seed * 1000 + i)
        random_init(m, generator)
    return comps


def load_released(
    preset: Preset,
    checkpoint_dir: str | os.PathLike[str],
    device: torch.device | str,
    dtype: torch.dtype,
) -> Components:
    """The preset's models filled from the released checkpoint files (pipeline.weights)."""
    from pipeline.weights import Placement, load_weights

    with _on_meta(dtype):
        dit = WanS2VTransformer(preset.dit)
    loaded = load_weights(
        checkpoint_dir,
        Placement.single(device),
        dit=dit,
        text_config=UMT5Config(**preset.text_encoder),
        vae_config=dict(preset.vae),
        text_dtype=dtype,
        vae_dtype=dtype,
        audio_dtype=dtype,
    )
    assert loaded.text_encoder and loaded.audio_encoder and loaded.vae and loaded.tokenizer
    models = (dit, loaded.text_encoder, loaded.audio_encoder, loaded.vae)
    for m in models:
        m.eval().requires_grad_(False)
    return Components(
        dit, loaded.text_encoder, hf_tokenizer(loaded.tokenizer), loaded.audio_encoder, loaded.vae
    )
