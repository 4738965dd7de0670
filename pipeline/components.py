"""Building the models of a preset: on the meta device, then materialised on the target device.

Nothing is ever built full-size in float32 on the host: modules are created on the meta device
(no memory), then given storage directly on the target device in the target dtype, and filled
either with random values (`random_init`) or by a checkpoint loader.

A `Placement` (pipeline.weights) says which parts a process builds and where: a single device
builds everything; a rank of the TPP engine builds only what it runs (the DiT on every DiT
rank, the VAE where it decodes, the text and audio encoders once). Parts left out are None.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from diffusers import AutoencoderKLWan
from transformers import UMT5Config, UMT5EncoderModel, Wav2Vec2Config, Wav2Vec2Model

from pipeline.dit_loading import (
    PART_ORDER,
    DeferredDit,
    DitInfo,
    on_meta,
    random_init,
    start_dit_load,
)
from pipeline.model import WanS2VTransformer
from pipeline.params import Precision
from pipeline.presets import Preset
from pipeline.text import Tokenizer, byte_tokenizer, hf_tokenizer

if TYPE_CHECKING:
    from pipeline.weights import Placement

log = logging.getLogger(__name__)


@dataclass
class Components:
    dit: WanS2VTransformer | None
    text_encoder: UMT5EncoderModel | None
    tokenizer: Tokenizer | None
    audio_encoder: Wav2Vec2Model | None
    vae: AutoencoderKLWan | None
    text_device: torch.device | None = None
    """Where the text encoder runs; it may live in host memory and visit this device."""
    dit_loading: DeferredDit | None = None
    """The DiT while it loads (`dit` is None until `wait_dit` returns it)."""
    build_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds each part built here took (random weights drawn, or loaded from a release)."""

    @property
    def dit_info(self) -> DitInfo:
        """The DiT's device, dtype and precision, known before it has loaded."""
        if self.dit is not None:
            return DitInfo(self.dit.device, self.dit.dtype, self.dit.precision)
        if self.dit_loading is not None:
            return self.dit_loading.info
        raise RuntimeError("this process has no dit (not in its placement)")

    def wait_dit(self) -> WanS2VTransformer:
        """The DiT, once loaded (at once when it is)."""
        if self.dit is None:
            if self.dit_loading is None:
                raise RuntimeError("this process has no dit (not in its placement)")
            self.dit = self.dit_loading.result()
            self.dit_loading = None
        return self.dit

    def require(self, *parts: str) -> None:
        """Raise a clear error if a part this process must run was not built here (a DiT
        still loading counts as built)."""
        attrs = {"dit": "dit", "text": "text_encoder", "audio": "audio_encoder", "vae": "vae"}
        missing = [
            p
            for p in parts
            if getattr(self, attrs[p]) is None and not (p == "dit" and self.dit_loading)
        ]
        if missing:
            raise RuntimeError(f"this process has no {', '.join(missing)} (not in its placement)")


def _single(device: torch.device | str) -> Placement:
    from pipeline.weights import Placement

    return Placement.single(device)


def build_empty(
    preset: Preset,
    device: torch.device | str,
    dtype: torch.dtype,
    placement: Placement | None = None,
) -> Components:
    """The preset's models with uninitialised storage in `dtype`: every part on `device`, or
    the parts `placement` names on their devices (offloaded text encoder: in host memory)."""
    placement = placement or _single(device)
    parts = placement.parts
    with on_meta(dtype):
        dit = WanS2VTransformer(preset.dit) if "dit" in parts else None
        text = UMT5EncoderModel(UMT5Config(**preset.text_encoder)) if "text" in parts else None
        audio = Wav2Vec2Model(Wav2Vec2Config(**preset.audio_encoder)) if "audio" in parts else None
        vae = AutoencoderKLWan(**preset.vae) if "vae" in parts else None
    for part, m in zip(PART_ORDER, (dit, text, audio, vae), strict=True):
        if m is not None:
            m.to_empty(device=placement.devices[part])
            m.eval().requires_grad_(False)
    return Components(
        dit,
        text,
        byte_tokenizer if text is not None else None,
        audio,
        vae,
        text_device=placement.devices.get("text"),
    )


def build_random(
    preset: Preset,
    device: torch.device | str,
    dtype: torch.dtype,
    seed: int = 0,
    placement: Placement | None = None,
) -> Components:
    """The preset's models with seeded random weights (speed does not depend on weight values).

    With a placement, only its parts are built, each with the weights a single device draws
    for it. An offloaded text encoder is drawn on its device, then moved to host memory.
    """
    placement = placement or _single(device)
    started = time.perf_counter()
    comps = build_empty(preset, device, dtype, placement)
    comps.build_seconds["empty"] = time.perf_counter() - started
    for i, (part, m) in enumerate(
        zip(
            PART_ORDER,
            (comps.dit, comps.text_encoder, comps.audio_encoder, comps.vae),
            strict=True,
        )
    ):
        if m is None:
            continue
        started = time.perf_counter()
        where = torch.device(placement.devices[part])
        generator = torch.Generator(device=where).manual_seed(seed * 1000 + i)
        random_init(m, generator)
        if placement.load_device(part) != placement.devices[part]:
            m.to(placement.load_device(part))
        if where.type == "cuda":  # this thread's queue only (a DiT may load beside)
            torch.cuda.current_stream(where).synchronize()
        comps.build_seconds[part] = time.perf_counter() - started
    return comps


def load_released(
    preset: Preset,
    checkpoint_dir: str | os.PathLike[str],
    device: torch.device | str,
    dtype: torch.dtype,
    placement: Placement | None = None,
) -> Components:
    """The preset's models filled from the released checkpoint files (pipeline.weights): every
    part on `device`, or only the parts `placement` names, each on its device."""
    from pipeline.weights import load_weights

    placement = placement or _single(device)
    dit = None
    if "dit" in placement.parts:
        with on_meta(dtype):
            dit = WanS2VTransformer(preset.dit)
    loaded = load_weights(
        checkpoint_dir,
        placement,
        dit=dit,
        text_config=UMT5Config(**preset.text_encoder),
        vae_config=dict(preset.vae),
        text_dtype=dtype,
        vae_dtype=dtype,
        audio_dtype=dtype,
    )
    for m in (dit, loaded.text_encoder, loaded.audio_encoder, loaded.vae):
        if m is not None:
            m.eval().requires_grad_(False)
    return Components(
        dit,
        loaded.text_encoder,
        hf_tokenizer(loaded.tokenizer) if loaded.tokenizer is not None else None,
        loaded.audio_encoder,
        loaded.vae,
        text_device=placement.devices.get("text"),
        build_seconds=dict(loaded.seconds),
    )


def build_deferred(
    preset: Preset,
    device: torch.device,
    dtype: torch.dtype,
    precision: Precision,
    *,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    dit_dir: str | os.PathLike[str] | None = None,
    prepare: Callable[[WanS2VTransformer], None] | None = None,
    loading: DeferredDit | None = None,
) -> Components:
    """Every part on `device`, the DiT still loading (`Components.dit_loading`) when this
    returns: the encoders and the VAE are built here, from the release in `checkpoint_dir`
    (None: seeded random weights, the very ones `build_random` draws); the DiT is the load
    started by `pipeline.dit_loading.start_dit_load` (`loading`, started earlier, or started
    here from `dit_dir` with `prepare`). Benchmarks load a 14B DiT from disk with random
    encoders."""
    from pipeline.weights import Placement

    if loading is None:  # the DiT first: its read overlaps the encoders' build
        loading = start_dit_load(
            preset, device, dtype, precision, seed=seed, dit_dir=dit_dir, prepare=prepare
        )
    elif loading.info != DitInfo(device, dtype, precision):
        raise ValueError(
            f"the DiT loading ({loading.info}) is not the one asked for "
            f"({DitInfo(device, dtype, precision)})"
        )
    rest = Placement({part: device for part in PART_ORDER if part != "dit"})
    if checkpoint_dir is None:
        comps = build_random(preset, device, dtype, seed, placement=rest)
    else:
        comps = load_released(preset, checkpoint_dir, device, dtype, placement=rest)
    comps.dit_loading = loading
    return comps
