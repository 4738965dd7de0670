"""Checks of the uploaded media: a decodable image and a decodable, non-empty audio track.

Both run on a local file before anything is stored. Every failure is an ApiError whose message
says what was wrong with the file and what the server accepts.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from PIL import Image, UnidentifiedImageError

from api.config import InputLimits
from api.errors import ApiError

IMAGE_FORMATS = {
    "PNG": ("png", "image/png"),
    "JPEG": ("jpg", "image/jpeg"),
    "WEBP": ("webp", "image/webp"),
}
# PyAV container names -> (extension, content type)
AUDIO_FORMATS = {
    "wav": ("wav", "audio/wav"),
    "mp3": ("mp3", "audio/mpeg"),
    "flac": ("flac", "audio/flac"),
    "mov,mp4,m4a,3gp,3g2,mj2": ("m4a", "audio/mp4"),
}
_AUDIO_ACCEPTED = "WAV, MP3, M4A (AAC) or FLAC"
_DECODE_CHECK_PACKETS = 8


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str
    ext: str
    content_type: str


@dataclass(frozen=True)
class AudioInfo:
    duration_s: float
    sample_rate: int
    channels: int
    codec: str
    ext: str
    content_type: str


def _image_error(message: str, code: str = "invalid_image", status: int = 422) -> ApiError:
    return ApiError(status, code, message, field="image")


def inspect_image(path: Path, limits: InputLimits) -> ImageInfo:
    size = path.stat().st_size
    if size == 0:
        raise _image_error("the image file is empty")
    if size > limits.max_image_bytes:
        raise _image_error(
            f"the image is {size} bytes; the limit is {limits.max_image_bytes} bytes",
            "image_too_large",
            413,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                fmt, (width, height) = image.format or "", image.size
                if fmt not in IMAGE_FORMATS:
                    raise _image_error(
                        f"the image is {fmt or 'an unknown format'}; send a PNG, JPEG or WebP",
                        "unsupported_image_format",
                    )
                if width * height > limits.max_image_pixels:
                    raise _image_error(
                        f"the image is {width}x{height} pixels; at most "
                        f"{limits.max_image_pixels} pixels are accepted, resize it first",
                        "image_too_large",
                        413,
                    )
                if min(width, height) < limits.min_image_side:
                    raise _image_error(
                        f"the image is {width}x{height}; each side must be at least "
                        f"{limits.min_image_side} pixels"
                    )
                image.verify()  # structure and checksums; the object is unusable afterwards
            with Image.open(path) as image:
                image.load()  # decode every pixel: catches truncated data that verify misses
    except ApiError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _image_error(
            "the image file could not be read as an image; send a PNG, JPEG or WebP"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise _image_error(f"the image data is truncated or corrupt ({e})") from None
    ext, content_type = IMAGE_FORMATS[fmt]
    return ImageInfo(width, height, fmt, ext, content_type)


def _audio_error(message: str, code: str = "invalid_audio", status: int = 422) -> ApiError:
    return ApiError(status, code, message, field="audio")


def inspect_audio(path: Path, limits: InputLimits) -> AudioInfo:
    size = path.stat().st_size
    if size == 0:
        raise _audio_error("the audio file is empty")
    if size > limits.max_audio_bytes:
        raise _audio_error(
            f"the audio is {size} bytes; the limit is {limits.max_audio_bytes} bytes",
            "audio_too_large",
            413,
        )
    try:
        container = av.open(str(path), mode="r")
    except av.FFmpegError:
        raise _audio_error(
            f"the audio file could not be read; send {_AUDIO_ACCEPTED}", "unsupported_audio_format"
        ) from None
    with container:
        fmt = container.format.name
        if fmt not in AUDIO_FORMATS:
            raise _audio_error(
                f"the audio container is {fmt}; send {_AUDIO_ACCEPTED}", "unsupported_audio_format"
            )
        if not container.streams.audio:
            raise _audio_error("the file has no audio track")
        stream = container.streams.audio[0]
        codec = stream.codec_context.name
        sample_rate = stream.codec_context.sample_rate or 0
        channels = stream.codec_context.channels or 0
        try:
            duration_s = _measure_and_decode(container, stream)
        except av.FFmpegError as e:
            raise _audio_error(f"the audio could not be decoded ({codec}): {e}") from None
    if duration_s <= 0:
        raise _audio_error("the audio contains no samples (zero duration)")
    if duration_s > limits.max_audio_seconds:
        raise _audio_error(
            f"the audio lasts {duration_s:.1f} s; at most {limits.max_audio_seconds:.0f} s "
            "are accepted per job, split it into several jobs",
            "audio_too_long",
        )
    ext, content_type = AUDIO_FORMATS[fmt]
    return AudioInfo(duration_s, sample_rate, channels, codec, ext, content_type)


def _measure_and_decode(container: av.container.InputContainer, stream: av.AudioStream) -> float:
    """Duration from the packets actually present (a truncated file's header overstates it),
    decoding the first few packets to prove the codec works."""
    time_base = stream.time_base or Fraction(1, stream.codec_context.sample_rate or 1)
    start: int | None = None
    end = 0
    decoded_samples = 0
    for n, packet in enumerate(container.demux(stream)):
        if packet.pts is None or packet.size == 0:
            continue
        start = packet.pts if start is None else min(start, packet.pts)
        end = max(end, packet.pts + (packet.duration or 0))
        if n < _DECODE_CHECK_PACKETS:
            decoded_samples += sum(frame.samples for frame in packet.decode())
    if start is None:
        return 0.0
    if decoded_samples == 0:
        raise av.InvalidDataError(0, "no samples decoded from the first packets")
    return float((end - start) * time_base)
