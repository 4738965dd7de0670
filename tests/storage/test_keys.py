"""Key layout and key validation."""

from __future__ import annotations

import uuid

import pytest

from storage import keys

JOB = uuid.UUID("12345678-1234-5678-1234-567812345678")


def test_layout():
    assert keys.input_key(JOB, "image", "png") == f"jobs/{JOB}/inputs/image.png"
    assert keys.input_key(JOB, "audio", "wav") == f"jobs/{JOB}/inputs/audio.wav"
    assert keys.segment_key(JOB, 7) == f"jobs/{JOB}/segments/00007.mp4"
    assert keys.checkpoint_prefix(JOB, 120) == f"jobs/{JOB}/checkpoints/000120/"
    assert keys.checkpoint_manifest_key(JOB, 120) == f"jobs/{JOB}/checkpoints/000120/manifest.json"
    assert (
        keys.checkpoint_key(JOB, 3, "rank0/kv.pt") == f"jobs/{JOB}/checkpoints/000003/rank0/kv.pt"
    )
    assert keys.output_key(JOB) == f"jobs/{JOB}/output.mp4"
    for key in (keys.segment_key(JOB, 0), keys.output_key(JOB)):
        assert keys.validate_key(key) == key


@pytest.mark.parametrize(
    "bad",
    ["", "/etc/passwd", "C:/x", "a/../b", "../a", "a/./b", "a//b", "a\\b", "a/b\x00", "a/.hidden"],
)
def test_invalid_keys_are_rejected(bad):
    with pytest.raises(keys.InvalidKey):
        keys.validate_key(bad)


def test_key_length_is_bounded():
    with pytest.raises(keys.InvalidKey, match="longer than"):
        keys.validate_key("a" * 1000)


@pytest.mark.parametrize("bad", ["", "..", "../x.png", "a/b.png", "a\\b.png", "x..png", "a\nb"])
def test_file_names_must_be_plain(bad):
    with pytest.raises(keys.InvalidKey):
        keys.check_filename(bad)
    assert keys.check_filename("portrait 01.png") == "portrait 01.png"


def test_bad_layout_arguments():
    with pytest.raises(ValueError):
        keys.segment_key(JOB, -1)
    with pytest.raises(ValueError):
        keys.input_key(JOB, "image", "../png")
    with pytest.raises(ValueError):
        keys.input_key(JOB, "video", "mp4")  # type: ignore[arg-type]
    with pytest.raises(keys.InvalidKey):
        keys.checkpoint_key(JOB, 1, "../../output.mp4")
