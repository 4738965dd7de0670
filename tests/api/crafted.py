"""Inputs made byte by byte: files whose headers say one thing and whose data another, the
kind a careless encoder or an attacker produces."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from tests import media


def wav(
    samples: np.ndarray,
    sample_rate: int = 16_000,
    channels: int = 1,
    *,
    float32: bool = False,
    declared_bytes: int | None = None,
) -> bytes:
    """A RIFF WAV of interleaved `samples` ([n] or [n, channels]) with any header values,
    however wrong: `declared_bytes` is what the data chunk claims to hold."""
    data = samples.astype("<f4" if float32 else "<i2").tobytes()
    bits = 32 if float32 else 16
    block = max(channels, 1) * bits // 8
    size = len(data) if declared_bytes is None else declared_bytes
    fmt = struct.pack(
        "<HHIIHH", 3 if float32 else 1, channels, sample_rate, sample_rate * block, block, bits
    )
    riff = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    riff += b"data" + struct.pack("<I", size) + data
    return b"RIFF" + struct.pack("<I", min(len(riff), 0xFFFFFFFF)) + riff


def tone(seconds: float, sample_rate: int = 16_000, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    mono = (np.sin(2 * np.pi * 220 * t) * 8000).astype(np.int16)
    return mono if channels == 1 else np.repeat(mono[:, None], channels, axis=1)


def wav_at_rate(sample_rate: int, seconds: float = 2.0) -> bytes:
    return wav(tone(seconds, sample_rate), sample_rate)


def wav_channels(channels: int, seconds: float = 1.0) -> bytes:
    return wav(tone(seconds, channels=channels), channels=channels)


def wav_zero_channels() -> bytes:
    return wav(tone(1.0), channels=0)


def wav_with_nan() -> bytes:
    samples = np.sin(np.arange(16_000) / 10).astype(np.float32)
    samples[8_000] = np.nan
    return wav(samples, float32=True)


def wav_with_inf() -> bytes:
    samples = np.sin(np.arange(16_000) / 10).astype(np.float32)
    samples[100] = np.inf
    return wav(samples, float32=True)


def wav_truncated(present_samples: int, declared_bytes: int = 10_000_000) -> bytes:
    """A header announcing `declared_bytes` of data, followed by far fewer."""
    return wav(tone(1.0)[:present_samples], declared_bytes=declared_bytes)


def flac_corrupt() -> bytes:
    """A FLAC whose header is intact and whose frames are garbage."""
    data = bytearray(media.encoded_audio("flac", 2.0))
    for i in range(200, len(data), 7):
        data[i] ^= 0x5A
    return bytes(data)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels, with a few bytes of data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def jpeg_rotated(width: int = 384, height: int = 256, orientation: int = 6) -> bytes:
    """A JPEG stored `width` x `height` whose EXIF says to show it turned (6: 90 degrees)."""
    image = Image.new("RGB", (width, height), (120, 90, 60))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def multipart(fields: list[tuple[str, bytes]], files: list[tuple[str, str, bytes]]) -> tuple[
    bytes, dict[str, str]
]:  # fmt: skip
    """A multipart/form-data body with raw field bytes (any encoding, any repeats)."""
    boundary = "longtake-test-boundary"
    parts = []
    for name, value in fields:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value
            + b"\r\n"
        )
    for name, filename, data in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}
