"""Wan's `Wan2.1_VAE.pth` into diffusers' `AutoencoderKLWan`.

The key mapping follows diffusers' own Wan conversion. Wan keeps each half of the VAE as one
flat Sequential; diffusers groups the decoder into up blocks:

    conv1 / conv2                         -> quant_conv / post_quant_conv
    {en,de}coder.conv1                    -> {en,de}coder.conv_in
    {en,de}coder.middle.{0,1,2}           -> mid_block.resnets.0 / attentions.0 / resnets.1
    {en,de}coder.head.{0,2}               -> norm_out / conv_out
    encoder.downsamples.n                 -> encoder.down_blocks.n   (still flat)
    decoder.upsamples.n                   -> decoder.up_blocks.(n // k).resnets.(n % k),
                                             or .upsamplers.0 for the last of each group,
                                             k = num_res_blocks + 2
    residual.{0,2,3,6}, shortcut          -> norm1, conv1, norm2, conv2, conv_shortcut
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan

from .mapped_load import load_renamed
from .module_tensors import building
from .pth_file import load_state_dict
from .specs import WAN21_VAE, VAEArchitecture, vae_specs
from .streaming import CopyStats

_RESIDUAL = {
    "residual.0.gamma": "norm1.gamma",
    "residual.2.weight": "conv1.weight",
    "residual.2.bias": "conv1.bias",
    "residual.3.gamma": "norm2.gamma",
    "residual.6.weight": "conv2.weight",
    "residual.6.bias": "conv2.bias",
    "shortcut.weight": "conv_shortcut.weight",
    "shortcut.bias": "conv_shortcut.bias",
}
_MIDDLE = {"0": "mid_block.resnets.0", "1": "mid_block.attentions.0", "2": "mid_block.resnets.1"}
_TOP = {
    "conv1.weight": "quant_conv.weight",
    "conv1.bias": "quant_conv.bias",
    "conv2.weight": "post_quant_conv.weight",
    "conv2.bias": "post_quant_conv.bias",
}
_HEAD = {"0": "norm_out", "2": "conv_out"}
_IN_HALF = re.compile(r"(encoder|decoder)\.(conv1|middle|head|downsamples|upsamples)\.(.+)")


def vae_config(arch: VAEArchitecture = WAN21_VAE) -> dict[str, Any]:
    """AutoencoderKLWan keyword arguments for a Wan2.1-style VAE of this size."""
    return {
        "base_dim": arch.dim,
        "z_dim": arch.z_dim,
        "dim_mult": list(arch.dim_mult),
        "num_res_blocks": arch.num_res_blocks,
        "attn_scales": [],
        "temperal_downsample": list(arch.temperal_downsample),
    }


def vae_architecture(vae: AutoencoderKLWan) -> VAEArchitecture:
    cfg = vae.config
    if cfg.attn_scales or getattr(cfg, "is_residual", False) or cfg.get("patch_size"):
        raise ValueError("only the Wan2.1 VAE layout (no attention scales, no patching) loads")
    return VAEArchitecture(
        dim=cfg.base_dim,
        z_dim=cfg.z_dim,
        dim_mult=tuple(cfg.dim_mult),
        num_res_blocks=cfg.num_res_blocks,
        temperal_downsample=tuple(cfg.temperal_downsample),
    )


def _block_rest(rest: str) -> str:
    # Within a residual block: rename its layers; resample/time_conv keep their names.
    return _RESIDUAL.get(rest, rest)


def diffusers_vae_name(original: str, num_res_blocks: int = 2) -> str:
    """The AutoencoderKLWan name of a tensor of Wan's VAE checkpoint."""
    if original in _TOP:
        return _TOP[original]
    match = _IN_HALF.fullmatch(original)
    if not match:
        raise KeyError(f"not a tensor of Wan's VAE: {original}")
    half, part, rest = match.groups()
    if part == "conv1":
        return f"{half}.conv_in.{rest}"
    if part == "head":
        layer, param = rest.split(".", 1)
        return f"{half}.{_HEAD[layer]}.{param}"
    index, rest = rest.split(".", 1)
    if part == "middle":
        return f"{half}.{_MIDDLE[index]}.{_block_rest(rest)}"
    if part == "downsamples":
        return f"encoder.down_blocks.{index}.{_block_rest(rest)}"
    group, position = divmod(int(index), num_res_blocks + 2)
    if position <= num_res_blocks:
        return f"decoder.up_blocks.{group}.resnets.{position}.{_block_rest(rest)}"
    return f"decoder.up_blocks.{group}.upsamplers.0.{rest}"


def build_vae(
    config: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "meta",
) -> AutoencoderKLWan:
    with building(device, dtype):
        vae = AutoencoderKLWan(**(config or vae_config()))
    return vae.eval().requires_grad_(False)


def load_vae_into(
    vae: AutoencoderKLWan, path: str | os.PathLike[str], device: str | torch.device
) -> CopyStats:
    path = Path(path)
    arch = vae_architecture(vae)
    state = load_state_dict(path)

    def rename(name: str) -> str:
        return diffusers_vae_name(name, arch.num_res_blocks)

    return load_renamed(state, vae_specs(arch), rename, vae, torch.device(device), str(path))


def load_vae(
    path: str | os.PathLike[str],
    device: str | torch.device,
    dtype: torch.dtype = torch.float32,
    config: dict[str, Any] | None = None,
) -> AutoencoderKLWan:
    """AutoencoderKLWan on `device` with the weights of `Wan2.1_VAE.pth` (Wan2.1 by default)."""
    vae = build_vae(config, dtype)
    load_vae_into(vae, path, device)
    return vae
