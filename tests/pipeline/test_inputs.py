"""Inputs of any reasonable shape work; unusable ones fail with a message saying what to fix."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from PIL import Image

from pipeline import RenderRequest, Waveform, params
from pipeline.inputs import fit_image, load_audio, load_image
from tests.pipeline.conftest import portrait, request, speech, wav_bytes

# ---- images ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "fmt", "size"),
    [
        ("RGB", "PNG", (97, 61)),
        ("RGBA", "PNG", (64, 200)),
        ("P", "GIF", (33, 35)),
        ("L", "JPEG", (300, 170)),
        ("RGB", "WEBP", (65, 64)),
    ],
)
def test_images_of_any_mode_and_odd_size_fit_the_size_key(mode, fmt, size):
    img = load_image(portrait(*size, mode=mode, fmt=fmt))
    assert img.mode == "RGB" and img.size == size
    frame = fit_image(img, "128*128")
    h, w, c = frame.shape
    assert c == 3 and frame.dtype == np.uint8
    assert w % 64 == 0 and h % 64 == 0 and w * h <= 128 * 128


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (80, 80), (10, 200, 30, 0))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    frame = fit_image(load_image(buf.getvalue()), "64*64")
    assert frame.min() == 255


def test_exif_orientation_is_applied():
    wide = Image.new("RGB", (120, 60), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated by 90 degrees
    buf = io.BytesIO()
    wide.save(buf, format="JPEG", exif=exif)
    assert load_image(buf.getvalue()).size == (60, 120)


def test_an_image_keeps_its_aspect_ratio_in_the_output(tiny):
    stream = tiny.open(request(seconds=0.5, image=portrait(200, 100), size="128*128"))
    # a 2:1 portrait in a 128*128 area: the nearest aspect in multiples of 64 is 3:1
    assert (stream.width, stream.height) == params.fit_size(200, 100, "128*128") == (192, 64)
    clip = next(stream)
    assert clip.frames.shape[1:] == (stream.height, stream.width, 3)


def test_undecodable_image_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match="image is not decodable"):
        tiny.open(request(image=b"not an image at all"))


# ---- audio -------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8_000, 44_100, 48_000])
@pytest.mark.parametrize("channels", [1, 2])
def test_wav_of_any_rate_and_layout_becomes_16k_mono(rate, channels):
    samples = load_audio(wav_bytes(speech(1.5, rate), rate, channels))
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - 1.5 * 16_000) <= 16_000 * 0.02


@pytest.mark.parametrize(
    ("fmt", "codec", "rate"),
    [
        ("flac", "flac", 44_100),
        ("ogg", "libopus", 48_000),
        ("mp3", "mp3", 44_100),
        ("ipod", "aac", 48_000),
    ],
)
def test_compressed_formats_decode(fmt, codec, rate):
    """flac, ogg (opus), mp3 and m4a (AAC in an MP4 container)."""
    try:
        data = _encode(speech(1.0, rate), rate, fmt, codec)
    except (av.FFmpegError, ValueError) as exc:  # encoder missing from this FFmpeg build
        pytest.skip(f"no {codec} encoder: {exc}")
    samples = load_audio(data)
    assert abs(len(samples) - 16_000) <= 16_000 * 0.1


def test_very_short_audio_renders_one_clip(tiny):
    stream = tiny.open(request(audio=wav_bytes(speech(0.05, 44_100), 44_100)))
    assert stream.num_clips == 1
    clips = list(stream)
    assert len(clips) == 1 and clips[0].frames.shape[0] == 24


def test_clips_cover_the_audio(tiny):
    stream = tiny.open(request(seconds=2.0))  # 50 frames -> 3 clips of 24
    assert stream.num_clips == 3
    clip = next(stream)
    assert (clip.audio_start_s, clip.audio_end_s) == (0.0, 24 / 25)


def test_zero_length_audio_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match="no samples"):
        tiny.open(request(audio=wav_bytes(np.zeros(0, np.float32), 16_000)))
    with pytest.raises(ValueError, match="no samples"):
        tiny.open(request(audio=Waveform(np.zeros(0, np.float32))))


def test_undecodable_audio_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match="audio is not decodable"):
        tiny.open(request(audio=b"\x00\x01garbage" * 100))
    with pytest.raises(ValueError, match="16000 Hz"):
        Waveform(np.zeros(10, np.float32), sample_rate=44_100)


def test_missing_file_is_a_clear_error(tiny, tmp_path):
    with pytest.raises(ValueError, match="not found"):
        tiny.open(request(image=tmp_path / "nope.png"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(size="99*99"), "unknown size key"),
        (dict(infer_frames=50), "infer_frames"),
        (dict(sample_steps=0), "sample_steps"),
        (dict(num_clips=0), "num_clips"),
        (dict(seed=-1), "seed"),
    ],
)
def test_out_of_range_requests_are_refused(tiny, change, message):
    with pytest.raises(ValueError, match=message):
        tiny.open(request(**change))


def test_request_validation_needs_no_model():
    RenderRequest(image=b"", audio=b"", size="720*400").validate()


def _encode(samples: np.ndarray, rate: int, fmt: str, codec: str) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()
