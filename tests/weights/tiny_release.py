"""Write a scaled-down release in the exact published formats, for the loader tests.

Same files, same folder layout, same key names and tensor layouts as Wan2.2-S2V-14B and
LiveAvatar ship them; only the widths and depths are small. Every tensor is random, so a tensor
that lands in the wrong place is caught by comparing values. Writers return what they wrote.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import sentencepiece
import torch
from safetensors.torch import save_file
from transformers import T5Tokenizer, Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

from pipeline.weights.layout import (
    DIT_CONFIG,
    DIT_INDEX,
    CheckpointPaths,
)
from pipeline.weights.specs import (
    LORA_ALPHA,
    ReleaseSpec,
    S2VArchitecture,
    T5Architecture,
    TensorSpec,
    VAEArchitecture,
)

TINY = ReleaseSpec(
    dit=S2VArchitecture(
        dim=32,
        ffn_dim=48,
        freq_dim=16,
        num_heads=2,
        num_layers=3,
        text_dim=16,
        audio_dim=16,
        audio_inject_layers=(0, 2),
        audio_layers=3,
    ),
    text=T5Architecture(
        vocab_size=64, dim=16, dim_attn=16, dim_ffn=24, num_heads=2, num_layers=2, num_buckets=8
    ),
    vae=VAEArchitecture(dim=8, z_dim=4),
    audio_hidden_size=16,
    audio_num_layers=2,
    lora_rank=4,
)

# What else Wan's config.json holds (register_to_config keeps every constructor argument):
# settings that do not change tensor shapes.
_CONFIG_EXTRAS = {
    "_diffusers_version": "0.35.0",
    "zero_init": True,
    "zero_timestep": True,
    "add_last_motion": True,
    "enable_tsm": False,
    "trainable_token_pos_emb": False,
    "motion_token_num": 1024,
    "framepack_drop_mode": "padd",
    "text_len": 512,
    "eps": 1e-06,
}


def random_tensors(specs: dict[str, TensorSpec], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(spec.shape, generator=generator).to(spec.dtype)
        for name, spec in specs.items()
    }


def dit_config(arch: S2VArchitecture) -> dict:
    return arch.to_config() | _CONFIG_EXTRAS


def write_dit(base: Path, spec: ReleaseSpec, shards: int = 3, seed: int = 0) -> dict:
    """config.json, N shards of whole tensors in state-dict order, and the index."""
    base.mkdir(parents=True, exist_ok=True)
    (base / DIT_CONFIG).write_text(json.dumps(dit_config(spec.dit), indent=2))
    tensors = random_tensors(spec.dit_specs(), seed)
    names = list(tensors)
    per_shard = -(-len(names) // shards)
    weight_map = {}
    for i in range(shards):
        shard = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n].contiguous() for n in names[i * per_shard : (i + 1) * per_shard]}
        save_file(part, base / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (base / DIT_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
    return tensors


def write_lora(path: Path, spec: ReleaseSpec, seed: int = 1) -> dict:
    """LiveAvatar's adapter: base_model.model.<module>.lora_{A,B}.default.weight."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = random_tensors(spec.lora_specs(), seed)
    save_file(tensors, path, metadata={"format": "pt"})
    return tensors


def write_pth(path: Path, specs: dict[str, TensorSpec], seed: int) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = random_tensors(specs, seed)
    torch.save(tensors, path)
    return tensors


def write_tokenizer(folder: Path) -> None:
    """google/umt5-xxl's four files: a sentencepiece model and its transformers wrapping."""
    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    lines = ["a talking avatar says hello", "longtake renders long videos overnight"] * 10
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=24,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    (folder / "spiece.model").write_bytes(model.getvalue())
    T5Tokenizer(vocab_file=str(folder / "spiece.model"), extra_ids=0).save_pretrained(folder)
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))


def wav2vec2_config(spec: ReleaseSpec) -> Wav2Vec2Config:
    return Wav2Vec2Config(
        hidden_size=spec.audio_hidden_size,
        num_hidden_layers=spec.audio_num_layers,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_stride=(5, 2),
        conv_kernel=(10, 3),
        num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        vocab_size=12,
        architectures=["Wav2Vec2ForCTC"],
    )


def write_wav2vec2(
    folder: Path, spec: ReleaseSpec, seed: int = 4, config: Wav2Vec2Config | None = None
) -> dict:
    """A CTC fine-tune folder whose weights use the original names (weight_g / weight_v)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = config or wav2vec2_config(spec)
    torch.manual_seed(seed)
    model = Wav2Vec2ForCTC(config)
    config.to_json_file(folder / "config.json")
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps({f"t{i}": i for i in range(12)}))
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": "t0"}))
    tensors = {
        name.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): t.detach().clone().contiguous()
        for name, t in model.state_dict().items()
    }
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return tensors


@dataclass
class TinyRelease:
    root: Path
    spec: ReleaseSpec
    written: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def paths(self) -> CheckpointPaths:
        return CheckpointPaths.at(self.root)

    def copy_to(self, root: Path) -> TinyRelease:
        shutil.copytree(self.root, root)
        return TinyRelease(root, self.spec, self.written)


def write_release(
    root: Path, spec: ReleaseSpec = TINY, audio_config: dict | None = None
) -> TinyRelease:
    """The whole release; `audio_config` (Wav2Vec2Config arguments) as a preset has it."""
    paths = CheckpointPaths.at(root)
    release = TinyRelease(root, spec)
    release.written["dit"] = write_dit(paths.base, spec)
    release.written["lora"] = write_lora(paths.lora, spec)
    release.written["text"] = write_pth(paths.text_encoder, spec.text_specs(), seed=2)
    release.written["vae"] = write_pth(paths.vae, spec.vae_specs(), seed=3)
    config = None
    if audio_config is not None:
        config = Wav2Vec2Config(**audio_config, vocab_size=12, architectures=["Wav2Vec2ForCTC"])
    release.written["audio"] = write_wav2vec2(paths.wav2vec2, spec, config=config)
    write_tokenizer(paths.tokenizer)
    return release


def merged_weight(release: TinyRelease, module: str, dtype: torch.dtype) -> torch.Tensor:
    """What LiveAvatar's merge makes of `module`.weight: W + alpha / r · B @ A, in fp32."""
    w = release.written["dit"][f"{module}.weight"].float()
    a = release.written["lora"][f"base_model.model.{module}.lora_A.default.weight"].float()
    b = release.written["lora"][f"base_model.model.{module}.lora_B.default.weight"].float()
    return (w + (LORA_ALPHA / release.spec.lora_rank) * (b @ a)).to(dtype)
