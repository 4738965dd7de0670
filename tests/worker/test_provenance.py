"""Provenance manifest: the rendered file verifies, a remux verifies by its frames, anything
re-encoded, edited or cut does not, and the verdict names the frames that differ."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from db.segments import Segment
from tests.worker.media_helpers import encode_segment, write_wav
from worker.ffmpeg import run_ffmpeg
from worker.provenance import (
    MANIFEST_FORMAT,
    ProvenanceError,
    build_manifest,
    iter_frame_hashes,
    load_manifest,
    main_verify,
    verify,
    write_manifest,
)
from worker.stitch import stitch

CLIPS = ([5, 5], [4, 4], [5, 6])  # 10 + 8 + 11 = 29 frames


@pytest.fixture
def rendered(tmp_path: Path) -> tuple[list[Segment], Path, Path]:
    """(segments, output, audio) of a small finished render."""
    segs = [encode_segment(tmp_path / f"{i:05d}.mp4", c, seed=i) for i, c in enumerate(CLIPS)]
    audio = write_wav(tmp_path / "speech.wav", 1.5)
    out = stitch([s.path for s in segs], audio, tmp_path / "output.mp4").path
    return segs, out, audio


@pytest.fixture
def manifest(rendered) -> dict:
    segs, out, _ = rendered
    created = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    return build_manifest(
        segs, out, metadata={"job_id": "j-1", "tenant": "acme"}, created_at=created
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_records_segments_output_and_every_frame(rendered, manifest):
    segs, out, _ = rendered
    assert json.loads(json.dumps(manifest)) == manifest  # JSON-serialisable as is
    assert manifest["format"] == MANIFEST_FORMAT
    assert manifest["created_at"] == "2026-11-21T12:00:00+00:00"
    assert manifest["metadata"] == {"job_id": "j-1", "tenant": "acme"}
    assert [s["sha256"] for s in manifest["segments"]] == [sha256(s.path) for s in segs]
    assert [s["frames"] for s in manifest["segments"]] == [10, 8, 11]
    o = manifest["output"]
    assert (o["sha256"], o["bytes"]) == (sha256(out), out.stat().st_size)
    assert (o["frames"], o["fps"], o["width"], o["height"]) == (29, "25", 96, 64)
    assert o["duration_s"] == pytest.approx(29 / 25)
    hashes = manifest["frame_hashes"]
    assert len(hashes) == 29 and len(set(hashes)) == 29  # every frame differs in the test clip


def test_frame_hashes_do_not_depend_on_the_file_only_on_the_pictures(rendered, manifest, tmp_path):
    segs, out, _ = rendered
    again = stitch(
        [s.path for s in segs],
        write_wav(tmp_path / "other.wav", 3.0, tone_hz=440.0),
        tmp_path / "b.mp4",
    )
    assert sha256(again.path) != manifest["output"]["sha256"]  # different audio
    assert build_manifest(segs, again.path)["frame_hashes"] == manifest["frame_hashes"]


def test_the_rendered_file_verifies_exactly(rendered, manifest, tmp_path, capsys):
    _, out, _ = rendered
    result = verify(out, manifest)
    assert result.ok and result.verdict == "exact"
    path = write_manifest(manifest, tmp_path / "manifest.json")
    assert load_manifest(path) == manifest
    assert main_verify(out, path) == 0
    assert capsys.readouterr().out.startswith("OK: the file is the rendered output")


def test_a_remux_verifies_by_its_decoded_frames(rendered, manifest, tmp_path, capsys):
    _, out, _ = rendered
    remux = tmp_path / "remux.mkv"
    run_ffmpeg(["-i", out, "-map", "0", "-c", "copy", remux], what="remuxing")
    result = verify(remux, manifest)
    assert result.verdict == "frames-match" and result.ok
    assert result.frames_found == 29
    path = write_manifest(manifest, tmp_path / "manifest.json")
    assert main_verify(remux, path) == 0
    assert "all 29 decoded frames are identical" in capsys.readouterr().out


def test_a_re_encoded_file_fails_from_its_first_frame(rendered, manifest, tmp_path, capsys):
    _, out, _ = rendered
    reencoded = tmp_path / "reencoded.mp4"
    run_ffmpeg(
        ["-i", out, "-c:v", "libx264", "-crf", "30", "-c:a", "copy", reencoded], what="re-encoding"
    )
    result = verify(reencoded, manifest)
    assert result.verdict == "mismatch" and not result.ok
    assert result.first_mismatch == 0
    path = write_manifest(manifest, tmp_path / "manifest.json")
    assert main_verify(reencoded, path) == 1
    assert "FAIL" in capsys.readouterr().out


def test_a_replaced_segment_is_named_frame_by_frame(rendered, manifest, tmp_path, capsys):
    segs, _, audio = rendered
    forged = encode_segment(tmp_path / "forged.mp4", [4, 4], seed=99)  # same length, other pictures
    tampered = stitch([segs[0].path, forged.path, segs[2].path], audio, tmp_path / "tampered.mp4")
    result = verify(tampered.path, manifest)
    assert result.verdict == "mismatch"
    assert result.first_mismatch == 10  # the first frame of segment 1
    assert result.differing == list(range(10, 18))  # segment 1 exactly; segments 0 and 2 intact
    assert result.mismatched_frames == 8
    assert main_verify(tampered.path, write_manifest(manifest, tmp_path / "m.json")) == 1
    out = capsys.readouterr().out
    assert "8 of 29 decoded frames differ, the first at frame 10" in out
    assert "differing frames: 10, 11, 12, 13, 14, 15, 16, 17" in out


def test_a_cut_video_fails_at_the_first_missing_frame(rendered, manifest, tmp_path):
    segs, _, audio = rendered
    cut = stitch([segs[0].path, segs[1].path], audio, tmp_path / "cut.mp4")
    result = verify(cut.path, manifest)
    assert result.verdict == "mismatch"
    assert (result.frames_found, result.first_mismatch, result.mismatched_frames) == (18, 18, 11)
    assert "the video has 18 frames, the manifest 29" in result.describe()


def test_unreadable_inputs_give_a_clear_verdict(rendered, manifest, tmp_path, capsys):
    _, out, _ = rendered
    not_video = tmp_path / "notes.txt"
    not_video.write_text("hello")
    result = verify(not_video, manifest)
    assert result.verdict == "unreadable" and not result.ok

    bad_manifest = tmp_path / "bad.json"
    bad_manifest.write_text('{"format": "something else"}')
    assert main_verify(out, bad_manifest) == 2
    assert f"is not a {MANIFEST_FORMAT} manifest" in capsys.readouterr().out
    assert main_verify(tmp_path / "missing.mp4", bad_manifest) == 2
    with pytest.raises(ProvenanceError, match="cannot read manifest"):
        load_manifest(tmp_path / "missing.json")


def test_building_a_manifest_for_the_wrong_segments_fails(rendered):
    segs, out, _ = rendered
    with pytest.raises(ProvenanceError, match="decodes to 29 frames but its segments hold 18"):
        build_manifest(segs[:2], out)


def test_hashes_taken_from_the_segments_give_the_same_manifest(rendered, manifest):
    segs, out, _ = rendered
    per_segment = [list(iter_frame_hashes(s.path)) for s in segs]
    created = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    fast = build_manifest(
        segs,
        out,
        metadata={"job_id": "j-1", "tenant": "acme"},
        created_at=created,
        segment_frame_hashes=per_segment,
    )
    assert fast == manifest
    with pytest.raises(ProvenanceError, match="segment 1 has 8 frames but 7 hashes"):
        build_manifest(
            segs, out, segment_frame_hashes=[per_segment[0], per_segment[1][:7], per_segment[2]]
        )
    with pytest.raises(ProvenanceError, match="holds 29 frames but its segments hold 18"):
        build_manifest(segs[:2], out, segment_frame_hashes=per_segment[:2])
