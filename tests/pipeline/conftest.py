"""Fixtures for the pipeline specs: the tiny generator (random weights, CPU) and media."""

from __future__ import annotations

import io
import wave
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import Generator, RenderRequest, Waveform


@pytest.fixture(scope="package", autouse=True)
def one_thread() -> Iterator[None]:
    """The tiny model's ops are too small to gain from threads, and one thread keeps timings
    steady when other processes share the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny() -> Generator:
    return Generator.from_preset("tiny", device="cpu", random_weights=True)


@pytest.fixture(scope="session")
def tiny_fp8_attention() -> Generator:
    """The tiny model at precision fp8-attention (the same random weights as `tiny`)."""
    return Generator.from_preset(
        "tiny", device="cpu", random_weights=True, precision="fp8-attention"
    )


def portrait(width: int = 96, height: int = 80, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    """A deterministic picture with structure (gradients and a disc) in any mode/format."""
    y, x = np.mgrid[0:height, 0:width]
    r = (255 * x / max(width - 1, 1)).astype(np.uint8)
    g = (255 * y / max(height - 1, 1)).astype(np.uint8)
    disc = (x - width / 2) ** 2 + (y - height / 2) ** 2 < (min(width, height) / 3) ** 2
    b = np.where(disc, 220, 40).astype(np.uint8)
    img = Image.fromarray(np.stack([r, g, b], axis=-1), "RGB")
    if mode == "RGBA":
        img.putalpha(Image.fromarray(np.where(disc, 255, 0).astype(np.uint8)))
    elif mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def speech(seconds: float, sample_rate: int = 16_000) -> np.ndarray:
    """A voiced, syllable-modulated tone: enough structure for audio features to vary."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    pitch = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    voiced = np.sin(2 * np.pi * np.cumsum(pitch) / sample_rate)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t)
    return (0.4 * voiced * envelope).astype(np.float32)


def wav_bytes(samples: np.ndarray, sample_rate: int, channels: int = 1) -> bytes:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    if channels > 1:
        pcm = np.repeat(pcm[:, None], channels, axis=1)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def request(seconds: float = 2.0, **kw: object) -> RenderRequest:
    """A small tiny-model request: 64x64 output, clips of 24 frames (2 blocks) by default."""
    fields: dict[str, object] = dict(
        image=portrait(),
        audio=Waveform(speech(seconds)),
        prompt="a person talking",
        size="64*64",
        infer_frames=24,
        seed=7,
    )
    fields.update(kw)
    return RenderRequest(**fields)  # type: ignore[arg-type]
