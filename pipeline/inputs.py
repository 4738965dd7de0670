"""Reading the request's inputs: the reference portrait and the speech track.

Images: any format Pillow reads (EXIF orientation applied, transparency composited on white,
palette and grayscale converted), scaled to cover the output size and center-cropped.
Audio: any format PyAV reads (wav, mp3, m4a, flac, ogg, ...), mixed to mono and resampled to
16 kHz float32, or a `Waveform` already in memory.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline import params

SAMPLE_RATE = 16_000


class InputError(ValueError):
    """The request's image or audio cannot be used (not decodable, empty, not finite)."""


@dataclass(frozen=True, eq=False)
class Waveform:
    """Speech already decoded: mono float32 samples in [-1, 1] at 16 kHz."""

    samples: np.ndarray
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        if self.sample_rate != SAMPLE_RATE:
            raise ValueError(f"a Waveform must be at {SAMPLE_RATE} Hz, got {self.sample_rate} Hz")
        if self.samples.ndim != 1:
            raise ValueError("a Waveform must be mono: a 1-D array of samples")

    def tobytes(self) -> bytes:
        return np.ascontiguousarray(self.samples, dtype=np.float32).tobytes()


def read_bytes(src: Path | str | bytes) -> bytes:
    if isinstance(src, bytes):
        return src
    path = Path(src)
    if not path.is_file():
        raise InputError(f"input file not found: {path}")
    return path.read_bytes()


# ---- image -------------------------------------------------------------------------------


def load_image(data: bytes) -> Image.Image:
    """Decode an image to RGB, upright."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"image is not decodable: {exc}") from None
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    img = img.convert("RGB")
    if img.width < 1 or img.height < 1:
        raise InputError("image has no pixels")
    return img


def fit_image(img: Image.Image, size_key: str) -> np.ndarray:
    """The reference frame at the output size: uint8 [H, W, 3].

    The output size keeps the image's aspect ratio within the key's area (params.fit_size);
    the image is scaled to cover it and center-cropped, which trims at most a sliver.
    """
    width, height = params.fit_size(img.width, img.height, size_key)
    scale = max(width / img.width, height / img.height)
    w, h = max(width, round(img.width * scale)), max(height, round(img.height * scale))
    resized = img.resize((w, h), Image.Resampling.LANCZOS)
    left, top = (w - width) // 2, (h - height) // 2
    return np.asarray(resized.crop((left, top, left + width, top + height)), dtype=np.uint8)


# ---- audio -------------------------------------------------------------------------------


def load_audio(src: Path | str | bytes | Waveform) -> np.ndarray:
    """Speech as mono float32 samples at 16 kHz. Raises ValueError when it cannot be read or
    holds no samples."""
    if isinstance(src, Waveform):
        samples = np.asarray(src.samples, dtype=np.float32)
    else:
        samples = _decode_audio(read_bytes(src))
    if samples.size == 0:
        raise InputError("audio has no samples: provide speech of non-zero length")
    if not np.all(np.isfinite(samples)):
        raise InputError("audio contains non-finite samples")
    return samples


def _decode_audio(data: bytes) -> np.ndarray:
    import av  # only needed here; imported lazily so the model runs where PyAV is absent

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise InputError("the audio file has no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            chunks: list[np.ndarray] = []
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except av.FFmpegError as exc:
        raise InputError(f"audio is not decodable: {exc}") from None
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)
