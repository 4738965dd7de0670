"""`make demo`: the embedded default (SQLite, local files, the in-process runner running the
render lifecycle, the tiny model on the CPU) renders the demo video end to end."""

from __future__ import annotations

import json

import pytest

from ops import cli
from tests.worker.lifecycle_helpers import probe

pytestmark = pytest.mark.slow


def test_the_demo_renders_a_video_that_verifies(embedded_env, monkeypatch, capsys):
    monkeypatch.delenv("LONGTAKE_EMBEDDED_HANDLER")  # the default: the render lifecycle
    monkeypatch.setenv("LONGTAKE_TORCH_THREADS", "1")
    assert cli.main(["demo"]) == 0
    err = capsys.readouterr().err
    video = embedded_env / "demo" / "output.mp4"
    manifest = embedded_env / "demo" / "output.manifest.json"
    assert f"the demo video is at {video}" in err and str(manifest) in err

    p = probe(video)
    assert (p.video_streams, p.audio_streams, p.width, p.height) == (1, 1, 128, 128)
    # three clips of 48 frames are rendered; the video ends with the 4 s of speech
    assert p.frames == 4 * 25 and p.audio_s == pytest.approx(p.video_s, abs=0.03)
    assert json.loads(manifest.read_text())["output"]["frames"] == 4 * 25  # what is delivered
    assert cli.main(["verify", str(video), str(manifest)]) == 0
    assert "OK: the file is the rendered output" in capsys.readouterr().out

    tampered = video.with_name("tampered.mp4")
    data = bytearray(video.read_bytes())
    data[-2000:-1000] = bytes(1000)  # damage the last frames' data
    tampered.write_bytes(bytes(data))
    assert cli.main(["verify", str(tampered), str(manifest)]) == 1
