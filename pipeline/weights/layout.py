"""Where each released file lives under a checkpoints root, and where it comes from.

The layout is LiveAvatar's: the Wan2.2-S2V-14B release as published, and the LoRA beside it.

    <root>/Wan2.2-S2V-14B/config.json
    <root>/Wan2.2-S2V-14B/diffusion_pytorch_model.safetensors.index.json
    <root>/Wan2.2-S2V-14B/diffusion_pytorch_model-0000{1..4}-of-00004.safetensors
    <root>/Wan2.2-S2V-14B/models_t5_umt5-xxl-enc-bf16.pth
    <root>/Wan2.2-S2V-14B/google/umt5-xxl/                    tokenizer
    <root>/Wan2.2-S2V-14B/Wan2.1_VAE.pth
    <root>/Wan2.2-S2V-14B/wav2vec2-large-xlsr-53-english/
    <root>/LiveAvatar/liveavatar.safetensors
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

BASE_REPO = "Wan-AI/Wan2.2-S2V-14B"
LORA_REPO = "Quark-Vision/Live-Avatar"
BASE_DIR = "Wan2.2-S2V-14B"
LORA_DIR = "LiveAvatar"

DIT_CONFIG = "config.json"
DIT_INDEX = "diffusion_pytorch_model.safetensors.index.json"
DIT_SHARDS = tuple(f"diffusion_pytorch_model-{i:05d}-of-00004.safetensors" for i in (1, 2, 3, 4))
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
TOKENIZER_DIR = "google/umt5-xxl"
TOKENIZER_FILES = (
    "special_tokens_map.json",
    "spiece.model",
    "tokenizer.json",
    "tokenizer_config.json",
)
VAE_FILE = "Wan2.1_VAE.pth"
WAV2VEC2_DIR = "wav2vec2-large-xlsr-53-english"
WAV2VEC2_FILES = ("config.json", "preprocessor_config.json", "model.safetensors")
WAV2VEC2_OPTIONAL = ("special_tokens_map.json", "vocab.json")  # CTC decoding only
LORA_FILE = "liveavatar.safetensors"

# Which part of the model each file feeds (the keys of a load placement).
PARTS = ("dit", "vae", "text", "audio")


@dataclass(frozen=True)
class ReleaseFile:
    path: str  # relative to the checkpoints root
    part: str  # dit | vae | text | audio
    repo: str  # Hugging Face repository it is published in
    required: bool = True

    @property
    def repo_path(self) -> str:
        """The file's path inside its repository."""
        return self.path.split("/", 1)[1]


def release_files() -> list[ReleaseFile]:
    base = [
        ReleaseFile(f"{BASE_DIR}/{DIT_CONFIG}", "dit", BASE_REPO),
        ReleaseFile(f"{BASE_DIR}/{DIT_INDEX}", "dit", BASE_REPO),
        *(ReleaseFile(f"{BASE_DIR}/{s}", "dit", BASE_REPO) for s in DIT_SHARDS),
        ReleaseFile(f"{BASE_DIR}/{T5_FILE}", "text", BASE_REPO),
        *(
            ReleaseFile(f"{BASE_DIR}/{TOKENIZER_DIR}/{f}", "text", BASE_REPO)
            for f in TOKENIZER_FILES
        ),
        ReleaseFile(f"{BASE_DIR}/{VAE_FILE}", "vae", BASE_REPO),
        *(
            ReleaseFile(f"{BASE_DIR}/{WAV2VEC2_DIR}/{f}", "audio", BASE_REPO)
            for f in WAV2VEC2_FILES
        ),
        *(
            ReleaseFile(f"{BASE_DIR}/{WAV2VEC2_DIR}/{f}", "audio", BASE_REPO, required=False)
            for f in WAV2VEC2_OPTIONAL
        ),
    ]
    return [*base, ReleaseFile(f"{LORA_DIR}/{LORA_FILE}", "dit", LORA_REPO)]


@dataclass(frozen=True)
class CheckpointPaths:
    """Absolute paths of the released files under one checkpoints root."""

    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str]) -> CheckpointPaths:
        return cls(Path(root).expanduser())

    @property
    def base(self) -> Path:
        return self.root / BASE_DIR

    @property
    def dit_config(self) -> Path:
        return self.base / DIT_CONFIG

    @property
    def dit_index(self) -> Path:
        return self.base / DIT_INDEX

    @property
    def text_encoder(self) -> Path:
        return self.base / T5_FILE

    @property
    def tokenizer(self) -> Path:
        return self.base / TOKENIZER_DIR

    @property
    def vae(self) -> Path:
        return self.base / VAE_FILE

    @property
    def wav2vec2(self) -> Path:
        return self.base / WAV2VEC2_DIR

    @property
    def lora(self) -> Path:
        return self.root / LORA_DIR / LORA_FILE
