"""wav2vec2 (`wav2vec2-large-xlsr-53-english/`) into transformers' `Wav2Vec2Model`.

The folder is an ordinary transformers checkpoint of a CTC fine-tune. longtake uses the
encoder's hidden states only, so the CTC head (`lm_head.*`) is the one part of the file that is
expected to go unused; any other unused or missing tensor is an error.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

from .errors import CheckpointError, KeyMismatchError, MissingFileError
from .safetensors_file import read_header

UNUSED_PREFIXES = ("lm_head.",)


class _ReleasedWav2Vec2(Wav2Vec2Model):
    """Wav2Vec2Model that expects the release's CTC head and leaves it out without a warning."""

    _keys_to_ignore_on_load_unexpected = [r"lm_head\..*"]


def weights_file(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise MissingFileError(f"{folder}: no model.safetensors (or pytorch_model.bin)")


def load_audio_encoder(
    folder: str | os.PathLike[str],
    device: str | torch.device,
    dtype: torch.dtype = torch.float32,
) -> Wav2Vec2Model:
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise MissingFileError(f"{folder}: config.json not found")
    weights = weights_file(folder)
    if weights.suffix == ".safetensors":
        read_header(weights)  # a truncated download fails here with a clear message
    try:
        model, info = _ReleasedWav2Vec2.from_pretrained(
            folder, dtype=dtype, local_files_only=True, output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{folder}: cannot load wav2vec2 ({exc})") from exc
    unexpected = {k for k in info["unexpected_keys"] if not k.startswith(UNUSED_PREFIXES)}
    mismatched = [str(m) for m in info.get("mismatched_keys", ())]
    if info["missing_keys"] or unexpected or mismatched:
        raise KeyMismatchError(
            str(weights), missing=info["missing_keys"], unexpected=unexpected | set(mismatched)
        )
    return model.to(device).eval().requires_grad_(False)


def load_feature_extractor(folder: str | os.PathLike[str]) -> Wav2Vec2FeatureExtractor:
    """The input normalisation wav2vec2 was trained with (preprocessor_config.json)."""
    folder = Path(folder)
    if not (folder / "preprocessor_config.json").is_file():
        raise MissingFileError(f"{folder}: preprocessor_config.json not found")
    return Wav2Vec2FeatureExtractor.from_pretrained(folder, local_files_only=True)
