"""Helpers for the media tests: synthetic clips, speech-like WAV files, decoded frames.

Everything runs the real encoder, PyAV and ffmpeg on small frames so the tests stay fast.
"""

from __future__ import annotations

import wave
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from db.segments import Segment
from worker.segments import EncoderSettings, SegmentEncoder

W, H = 96, 64
FPS = 25


def make_clip(
    frames: int, *, start: int = 0, width: int = W, height: int = H, seed: int = 0
) -> np.ndarray:
    """uint8 [frames, height, width, 3]: smooth moving gradients, a different picture per
    frame index (``start`` numbers the first) and per seed."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.int32)
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        i = start + t
        out[t, ..., 0] = (xx * 2 + i * 5 + seed * 40) % 256
        out[t, ..., 1] = (yy * 3 + i * 3 + seed * 70) % 256
        out[t, ..., 2] = 60 + ((xx // 8 + yy // 8 + i) % 2) * 120
    return out


def encode_segment(
    path: Path,
    clip_frames: Sequence[int],
    *,
    seed: int = 0,
    width: int = W,
    height: int = H,
    settings: EncoderSettings | None = None,
) -> Segment:
    """Encode one segment from clips of the given lengths; frame content continues across clips."""
    enc = SegmentEncoder(path, width, height, FPS, settings)
    start = 0
    for n in clip_frames:
        enc.submit(make_clip(n, start=start, width=width, height=height, seed=seed))
        start += n
    return enc.close()


def decoded_planes(path: Path) -> list[np.ndarray]:
    """Every decoded frame of the first video stream as its yuv420p planes (bit-exact)."""
    with av.open(str(path)) as c:
        return [f.to_ndarray() for f in c.decode(c.streams.video[0])]


def decoded_times(path: Path) -> list[Fraction]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [Fraction(f.pts) * s.time_base for f in c.decode(s)]


def write_wav(path: Path, seconds: float, *, rate: int = 16000, tone_hz: float = 220.0) -> Path:
    """A mono 16-bit WAV holding a loud tone for ``seconds``."""
    t = np.arange(round(seconds * rate)) / rate
    samples = (0.5 * np.sin(2 * np.pi * tone_hz * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path
