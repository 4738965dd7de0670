"""Model presets: the architecture of every component, as plain data.

`liveavatar-14b` is Wan2.2-S2V-14B as LiveAvatar runs it (the parameter names and shapes of the
released checkpoint). `tiny` is the same architecture at toy width and depth, for CPU tests and
the embedded demo; it needs no files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DiTConfig:
    """The S2V diffusion transformer (the checkpoint's `config.json` in our own names)."""

    dim: int = 5120
    ffn_dim: int = 13824
    num_heads: int = 40
    num_layers: int = 40
    in_dim: int = 16
    out_dim: int = 16
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    audio_dim: int = 1024
    num_audio_layers: int = 25
    """wav2vec2 hidden states mixed by the audio encoder (embeddings + every layer)."""
    num_audio_tokens: int = 4
    audio_inject_layers: tuple[int, ...] = (0, 4, 8, 12, 16, 20, 24, 27, 30, 33, 36, 39)
    cond_dim: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    zip_frame_buckets: tuple[int, int, int] = (1, 2, 16)
    """Motion latent frames packed at 1x, 2x and 4x compression, nearest first."""

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def __post_init__(self) -> None:
        if self.dim % self.num_heads or self.head_dim % 2:
            raise ValueError("dim must split into heads of even size")
        if any(not 0 <= i < self.num_layers for i in self.audio_inject_layers):
            raise ValueError("audio_inject_layers must name existing layers")


@dataclass(frozen=True)
class StreamConfig:
    """How the causal stream runs the model (LiveAvatar's inference settings)."""

    motion_frames: int = 73
    """Video frames of motion context the model was trained with (19 latent frames)."""
    vae_warmup_frames: int = 7
    """Motion latent frames decoded (and discarded) to prime the streaming decoder's cache."""
    sink_frame: int = 30
    """RoPE frame index of the sink (reference) tokens while the stream is young."""
    sink_offset_range: tuple[int, int] = (4, 30)
    """Rolling RoPE: the sink sits this many latent frames (inclusive range) ahead of a block."""
    shift: float = 3.0
    num_train_timesteps: int = 1000
    audio_chunk_frames: int = 15_000
    """wav2vec2's features are kept in fixed 5 min chunks of the speech (50 Hz frames) ..."""
    audio_context_frames: int = 52_500
    """... each computed with 17.5 min of context on either side (40 min windows: the whole
    speech up to that length), so memory does not grow with the audio (docs/audio.md)."""


@dataclass(frozen=True)
class Preset:
    name: str
    dit: DiTConfig
    text_encoder: dict[str, Any]
    """`transformers.UMT5Config` keyword arguments."""
    audio_encoder: dict[str, Any]
    """`transformers.Wav2Vec2Config` keyword arguments."""
    vae: dict[str, Any]
    """`diffusers.AutoencoderKLWan` keyword arguments."""
    stream: StreamConfig = field(default_factory=StreamConfig)
    tokenizer_dir: str | None = None
    """Where the umT5 tokenizer lives under the checkpoint directory (None: byte tokenizer)."""

    def with_dit(self, **overrides: Any) -> Preset:
        """This preset with some DiT settings changed (benchmarks use a reduced depth)."""
        if "num_layers" in overrides and "audio_inject_layers" not in overrides:
            depth = overrides["num_layers"]
            overrides["audio_inject_layers"] = tuple(
                i for i in self.dit.audio_inject_layers if i < depth
            )
        dit = dataclasses.replace(self.dit, **overrides)
        return dataclasses.replace(self, dit=dit)


LIVEAVATAR_14B = Preset(
    name="liveavatar-14b",
    dit=DiTConfig(),
    # umT5-XXL encoder
    text_encoder=dict(
        vocab_size=256384,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    ),
    # wav2vec2-large-xlsr-53-english
    audio_encoder=dict(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        conv_dim=(512,) * 7,
        conv_bias=True,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
    ),
    # Wan2.1 VAE: diffusers' defaults
    vae=dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2),
    tokenizer_dir="google/umt5-xxl",
)

TINY = Preset(
    name="tiny",
    dit=DiTConfig(
        dim=64,
        ffn_dim=128,
        num_heads=4,
        num_layers=4,
        freq_dim=32,
        text_dim=32,
        text_len=64,
        audio_dim=32,
        num_audio_layers=5,
        audio_inject_layers=(0, 2, 3),
    ),
    text_encoder=dict(
        vocab_size=384,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=64,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    ),
    audio_encoder=dict(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32,) * 7,
        conv_bias=True,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    ),
    vae=dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1),
)

PRESETS: dict[str, Preset] = {p.name: p for p in (LIVEAVATAR_14B, TINY)}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; use one of: {', '.join(PRESETS)}") from None
