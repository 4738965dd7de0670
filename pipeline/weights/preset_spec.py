"""The release a preset's models load from: a `ReleaseSpec` derived from a `Preset`.

`release_spec(LIVEAVATAR_14B)` is the published release (a test holds the two together); for
other presets it describes a scaled-down release in the same formats.
"""

from __future__ import annotations

from transformers import UMT5Config

from pipeline.presets import Preset

from .specs import ReleaseSpec, S2VArchitecture, VAEArchitecture
from .text_encoder import t5_architecture


def release_spec(preset: Preset) -> ReleaseSpec:
    d = preset.dit
    dit = S2VArchitecture(
        dim=d.dim,
        ffn_dim=d.ffn_dim,
        freq_dim=d.freq_dim,
        num_heads=d.num_heads,
        num_layers=d.num_layers,
        in_dim=d.in_dim,
        out_dim=d.out_dim,
        text_dim=d.text_dim,
        cond_dim=d.cond_dim,
        audio_dim=d.audio_dim,
        num_audio_token=d.num_audio_tokens,
        audio_inject_layers=tuple(d.audio_inject_layers),
        patch_size=tuple(d.patch_size),
        audio_layers=d.num_audio_layers,
    )
    v = preset.vae
    vae = VAEArchitecture(
        dim=v.get("base_dim", 96),
        z_dim=v.get("z_dim", 16),
        dim_mult=tuple(v.get("dim_mult", (1, 2, 4, 4))),
        num_res_blocks=v.get("num_res_blocks", 2),
        temperal_downsample=tuple(v.get("temperal_downsample", (False, True, True))),
    )
    return ReleaseSpec(
        dit=dit,
        text=t5_architecture(UMT5Config(**preset.text_encoder)),
        vae=vae,
        audio_hidden_size=preset.audio_encoder["hidden_size"],
        audio_num_layers=preset.audio_encoder["num_hidden_layers"],
    )
