"""An engine of the operator's own, as docs/speech.md describes one: a factory given the
voice directory, whose voices are the files found there. Each voice file (`<id>.json`) holds a
pitch; the engine "speaks" a tone per word at that pitch. It stands for a neural engine
whose model files the operator provides."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from speech import Speech, SpeechError, Voice

RATE = 16_000
WORD_S = 0.25


class ToneEngine:
    name = "tones"

    def __init__(self, voice_dir: Path):
        self.pitches = {
            p.stem: json.loads(p.read_text())["pitch_hz"] for p in voice_dir.glob("*.json")
        }
        if not self.pitches:
            raise SpeechError(f"no voice files in {voice_dir}")
        self.default_voice = sorted(self.pitches)[0]

    def languages(self) -> list[str]:
        return ["xx-tone"]

    def voices(self) -> list[Voice]:
        return [
            Voice(id, f"{hz} Hz", None, ("xx-tone",)) for id, hz in sorted(self.pitches.items())
        ]

    def synthesise(self, text: str, language: str, voice: str) -> Speech:
        words = max(1, len(text.split()))
        t = np.arange(int(words * WORD_S * RATE)) / RATE
        return Speech((0.5 * np.sin(2 * np.pi * self.pitches[voice] * t)).astype(np.float32), RATE)


def make(voice_dir: Path | None) -> ToneEngine:
    if voice_dir is None:
        raise SpeechError("the tone engine needs LONGTAKE_SPEECH_VOICE_DIR")
    return ToneEngine(voice_dir)


def write_voices(directory: Path, **pitches: float) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, hz in pitches.items():
        (directory / f"{name}.json").write_text(json.dumps({"pitch_hz": hz}))
    return directory


def not_an_engine(voice_dir: Path | None) -> object:
    """A factory that returns something else (settings refuse it)."""
    return object()
