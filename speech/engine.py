"""The interface every speech engine implements, and what it returns."""

from __future__ import annotations

import io
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np


class SpeechError(Exception):
    """The engine could not synthesise (missing program or voice files, a crash, a timeout).
    Not the caller's fault: the message is for operators."""


@dataclass(frozen=True)
class Voice:
    """A voice an engine offers. `id` is what a job names; `languages` are the languages it
    speaks (empty: every language of its engine)."""

    id: str
    name: str = ""
    gender: str | None = None
    languages: tuple[str, ...] = field(default_factory=tuple)

    def speaks(self, language: str) -> bool:
        return not self.languages or language in self.languages


@dataclass(frozen=True)
class Speech:
    """Mono PCM: `samples` int16 [n] (or float32 in [-1, 1]) at `sample_rate` Hz."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.sample_rate

    def pcm16(self) -> np.ndarray:
        """The samples as int16 [n]."""
        if self.samples.dtype == np.int16:
            return self.samples
        return (np.clip(self.samples.astype(np.float32), -1.0, 1.0) * 32767).astype(np.int16)

    def wav_bytes(self) -> bytes:
        """A 16-bit mono WAV file of the samples."""
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(self.sample_rate)
            w.writeframes(self.pcm16().astype("<i2").tobytes())
        return buffer.getvalue()

    def write_wav(self, path: Path) -> None:
        path.write_bytes(self.wav_bytes())


@runtime_checkable
class SpeechEngine(Protocol):
    """Text to speech. Implementations run locally from files the operator provides: nothing
    is downloaded at run time. `synthesise` is called from worker threads, one call per job,
    possibly several at once."""

    name: str
    """How jobs and settings name the engine (`speech_engine`)."""
    default_voice: str
    """The voice of a script that names none."""

    def languages(self) -> Sequence[str]:
        """The language codes it speaks (e.g. `en-us`)."""
        ...

    def voices(self) -> Sequence[Voice]:
        """The voices it offers."""
        ...

    def synthesise(self, text: str, language: str, voice: str) -> Speech:
        """Speech of `text` in `language` with `voice` (both among those offered: the caller
        checks). Raises SpeechError when the engine fails."""
        ...
