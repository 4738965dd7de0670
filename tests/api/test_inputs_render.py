"""A job that is accepted renders: what the API checks of an input at submit is what the
worker will need of it. The same files go through the API's inspection and through the
worker's own decoding (pipeline.inputs, the AAC track of worker.stitch); every file the API
accepts decodes there, with the duration the API recorded, and the refusals are the files
the worker could not use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from api.config import InputLimits
from api.errors import ApiError
from api.inputs import inspect_audio, inspect_image
from db.params import WatermarkSpec
from pipeline import inputs as pipeline_inputs
from pipeline import params as P
from tests import media
from tests.api import crafted

LIMITS = InputLimits()

AUDIO = {
    "wav": media.wav(2.0),
    "wav-8-khz": crafted.wav_at_rate(8_000),
    "wav-192-khz": crafted.wav_at_rate(192_000, seconds=0.5),
    "wav-stereo": crafted.wav_channels(2),
    "wav-8-channels": crafted.wav_channels(8),
    "wav-float": crafted.wav(np.sin(np.arange(16_000) / 10).astype(np.float32), float32=True),
    "wav-header-claims-more-than-present": crafted.wav_truncated(16_000),
    "wav-one-frame": crafted.wav(crafted.tone(1.0)[:640]),
    "mp3": media.encoded_audio("mp3", 2.0),
    "m4a": media.encoded_audio("m4a", 2.0),
    "flac": media.encoded_audio("flac", 2.0),
    # refused
    "wav-1-hz": crafted.wav_at_rate(1, seconds=8),
    "wav-7999-hz": crafted.wav_at_rate(7_999),
    "wav-9-channels": crafted.wav_channels(9),
    "wav-32-channels": crafted.wav_channels(32),
    "wav-0-channels": crafted.wav_zero_channels(),
    "wav-nan": crafted.wav_with_nan(),
    "wav-inf": crafted.wav_with_inf(),
    "wav-shorter-than-a-frame": crafted.wav(crafted.tone(1.0)[:639]),
    "wav-truncated-to-nothing": crafted.wav_truncated(50),
    "flac-corrupt": crafted.flac_corrupt(),
}
REFUSED = {name for name in AUDIO if name.startswith(("wav-1-", "wav-7999", "wav-9-", "wav-32-",
           "wav-0-", "wav-nan", "wav-inf", "wav-shorter", "wav-truncated", "flac-corrupt"))}  # fmt: skip


def worker_reads(path: Path, duration_s: float, tmp_path: Path) -> np.ndarray:
    """What a worker does with the audio: the model's 16 kHz mono samples, and the output's
    AAC track of the video's length."""
    from worker.stitch import prepare_audio

    samples = pipeline_inputs.load_audio(path)
    frames = P.clips_for_duration(duration_s, 12) * 12
    prepare_audio(path, tmp_path / "track.m4a", frames / P.FPS)
    return samples


def model_gets_a_frame(path: Path) -> bool:
    """Whether the model's audio reader gets at least one video frame's samples."""
    try:
        samples = pipeline_inputs.load_audio(path)
    except ValueError:
        return False
    return samples.size >= pipeline_inputs.SAMPLE_RATE // P.FPS


@pytest.mark.parametrize("name", sorted(AUDIO))
def test_the_api_accepts_exactly_the_audio_a_worker_can_render(name, tmp_path):
    path = tmp_path / f"{name}.audio"
    path.write_bytes(AUDIO[name])
    try:
        info = inspect_audio(path, LIMITS)
    except ApiError as e:
        assert name in REFUSED, f"{name} refused: {e.message}"
        assert e.status == 422 and e.code == "invalid_audio"
        if name != "wav-7999-hz":  # refused by rule (8 kHz at least), readable anyway
            assert not model_gets_a_frame(path), name
        return
    assert name not in REFUSED, f"{name} accepted: {info}"
    samples = worker_reads(path, info.duration_s, tmp_path)
    # the duration the job is planned with is the speech the model gets, to a sample
    assert info.duration_s == pytest.approx(samples.size / pipeline_inputs.SAMPLE_RATE, abs=1e-3)
    assert info.duration_s >= 1 / P.FPS
    assert np.all(np.isfinite(samples))


def test_a_header_that_overstates_the_data_gets_the_real_duration(tmp_path):
    path = tmp_path / "a.wav"
    path.write_bytes(crafted.wav_truncated(16_000, declared_bytes=10_000_000))  # 1 s of 312 s
    assert inspect_audio(path, LIMITS).duration_s == pytest.approx(1.0)


def test_the_output_size_is_that_of_the_upright_portrait(api_client, tmp_path):
    """A phone photo stored sideways with an EXIF turn renders upright; the job's recorded
    size (and the watermark checked at it) is the one the worker renders at."""
    data = crafted.jpeg_rotated(384, 256, orientation=6)  # stored landscape, shown portrait
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    info = inspect_image(path, LIMITS)
    upright = pipeline_inputs.load_image(data)
    assert (info.width, info.height) == upright.size == (256, 384)
    files = {"image": ("a.jpg", data), "audio": ("a.wav", media.wav(1.0))}
    body = api_client.post("/v1/jobs", files=files, data={"prompt": "p", "size": "384*256"}).json()
    frame = pipeline_inputs.fit_image(upright, "384*256")
    assert (body["params"]["width"], body["params"]["height"]) == (frame.shape[1], frame.shape[0])


MARKS = [
    WatermarkSpec(text=text, scale=scale, margin=margin)
    for text in ("AI-generated", "W" * 16, "W" * 64)
    for scale in (0.01, 0.05, 0.2, 0.5)
    for margin in (0.0, 0.025, 0.25)
]


@pytest.mark.parametrize("size", [(64, 64), (128, 64), (384, 576), (720, 400)])
def test_the_watermark_check_agrees_with_the_worker(size):
    from worker.watermark import Watermark

    width, height = size
    for spec in MARKS:
        try:
            Watermark(spec, width, height)
            renders = True
        except ValueError:
            renders = False
        assert (spec.misfit(width, height) is None) == renders, (spec, size)


def test_a_watermark_that_fits_is_accepted_and_one_that_does_not_is_refused(api_client):
    files = {"image": ("a.png", media.png(256, 256)), "audio": ("a.wav", media.wav(1.0))}
    fits = '{"text": "Studio 7", "scale": 0.1}'
    r = api_client.post("/v1/jobs", files=files, data={"prompt": "p", "size": "128*128",
                                                         "watermark": fits})  # fmt: skip
    assert r.status_code == 201, r.text
    wide = '{"text": "Studio 7 - lecture recordings", "scale": 0.2}'
    r = api_client.post("/v1/jobs", files=files, data={"prompt": "p", "size": "128*128",
                                                         "watermark": wide})  # fmt: skip
    assert r.status_code == 422
    error = r.json()["error"]
    assert (error["code"], error["field"]) == ("watermark_does_not_fit", "watermark")
    assert "128x128" in error["message"] and "shorter text or a smaller scale" in error["message"]
