"""The tensors each released file holds: names, shapes and dtypes as published.

These tables are written from the release formats themselves (the original Wan2.2 and
LiveAvatar module definitions), not from longtake's modules, so that checking a download and
checking our modules against the release are two independent comparisons.

- DiT (`Wan2.2-S2V-14B/diffusion_pytorch_model-*.safetensors`): the state dict of Wan's
  `WanModel_S2V`, derived from the folder's config.json.
- LoRA (`LiveAvatar/liveavatar.safetensors`): PEFT `lora_A`/`lora_B` pairs on every linear named
  q, k, v, o, ffn.0 or ffn.2 (self-, cross- and audio-attention, FFN), rank 128, alpha 64.
- Text encoder (`models_t5_umt5-xxl-enc-bf16.pth`): Wan's own umT5-XXL encoder state dict.
- VAE (`Wan2.1_VAE.pth`): Wan's own `WanVAE_` state dict (encoder, decoder, conv1/conv2).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

Shape = tuple[int, ...]


@dataclass(frozen=True)
class TensorSpec:
    shape: Shape
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


# --------------------------------------------------------------------------------------------
# DiT: WanModel_S2V
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S2VArchitecture:
    """The architecture fields of the DiT folder's config.json that decide tensor shapes.

    Field names are config.json's. Fields Wan leaves out of config.json (patch_size, text_dim,
    qk_norm, cross_attn_norm) take Wan's defaults; `audio_layers` is the number of wav2vec2
    hidden states the audio encoder mixes (25 for wav2vec2-large: embeddings + 24 layers).
    """

    dim: int = 5120
    ffn_dim: int = 13824
    freq_dim: int = 256
    num_heads: int = 40
    num_layers: int = 40
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    cond_dim: int = 16
    audio_dim: int = 1024
    num_audio_token: int = 4
    audio_inject_layers: tuple[int, ...] = (0, 4, 8, 12, 16, 20, 24, 27, 30, 33, 36, 39)
    patch_size: tuple[int, int, int] = (1, 2, 2)
    enable_adain: bool = True
    adain_mode: str = "attn_norm"
    enable_framepack: bool = True
    enable_motioner: bool = False
    qk_norm: bool = True
    cross_attn_norm: bool = True
    audio_layers: int = 25

    @classmethod
    def from_config(cls, config: Mapping[str, Any], audio_layers: int = 25) -> S2VArchitecture:
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {k: v for k, v in config.items() if k in known}
        for key in ("audio_inject_layers", "patch_size"):
            if key in values:
                values[key] = tuple(values[key])
        values["audio_layers"] = audio_layers
        return cls(**values)

    def to_config(self) -> dict[str, Any]:
        """config.json as the release writes it (Wan's register_to_config output)."""
        config: dict[str, Any] = {"_class_name": "WanModel_S2V", "model_type": "s2v"}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "audio_layers":
                continue  # not a config field: it is the audio encoder's depth + 1
            if f.name in _LEFT_OUT_OF_CONFIG and value == f.default:
                continue
            config[f.name] = list(value) if isinstance(value, tuple) else value
        return config

    def unsupported(self) -> list[str]:
        """Features of Wan's S2V model that the LiveAvatar checkpoint does not use."""
        problems = []
        if self.enable_motioner:
            problems.append("enable_motioner=true (the transformer motioner is not supported)")
        if not self.enable_framepack:
            problems.append("enable_framepack=false (frame-pack motion is required)")
        if self.enable_adain and self.adain_mode != "attn_norm":
            problems.append(f"adain_mode={self.adain_mode!r} (only 'attn_norm' is supported)")
        if not (self.qk_norm and self.cross_attn_norm):
            problems.append("qk_norm and cross_attn_norm must both be true")
        return problems


# Wan lists these in ignore_for_config, so the release's config.json does not carry them.
_LEFT_OUT_OF_CONFIG = {"patch_size", "text_dim", "qk_norm", "cross_attn_norm"}

LIVEAVATAR_14B = S2VArchitecture()


def dit_shapes(arch: S2VArchitecture) -> dict[str, Shape]:
    """Every tensor of WanModel_S2V's state dict with its shape, in module order."""
    d, f = arch.dim, arch.ffn_dim
    patch = arch.patch_size
    shapes: dict[str, Shape] = {
        "patch_embedding.weight": (d, arch.in_dim, *patch),
        "patch_embedding.bias": (d,),
        "text_embedding.0.weight": (d, arch.text_dim),
        "text_embedding.0.bias": (d,),
        "text_embedding.2.weight": (d, d),
        "text_embedding.2.bias": (d,),
        "time_embedding.0.weight": (d, arch.freq_dim),
        "time_embedding.0.bias": (d,),
        "time_embedding.2.weight": (d, d),
        "time_embedding.2.bias": (d,),
        "time_projection.1.weight": (6 * d, d),
        "time_projection.1.bias": (6 * d,),
    }

    def attention(prefix: str) -> None:
        for proj in ("q", "k", "v", "o"):
            shapes[f"{prefix}.{proj}.weight"] = (d, d)
            shapes[f"{prefix}.{proj}.bias"] = (d,)
        shapes[f"{prefix}.norm_q.weight"] = (d,)
        shapes[f"{prefix}.norm_k.weight"] = (d,)

    # norm1/norm2 are affine-free LayerNorms; norm3 (before cross-attention) is affine.
    for i in range(arch.num_layers):
        b = f"blocks.{i}"
        attention(f"{b}.self_attn")
        shapes[f"{b}.norm3.weight"] = (d,)
        shapes[f"{b}.norm3.bias"] = (d,)
        attention(f"{b}.cross_attn")
        shapes[f"{b}.ffn.0.weight"] = (f, d)
        shapes[f"{b}.ffn.0.bias"] = (f,)
        shapes[f"{b}.ffn.2.weight"] = (d, f)
        shapes[f"{b}.ffn.2.bias"] = (d,)
        shapes[f"{b}.modulation"] = (1, 6, d)

    shapes["head.head.weight"] = (arch.out_dim * math.prod(patch), d)
    shapes["head.head.bias"] = (arch.out_dim * math.prod(patch),)
    shapes["head.modulation"] = (1, 2, d)
    if arch.cond_dim > 0:
        shapes["cond_encoder.weight"] = (d, arch.cond_dim, *patch)
        shapes["cond_encoder.bias"] = (d,)

    # Causal audio encoder: a learned mix of the wav2vec2 hidden states, then strided causal
    # 1-D convolutions to num_audio_token local tokens (+ a global token when adain is on).
    quarter = d // 4
    enc = "casual_audio_encoder"  # sic: the released checkpoint spells it this way
    shapes[f"{enc}.weights"] = (1, arch.audio_layers, 1, 1)
    shapes[f"{enc}.encoder.conv1_local.conv.weight"] = (
        quarter * arch.num_audio_token,
        arch.audio_dim,
        3,
    )
    shapes[f"{enc}.encoder.conv1_local.conv.bias"] = (quarter * arch.num_audio_token,)
    if arch.enable_adain:
        shapes[f"{enc}.encoder.conv1_global.conv.weight"] = (quarter, arch.audio_dim, 3)
        shapes[f"{enc}.encoder.conv1_global.conv.bias"] = (quarter,)
    shapes[f"{enc}.encoder.conv2.conv.weight"] = (d // 2, quarter, 3)
    shapes[f"{enc}.encoder.conv2.conv.bias"] = (d // 2,)
    shapes[f"{enc}.encoder.conv3.conv.weight"] = (d, d // 2, 3)
    shapes[f"{enc}.encoder.conv3.conv.bias"] = (d,)
    if arch.enable_adain:
        shapes[f"{enc}.encoder.final_linear.weight"] = (d, d)
        shapes[f"{enc}.encoder.final_linear.bias"] = (d,)
    shapes[f"{enc}.encoder.padding_tokens"] = (1, 1, 1, d)

    # Audio injection: one cross-attention (+ an AdaLN fed by the global audio token) after
    # each of the audio_inject_layers blocks. The pre-norms are affine-free.
    for j in range(len(arch.audio_inject_layers)):
        attention(f"audio_injector.injector.{j}")
    if arch.enable_adain:
        for j in range(len(arch.audio_inject_layers)):
            shapes[f"audio_injector.injector_adain_layers.{j}.linear.weight"] = (2 * d, d)
            shapes[f"audio_injector.injector_adain_layers.{j}.linear.bias"] = (2 * d,)

    shapes["trainable_cond_mask.weight"] = (3, d)
    if arch.enable_framepack:
        # Motion latents packed at 1x, 2x and 4x compression; 16 = VAE latent channels.
        for name, kernel in (("proj", (1, 2, 2)), ("proj_2x", (2, 4, 4)), ("proj_4x", (4, 8, 8))):
            shapes[f"frame_packer.{name}.weight"] = (d, 16, *kernel)
            shapes[f"frame_packer.{name}.bias"] = (d,)
    return shapes


def dit_specs(arch: S2VArchitecture, dtype: torch.dtype = torch.bfloat16) -> dict[str, TensorSpec]:
    return {name: TensorSpec(shape, dtype) for name, shape in dit_shapes(arch).items()}


# --------------------------------------------------------------------------------------------
# LoRA: LiveAvatar's PEFT adapter on the DiT
# --------------------------------------------------------------------------------------------

LORA_TARGETS: tuple[str, ...] = ("q", "k", "v", "o", "ffn.0", "ffn.2")
LORA_RANK = 128
LORA_ALPHA = 64.0
# get_peft_model() wraps the model, so LiveAvatar's saved keys carry this prefix and the
# adapter name: base_model.model.blocks.0.self_attn.q.lora_A.default.weight
LORA_KEY_PREFIX = "base_model.model."
LORA_ADAPTER = "default"


def lora_target_modules(
    weight_shapes: Mapping[str, Shape], targets: Iterable[str] = LORA_TARGETS
) -> dict[str, Shape]:
    """Module names PEFT's `target_modules` would wrap, with their weight shapes.

    PEFT matches a module whose name equals a target or ends with "." + target; only linear
    layers (2-D weights) take an adapter.
    """
    targets = tuple(targets)
    found = {}
    for name, shape in weight_shapes.items():
        if not name.endswith(".weight") or len(shape) != 2:
            continue
        module = name[: -len(".weight")]
        if any(module == t or module.endswith("." + t) for t in targets):
            found[module] = shape
    return found


def lora_key(module: str, side: str) -> str:
    return f"{LORA_KEY_PREFIX}{module}.lora_{side}.{LORA_ADAPTER}.weight"


def lora_specs(
    arch: S2VArchitecture, rank: int = LORA_RANK, dtype: torch.dtype = torch.bfloat16
) -> dict[str, TensorSpec]:
    specs = {}
    for module, (out_f, in_f) in lora_target_modules(dit_shapes(arch)).items():
        specs[lora_key(module, "A")] = TensorSpec((rank, in_f), dtype)
        specs[lora_key(module, "B")] = TensorSpec((out_f, rank), dtype)
    return specs


# --------------------------------------------------------------------------------------------
# Text encoder: Wan's umT5-XXL encoder
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class T5Architecture:
    vocab_size: int = 256384
    dim: int = 4096
    dim_attn: int = 4096
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32


UMT5_XXL = T5Architecture()


def t5_specs(arch: T5Architecture, dtype: torch.dtype = torch.bfloat16) -> dict[str, TensorSpec]:
    """Wan's T5Encoder with per-layer relative position embeddings (shared_pos=False)."""
    shapes: dict[str, Shape] = {"token_embedding.weight": (arch.vocab_size, arch.dim)}
    for i in range(arch.num_layers):
        b = f"blocks.{i}"
        shapes[f"{b}.norm1.weight"] = (arch.dim,)
        for proj in ("q", "k", "v"):
            shapes[f"{b}.attn.{proj}.weight"] = (arch.dim_attn, arch.dim)
        shapes[f"{b}.attn.o.weight"] = (arch.dim, arch.dim_attn)
        shapes[f"{b}.norm2.weight"] = (arch.dim,)
        shapes[f"{b}.ffn.gate.0.weight"] = (arch.dim_ffn, arch.dim)
        shapes[f"{b}.ffn.fc1.weight"] = (arch.dim_ffn, arch.dim)
        shapes[f"{b}.ffn.fc2.weight"] = (arch.dim, arch.dim_ffn)
        shapes[f"{b}.pos_embedding.embedding.weight"] = (arch.num_buckets, arch.num_heads)
    shapes["norm.weight"] = (arch.dim,)
    return {name: TensorSpec(shape, dtype) for name, shape in shapes.items()}


# --------------------------------------------------------------------------------------------
# VAE: Wan2.1's WanVAE_
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VAEArchitecture:
    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple[bool, ...] = (False, True, True)


WAN21_VAE = VAEArchitecture()


def _residual(shapes: dict[str, Shape], prefix: str, cin: int, cout: int) -> None:
    # residual = [RMS_norm, SiLU, CausalConv3d, RMS_norm, SiLU, Dropout, CausalConv3d]
    shapes[f"{prefix}.residual.0.gamma"] = (cin, 1, 1, 1)
    shapes[f"{prefix}.residual.2.weight"] = (cout, cin, 3, 3, 3)
    shapes[f"{prefix}.residual.2.bias"] = (cout,)
    shapes[f"{prefix}.residual.3.gamma"] = (cout, 1, 1, 1)
    shapes[f"{prefix}.residual.6.weight"] = (cout, cout, 3, 3, 3)
    shapes[f"{prefix}.residual.6.bias"] = (cout,)
    if cin != cout:
        shapes[f"{prefix}.shortcut.weight"] = (cout, cin, 1, 1, 1)
        shapes[f"{prefix}.shortcut.bias"] = (cout,)


def _middle(shapes: dict[str, Shape], prefix: str, c: int) -> None:
    _residual(shapes, f"{prefix}.middle.0", c, c)
    shapes[f"{prefix}.middle.1.norm.gamma"] = (c, 1, 1)
    shapes[f"{prefix}.middle.1.to_qkv.weight"] = (3 * c, c, 1, 1)
    shapes[f"{prefix}.middle.1.to_qkv.bias"] = (3 * c,)
    shapes[f"{prefix}.middle.1.proj.weight"] = (c, c, 1, 1)
    shapes[f"{prefix}.middle.1.proj.bias"] = (c,)
    _residual(shapes, f"{prefix}.middle.2", c, c)


def vae_specs(arch: VAEArchitecture, dtype: torch.dtype = torch.float32) -> dict[str, TensorSpec]:
    shapes: dict[str, Shape] = {}
    z, stages = arch.z_dim, len(arch.dim_mult)

    # Encoder: conv1, then per stage num_res_blocks residual blocks and (but for the last
    # stage) a spatial downsample, temporal too where temperal_downsample says so.
    dims = [arch.dim * m for m in (1, *arch.dim_mult)]
    shapes["encoder.conv1.weight"] = (dims[0], 3, 3, 3, 3)
    shapes["encoder.conv1.bias"] = (dims[0],)
    idx = 0
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        for _ in range(arch.num_res_blocks):
            _residual(shapes, f"encoder.downsamples.{idx}", cin, cout)
            cin, idx = cout, idx + 1
        if i != stages - 1:
            shapes[f"encoder.downsamples.{idx}.resample.1.weight"] = (cout, cout, 3, 3)
            shapes[f"encoder.downsamples.{idx}.resample.1.bias"] = (cout,)
            if arch.temperal_downsample[i]:
                shapes[f"encoder.downsamples.{idx}.time_conv.weight"] = (cout, cout, 3, 1, 1)
                shapes[f"encoder.downsamples.{idx}.time_conv.bias"] = (cout,)
            idx += 1
    _middle(shapes, "encoder", dims[-1])
    shapes["encoder.head.0.gamma"] = (dims[-1], 1, 1, 1)
    shapes["encoder.head.2.weight"] = (2 * z, dims[-1], 3, 3, 3)
    shapes["encoder.head.2.bias"] = (2 * z,)

    shapes["conv1.weight"] = (2 * z, 2 * z, 1, 1, 1)
    shapes["conv1.bias"] = (2 * z,)
    shapes["conv2.weight"] = (z, z, 1, 1, 1)
    shapes["conv2.bias"] = (z,)

    # Decoder: mirror image; each upsample halves the channels, so every stage after the
    # first starts from half its predecessor's width, with num_res_blocks + 1 residual blocks.
    dims = [arch.dim * m for m in (arch.dim_mult[-1], *reversed(arch.dim_mult))]
    temperal_upsample = tuple(reversed(arch.temperal_downsample))
    shapes["decoder.conv1.weight"] = (dims[0], z, 3, 3, 3)
    shapes["decoder.conv1.bias"] = (dims[0],)
    _middle(shapes, "decoder", dims[0])
    idx = 0
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        if i > 0:
            cin //= 2
        for _ in range(arch.num_res_blocks + 1):
            _residual(shapes, f"decoder.upsamples.{idx}", cin, cout)
            cin, idx = cout, idx + 1
        if i != stages - 1:
            shapes[f"decoder.upsamples.{idx}.resample.1.weight"] = (cout // 2, cout, 3, 3)
            shapes[f"decoder.upsamples.{idx}.resample.1.bias"] = (cout // 2,)
            if temperal_upsample[i]:
                shapes[f"decoder.upsamples.{idx}.time_conv.weight"] = (2 * cout, cout, 3, 1, 1)
                shapes[f"decoder.upsamples.{idx}.time_conv.bias"] = (2 * cout,)
            idx += 1
    shapes["decoder.head.0.gamma"] = (dims[-1], 1, 1, 1)
    shapes["decoder.head.2.weight"] = (3, dims[-1], 3, 3, 3)
    shapes["decoder.head.2.bias"] = (3,)
    return {name: TensorSpec(shape, dtype) for name, shape in shapes.items()}


# --------------------------------------------------------------------------------------------
# The whole release
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseSpec:
    """What a complete checkpoints root must hold: architectures and stored dtypes.

    `liveavatar_14b()` is the published release; tests describe scaled-down releases with the
    same layout through the same type.
    """

    dit: S2VArchitecture = LIVEAVATAR_14B
    text: T5Architecture = UMT5_XXL
    vae: VAEArchitecture = WAN21_VAE
    audio_hidden_size: int = 1024
    audio_num_layers: int = 24
    lora_rank: int = LORA_RANK
    dit_dtype: torch.dtype = torch.bfloat16
    lora_dtype: torch.dtype = torch.bfloat16
    text_dtype: torch.dtype = torch.bfloat16
    vae_dtype: torch.dtype = torch.float32

    @classmethod
    def liveavatar_14b(cls) -> ReleaseSpec:
        return cls()

    def dit_specs(self) -> dict[str, TensorSpec]:
        return dit_specs(self.dit, self.dit_dtype)

    def lora_specs(self) -> dict[str, TensorSpec]:
        return lora_specs(self.dit, self.lora_rank, self.lora_dtype)

    def text_specs(self) -> dict[str, TensorSpec]:
        return t5_specs(self.text, self.text_dtype)

    def vae_specs(self) -> dict[str, TensorSpec]:
        return vae_specs(self.vae, self.vae_dtype)
