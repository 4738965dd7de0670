"""Checks of the uploaded media: what the worker will need of them, checked at submit.

The image is decoded as pipeline.inputs decodes it (by calling it); the audio is decoded to
its end and mixed to 16 kHz mono frame by frame, as pipeline.inputs does it (the same PyAV
calls, without holding the whole track in memory; tests/api/test_inputs_render.py checks
that both agree on the same files). Both run on a local file before anything is stored.
Every failure is an ApiError whose message says what was wrong with the file and what the
server accepts.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image, JpegImagePlugin, PngImagePlugin, UnidentifiedImageError, WebPImagePlugin

from api.config import InputLimits
from api.errors import ApiError
from pipeline import inputs as pipeline_inputs
from pipeline import params as P

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
AUDIO_MIN_RATE = 8_000
AUDIO_MAX_RATE = 192_000
AUDIO_MAX_CHANNELS = 8
"""Beyond 8 channels FFmpeg has no standard layout for every count (9 cannot be mixed down),
and speech never needs them."""


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


def _too_many_pixels(width: int, height: int, limits: InputLimits) -> ApiError:
    return _image_error(
        f"the image is {width}x{height} pixels; at most {limits.max_image_pixels} pixels are "
        "accepted, resize it first",
        "image_too_large",
        413,
    )


def _declared_size(path: Path) -> tuple[int, int] | None:
    """The size an image's header claims, read without Pillow's decompression-bomb guard
    (which refuses to open it at all): only the header is read."""
    for plugin in (PngImagePlugin.PngImageFile, JpegImagePlugin.JpegImageFile,
                   WebPImagePlugin.WebPImageFile):  # fmt: skip
        try:
            with plugin(str(path)) as image:
                return image.size
        except (SyntaxError, OSError, ValueError):
            continue
    return None


def inspect_image(path: Path, limits: InputLimits) -> ImageInfo:
    """The image as the worker will see it: decoded the way pipeline.inputs decodes it, its
    size that of the upright picture (after its EXIF orientation)."""
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
                    raise _too_many_pixels(width, height, limits)
                if min(width, height) < limits.min_image_side:
                    raise _image_error(
                        f"the image is {width}x{height}; each side must be at least "
                        f"{limits.min_image_side} pixels"
                    )
                image.verify()  # structure and checksums; the object is unusable afterwards
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        declared = _declared_size(path)
        if declared is not None:
            raise _too_many_pixels(*declared, limits) from None
        raise _image_error(
            f"the image has more than {limits.max_image_pixels} pixels; resize it first",
            "image_too_large",
            413,
        ) from None
    except UnidentifiedImageError:
        raise _image_error(
            "the image file could not be read as an image; send a PNG, JPEG or WebP"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise _image_error(f"the image data is truncated or corrupt ({e})") from None
    try:  # every pixel, as the worker will decode them: catches what verify misses
        upright = pipeline_inputs.load_image(path.read_bytes())
    except (ValueError, Image.DecompressionBombError) as e:
        raise _image_error(f"the image data is truncated or corrupt ({e})") from None
    ext, content_type = IMAGE_FORMATS[fmt]
    return ImageInfo(upright.width, upright.height, fmt, ext, content_type)


def _audio_error(message: str, code: str = "invalid_audio", status: int = 422) -> ApiError:
    return ApiError(status, code, message, field="audio")


def inspect_audio(path: Path, limits: InputLimits) -> AudioInfo:
    """The speech as the worker will read it: decoded to the end and mixed to 16 kHz mono the
    way pipeline.inputs does, every sample finite, at least one video frame long. Its
    duration is that of the samples decoded, not what the header claims."""
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
        if channels < 1:
            raise _audio_error("the audio track has no channels; export it again as mono or stereo")
        if channels > AUDIO_MAX_CHANNELS:
            raise _audio_error(
                f"the audio has {channels} channels; at most {AUDIO_MAX_CHANNELS} are accepted, "
                "mix it down to mono or stereo"
            )
        if not AUDIO_MIN_RATE <= sample_rate <= AUDIO_MAX_RATE:
            raise _audio_error(
                f"the audio is sampled at {sample_rate} Hz; send audio sampled at "
                f"{AUDIO_MIN_RATE} to {AUDIO_MAX_RATE} Hz"
            )
        declared_s = float(container.duration or 0) / av.time_base
        try:
            samples, finite = _decode(container, stream, limits)
        except av.FFmpegError as e:
            raise _audio_error(f"the audio could not be decoded ({codec}): {e}") from None
    if samples == 0:
        raise _audio_error("the audio contains no samples (zero duration)")
    if not finite:
        raise _audio_error(
            "the audio holds samples that are not numbers (NaN or infinite values); export it again"
        )
    duration_s = samples / pipeline_inputs.SAMPLE_RATE
    frame_s = 1 / P.FPS
    if samples < pipeline_inputs.SAMPLE_RATE // P.FPS:
        truncated = (
            f"; its header announces {declared_s:.2f} s, so the file is truncated"
            if declared_s > duration_s + frame_s
            else ""
        )
        raise _audio_error(
            f"the audio holds {duration_s:.3f} s of sound, less than one video frame "
            f"({frame_s:.2f} s){truncated}"
        )
    if duration_s > limits.max_audio_seconds:
        raise _too_long(f"{duration_s:.1f} s", limits)
    ext, content_type = AUDIO_FORMATS[fmt]
    return AudioInfo(duration_s, sample_rate, channels, codec, ext, content_type)


def _too_long(lasts: str, limits: InputLimits) -> ApiError:
    return _audio_error(
        f"the audio lasts {lasts}; at most {limits.max_audio_seconds:.0f} s are accepted per "
        "job, split it into several jobs",
        "audio_too_long",
    )


def _decode(
    container: av.container.InputContainer, stream: av.AudioStream, limits: InputLimits
) -> tuple[int, bool]:
    """(samples, all finite) of the track mixed to mono at the model's rate, as the worker
    gets it (pipeline.inputs.load_audio), decoded frame by frame without keeping any."""
    rate = pipeline_inputs.SAMPLE_RATE
    most = int(limits.max_audio_seconds * rate)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    samples, finite = 0, True

    def take(frames: list[av.AudioFrame]) -> None:
        nonlocal samples, finite
        for out in frames:
            chunk = out.to_ndarray()  # float32 [1, n]
            samples += chunk.size
            finite = finite and bool(np.isfinite(chunk).all())

    for frame in container.decode(stream):
        take(resampler.resample(frame))
        if samples > most:  # enough to refuse it: decode no further
            raise _too_long(f"more than {limits.max_audio_seconds:.0f} s", limits)
    take(resampler.resample(None))
    return samples, finite
