"""Wan's umT5-XXL encoder checkpoint into transformers' `UMT5EncoderModel`.

`models_t5_umt5-xxl-enc-bf16.pth` is the state dict of Wan's own T5 encoder. The two models
compute the same function: RMS pre-norms, unscaled attention with a relative position bias in
every layer (umT5 does not share it), a gated-GELU (tanh) feed-forward. Only names differ:

    token_embedding                  -> shared (tied to encoder.embed_tokens)
    blocks.i.norm1                   -> encoder.block.i.layer.0.layer_norm
    blocks.i.attn.{q,k,v,o}          -> encoder.block.i.layer.0.SelfAttention.{q,k,v,o}
    blocks.i.pos_embedding.embedding -> encoder.block.i.layer.0.SelfAttention.relative_attention_bias
    blocks.i.norm2                   -> encoder.block.i.layer.1.layer_norm
    blocks.i.ffn.gate.0              -> encoder.block.i.layer.1.DenseReluDense.wi_0  (GELU branch)
    blocks.i.ffn.fc1                 -> encoder.block.i.layer.1.DenseReluDense.wi_1  (linear branch)
    blocks.i.ffn.fc2                 -> encoder.block.i.layer.1.DenseReluDense.wo
    norm                             -> encoder.final_layer_norm
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, UMT5Config, UMT5EncoderModel

from .errors import CheckpointError, MissingFileError
from .mapped_load import load_renamed
from .module_tensors import building
from .pth_file import load_state_dict
from .specs import UMT5_XXL, T5Architecture, t5_specs
from .streaming import CopyStats

_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
_BLOCK_NAMES = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}


def umt5_config(arch: T5Architecture = UMT5_XXL) -> UMT5Config:
    """The transformers config equivalent to Wan's T5 encoder of this size."""
    if arch.dim_attn % arch.num_heads:
        raise ValueError("dim_attn must be a multiple of num_heads")
    return UMT5Config(
        vocab_size=arch.vocab_size,
        d_model=arch.dim,
        d_kv=arch.dim_attn // arch.num_heads,
        d_ff=arch.dim_ffn,
        num_layers=arch.num_layers,
        num_heads=arch.num_heads,
        relative_attention_num_buckets=arch.num_buckets,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",  # gelu_new = tanh approximation, as Wan's GELU
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
        tie_word_embeddings=False,
    )


def t5_architecture(config: UMT5Config) -> T5Architecture:
    return T5Architecture(
        vocab_size=config.vocab_size,
        dim=config.d_model,
        dim_attn=config.d_kv * config.num_heads,
        dim_ffn=config.d_ff,
        num_heads=config.num_heads,
        num_layers=config.num_layers,
        num_buckets=config.relative_attention_num_buckets,
    )


def umt5_name(original: str) -> str:
    """The UMT5EncoderModel name of a tensor of Wan's T5 encoder checkpoint."""
    if original == "token_embedding.weight":
        return "shared.weight"
    if original == "norm.weight":
        return "encoder.final_layer_norm.weight"
    match = _BLOCK.fullmatch(original)
    if match and match.group(2) in _BLOCK_NAMES:
        return f"encoder.block.{match.group(1)}.{_BLOCK_NAMES[match.group(2)]}"
    raise KeyError(f"not a tensor of Wan's T5 encoder: {original}")


def build_text_encoder(
    config: UMT5Config, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "meta"
) -> UMT5EncoderModel:
    with building(device, dtype):
        model = UMT5EncoderModel(config)
    return model.eval().requires_grad_(False)


def load_text_encoder_into(
    model: UMT5EncoderModel, path: str | os.PathLike[str], device: str | torch.device
) -> CopyStats:
    """Fill `model` (on meta or materialised) from Wan's T5 `.pth`."""
    path = Path(path)
    state = load_state_dict(path)
    expected = t5_specs(t5_architecture(model.config))
    return load_renamed(state, expected, umt5_name, model, torch.device(device), str(path))


def load_text_encoder(
    path: str | os.PathLike[str],
    device: str | torch.device,
    dtype: torch.dtype = torch.bfloat16,
    config: UMT5Config | None = None,
) -> UMT5EncoderModel:
    """UMT5EncoderModel on `device` with the weights of Wan's T5 `.pth` (umT5-XXL by default)."""
    model = build_text_encoder(config or umt5_config(), dtype)
    load_text_encoder_into(model, path, device)
    return model


def load_tokenizer(folder: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """The umT5 tokenizer from the release's `google/umt5-xxl` folder (offline)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"{folder}: tokenizer folder not found")
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}: cannot load the tokenizer ({exc})") from exc
