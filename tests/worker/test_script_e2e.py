"""A job with a script instead of audio renders end to end on the embedded default (SQLite,
local files, the in-process runner, the tiny model on the CPU), submitted with the CLI: the
speech espeak-ng makes of the script is the job's audio input and the output's audio track,
and the video ends with it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import av
import numpy as np
import pytest

from ops import cli
from pipeline.params import frames_for_duration
from speech import EspeakEngine
from tests import media
from tests.conftest import free_port
from tests.worker.lifecycle_helpers import probe

pytestmark = pytest.mark.slow

SCRIPT = "Hello, and welcome to lesson one."


@pytest.fixture
def rendering_service(embedded_env, monkeypatch) -> Iterator:
    """The embedded service with its default job handler: the render lifecycle."""
    from ops.server import BackgroundServer, build
    from ops.settings import Settings

    monkeypatch.delenv("LONGTAKE_EMBEDDED_HANDLER")
    monkeypatch.setenv("LONGTAKE_TORCH_THREADS", "1")
    port = free_port()
    settings = Settings(api_url=f"http://127.0.0.1:{port}")
    server = BackgroundServer(build(settings, embedded=True), "127.0.0.1", port)
    server.start()
    server.url = settings.api_url
    yield server
    server.stop()


def decoded_audio(path, rate: int) -> np.ndarray:
    """The file's first audio track, mixed to mono float32 at `rate`."""
    out = []
    with av.open(str(path)) as c:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        for frame in c.decode(c.streams.audio[0]):
            out += [f.to_ndarray()[0] for f in resampler.resample(frame)]
        out += [f.to_ndarray()[0] for f in resampler.resample(None)]
    return np.concatenate(out)


def best_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 2048) -> float:
    """The largest normalised correlation of `a` and `b` over shifts of up to `max_lag`
    samples (an encoder's delay), over their common length."""
    best = -1.0
    for lag in range(-max_lag, max_lag + 1, 4):
        x = a[max(lag, 0) :]
        y = b[max(-lag, 0) :]
        n = min(x.size, y.size)
        x, y = x[:n] - x[:n].mean(), y[:n] - y[:n].mean()
        best = max(best, float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-12)))
    return best


def test_a_script_job_renders_with_the_spoken_script_as_its_audio_track(
    rendering_service, tmp_path, capsys
):
    portrait, script = tmp_path / "portrait.png", tmp_path / "lesson.txt"
    portrait.write_bytes(media.png(512, 512))
    script.write_text(SCRIPT + "\n")
    code = cli.main(["submit", str(portrait), "--script", str(script), "--language", "en-us",
                     "--voice", "f3", "--prompt", "A teacher speaks to the camera",
                     "--size", "128*128", "--infer-frames", "12", "--seed", "3",
                     "--checkpoint-every", "2", "--watch", "--interval", "0.2",
                     "--api-url", rendering_service.url])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    job_id = out.splitlines()[0]
    services = rendering_service.process.app.state.services
    job = json.loads(_status_json(job_id, rendering_service.url, capsys))
    assert job["status"] == "succeeded"
    assert job["params"]["script"] == {"text": SCRIPT, "language": "en-us", "voice": "f3",
                                       "engine": "espeak-ng"}  # fmt: skip

    # the job's audio input is what espeak-ng speaks for the script (it is deterministic)
    spoken = EspeakEngine().synthesise(SCRIPT, "en-us", "f3")
    stored = tmp_path / "input.wav"
    services.storage.get_file(job["inputs"]["audio"], stored)
    assert np.array_equal(decoded_audio(stored, spoken.sample_rate) * 32768, spoken.samples)

    manifest = json.loads(services.storage.get_bytes(f"jobs/{job_id}/output.manifest.json"))
    assert (
        manifest["metadata"]["speech"] == "synthesised from a script by espeak-ng (en-us, voice f3)"
    )

    video = tmp_path / "out.mp4"
    assert cli.main(["fetch", job_id, "-o", str(video), "--api-url", rendering_service.url]) == 0
    capsys.readouterr()
    p = probe(video)
    # the video ends with the speech, frame-accurate, and carries it as its only audio track
    assert (p.width, p.height, p.audio_streams) == (128, 128, 1)
    assert p.frames == frames_for_duration(spoken.duration_s) == job["progress"]["frames_total"]
    assert p.audio_s == pytest.approx(spoken.duration_s, abs=0.05)
    speech = spoken.samples.astype(np.float32) / 32768
    track = decoded_audio(video, spoken.sample_rate)
    assert best_correlation(track, speech) > 0.99  # the same waveform, through AAC
    # (and not merely any speech: another voice saying the same words does not match)
    other = EspeakEngine().synthesise(SCRIPT, "en-us", "m3").samples.astype(np.float32) / 32768
    assert best_correlation(track, other) < 0.5


def _status_json(job_id: str, url: str, capsys) -> str:
    assert cli.main(["status", job_id, "--json", "--api-url", url]) == 0
    return capsys.readouterr().out
