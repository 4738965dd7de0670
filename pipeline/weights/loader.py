"""Load the parts a process needs from a checkpoints root, each onto its device."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import AutoencoderKLWan
from torch import nn
from transformers import (
    PreTrainedTokenizerBase,
    UMT5Config,
    UMT5EncoderModel,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)

from .audio_encoder import load_audio_encoder, load_feature_extractor
from .dit import DiTLoadReport, load_dit
from .layout import CheckpointPaths
from .placement import Placement
from .specs import ReleaseSpec
from .text_encoder import load_text_encoder, load_tokenizer
from .vae import load_vae
from .verifier import verify

log = logging.getLogger(__name__)

LIVEAVATAR_PRESET = "liveavatar-14b"
FALLBACK_PRESET = "tiny"


@dataclass
class LoadedWeights:
    dit: nn.Module | None = None
    dit_report: DiTLoadReport | None = None
    vae: AutoencoderKLWan | None = None
    text_encoder: UMT5EncoderModel | None = None
    tokenizer: PreTrainedTokenizerBase | None = None
    audio_encoder: Wav2Vec2Model | None = None
    feature_extractor: Wav2Vec2FeatureExtractor | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def load_weights(
    root: str | os.PathLike[str],
    placement: Placement,
    dit: nn.Module | None = None,
    *,
    text_config: UMT5Config | None = None,
    vae_config: dict[str, Any] | None = None,
    text_dtype: torch.dtype = torch.bfloat16,
    vae_dtype: torch.dtype = torch.float32,
    audio_dtype: torch.dtype = torch.float32,
    merge_lora: bool = True,
) -> LoadedWeights:
    """Load the parts `placement` names from the release under `root`.

    The DiT is loaded into `dit`, a module the caller built from its preset (ideally on the
    meta device, so that no memory is spent on values about to be overwritten); LiveAvatar's
    LoRA is merged into it unless `merge_lora` is False. Other parts are built here, with
    umT5-XXL / Wan2.1 VAE architectures unless configs are given.
    """
    paths = CheckpointPaths.at(root)
    loaded = LoadedWeights()

    def timed(part: str) -> _Timer:
        return _Timer(loaded.seconds, part, placement.devices.get(part))

    if "dit" in placement.parts:
        if dit is None:
            raise ValueError("placement loads the DiT: pass the module to fill as `dit`")
        with timed("dit"):
            loaded.dit_report = load_dit(
                paths.base,
                dit,
                placement.load_device("dit"),
                lora=paths.lora if merge_lora else None,
            )
        loaded.dit = dit
    if "vae" in placement.parts:
        with timed("vae"):
            loaded.vae = load_vae(paths.vae, placement.load_device("vae"), vae_dtype, vae_config)
    if "text" in placement.parts:
        with timed("text"):
            loaded.text_encoder = load_text_encoder(
                paths.text_encoder, placement.load_device("text"), text_dtype, text_config
            )
            loaded.tokenizer = load_tokenizer(paths.tokenizer)
    if "audio" in placement.parts:
        with timed("audio"):
            loaded.audio_encoder = load_audio_encoder(
                paths.wav2vec2, placement.load_device("audio"), audio_dtype
            )
            loaded.feature_extractor = load_feature_extractor(paths.wav2vec2)
    return loaded


class _Timer:
    def __init__(self, into: dict[str, float], part: str, device: torch.device | None) -> None:
        self.into, self.part, self.device = into, part, device

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        if self.device is not None and self.device.type == "cuda":
            # this thread's stream only: a DiT loading beside (its own stream) is not waited for
            torch.cuda.current_stream(self.device).synchronize()
        self.into[self.part] = time.perf_counter() - self.start
        log.info("loaded %s in %.1f s", self.part, self.into[self.part])


def resolve_preset(root: str | os.PathLike[str], spec: ReleaseSpec | None = None) -> str:
    """`liveavatar-14b` when the release under `root` verifies, else `tiny` (and say why).

    `spec` is what "verifies" means: the published release unless a test says otherwise.
    """
    report = verify(root, spec)
    if report.ok:
        return LIVEAVATAR_PRESET
    log.warning(
        "checkpoints at %s are incomplete, so the %r preset (random weights) is used instead "
        "of %r. %s. Run `longtake checkpoints verify` for the full report, "
        "`longtake checkpoints download` to fetch the weights.",
        report.root,
        FALLBACK_PRESET,
        LIVEAVATAR_PRESET,
        report.headline(),
    )
    return FALLBACK_PRESET
