"""What a stream is asked to render, and what it hands back."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import params
from pipeline.inputs import Waveform


@dataclass(frozen=True)
class RenderRequest:
    image: Path | str | bytes
    """The reference portrait: a file path or the file's bytes (any format Pillow reads)."""
    audio: Path | str | bytes | Waveform
    """The speech: a file path or bytes (any format PyAV reads), or decoded samples."""
    prompt: str = ""
    size: str = params.SIZE_DEFAULT
    """An area key of pipeline.params.SIZES; the output keeps the image's aspect ratio."""
    num_clips: int | None = None
    """None renders to the end of the audio (the last clip padded with silence)."""
    infer_frames: int = params.INFER_FRAMES_DEFAULT
    sample_steps: int = params.SAMPLE_STEPS_DEFAULT
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range."""
        params.check_size_key(self.size)
        params.check_infer_frames(self.infer_frames)
        params.check_sample_steps(self.sample_steps)
        if self.num_clips is not None and not 1 <= self.num_clips <= params.NUM_CLIPS_MAX:
            raise ValueError(f"num_clips must be between 1 and {params.NUM_CLIPS_MAX} or None")
        if not 0 <= self.seed <= params.SEED_MAX:
            raise ValueError(f"seed must be between 0 and {params.SEED_MAX}")
        if len(self.prompt) > params.PROMPT_MAX_CHARS:
            raise ValueError(f"prompt is longer than {params.PROMPT_MAX_CHARS} characters")


@dataclass(frozen=True, eq=False)
class Clip:
    index: int
    frames: np.ndarray
    """uint8 [T, H, W, 3], RGB."""
    audio_start_s: float
    audio_end_s: float
    """The span of the speech these frames show (the last clip may run past its end)."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
