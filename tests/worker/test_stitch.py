"""Stitching: segments joined by stream copy, the source audio muxed once, faststart."""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from tests.worker.media_helpers import (
    FPS,
    decoded_planes,
    decoded_times,
    encode_segment,
    write_wav,
)
from worker.ffmpeg import FFmpegError, run_ffmpeg
from worker.segments import EncoderSettings
from worker.stitch import StitchError, prepare_audio, stitch

SEGMENT_CLIPS = ([6, 6], [6, 4], [6, 6, 5])  # 12 + 10 + 17 = 39 frames, 1.56 s


@pytest.fixture
def segments(tmp_path: Path) -> list[Path]:
    return [
        encode_segment(tmp_path / f"{i:05d}.mp4", clips, seed=i).path
        for i, clips in enumerate(SEGMENT_CLIPS)
    ]


def stream_seconds(stream: av.stream.Stream) -> float:
    return float(stream.duration * stream.time_base)


def top_level_boxes(path: Path) -> list[str]:
    """The MP4 file's top-level box types, in file order."""
    boxes = []
    with open(path, "rb") as f:
        while header := f.read(8):
            size, kind = struct.unpack(">I4s", header)
            if size == 1:
                size = struct.unpack(">Q", f.read(8))[0]
                f.seek(size - 16, 1)
            else:
                f.seek(size - 8, 1)
            boxes.append(kind.decode("latin-1"))
    return boxes


def test_stitched_video_is_the_segments_frames_in_order_bit_exact(tmp_path: Path, segments):
    audio = write_wav(tmp_path / "speech.wav", 3.0)
    result = stitch(segments, audio, tmp_path / "output.mp4")

    frames = 12 + 10 + 17
    assert (result.frames, result.fps, result.audio) == (frames, Fraction(FPS), "encoded")
    assert result.duration_s == pytest.approx(frames / FPS)
    expected = [planes for seg in segments for planes in decoded_planes(seg)]
    got = decoded_planes(result.path)
    assert len(got) == frames
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    # Continuous timing across the joins: frame i is shown at exactly i / fps.
    assert decoded_times(result.path) == [Fraction(i, FPS) for i in range(frames)]


def test_output_has_one_video_and_one_aac_track_cut_to_the_video(tmp_path: Path, segments):
    audio = write_wav(tmp_path / "speech.wav", 3.0)  # longer than the 1.56 s of video
    out = stitch(segments, audio, tmp_path / "output.mp4").path
    with av.open(str(out)) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
        v, a = c.streams.video[0], c.streams.audio[0]
        assert a.codec_context.name == "aac"
        assert v.frames == 39
        assert stream_seconds(v) == pytest.approx(39 / FPS, abs=1e-6)
        assert stream_seconds(a) == pytest.approx(39 / FPS, abs=1e-3)
        assert stream_seconds(a) <= stream_seconds(v) + 1e-3


def test_short_audio_is_padded_with_silence_to_the_video_end(tmp_path: Path, segments):
    audio = write_wav(tmp_path / "speech.wav", 0.6)
    out = stitch(segments, audio, tmp_path / "output.mp4").path
    with av.open(str(out)) as c:
        a = c.streams.audio[0]
        assert stream_seconds(a) == pytest.approx(39 / FPS, abs=1e-3)
        rate = a.codec_context.sample_rate
        samples = np.concatenate([f.to_ndarray().mean(axis=0) for f in c.decode(a)])
    # The decoder emits the priming samples too; the tone sits in the first 0.6 s either way.
    assert np.abs(samples[int(0.1 * rate) : int(0.5 * rate)]).max() > 0.3
    assert np.abs(samples[int(0.75 * rate) : int(1.5 * rate)]).max() < 1e-3


def test_output_is_faststart(tmp_path: Path, segments):
    out = stitch(segments, write_wav(tmp_path / "a.wav", 2.0), tmp_path / "output.mp4").path
    boxes = top_level_boxes(out)
    assert "moov" in boxes and "mdat" in boxes
    assert boxes.index("moov") < boxes.index("mdat")


def test_prepared_audio_is_copied_not_encoded_again(tmp_path: Path, segments):
    duration = 39 / FPS
    track = prepare_audio(write_wav(tmp_path / "a.wav", 5.0), tmp_path / "audio.m4a", duration)
    with av.open(str(track)) as c:
        assert stream_seconds(c.streams.audio[0]) == pytest.approx(duration, abs=1e-3)
        prepared_packets = [bytes(p) for p in c.demux(audio=0) if p.size]

    result = stitch(segments, track, tmp_path / "output.mp4")
    assert result.audio == "copied"
    with av.open(str(result.path)) as c:
        assert stream_seconds(c.streams.audio[0]) == pytest.approx(duration, abs=1e-3)
        muxed_packets = [bytes(p) for p in c.demux(audio=0) if p.size]
    assert muxed_packets == prepared_packets


def test_prepared_audio_of_another_length_is_encoded_to_fit(tmp_path: Path, segments):
    track = prepare_audio(write_wav(tmp_path / "a.wav", 5.0), tmp_path / "audio.m4a", 3.0)
    result = stitch(segments, track, tmp_path / "output.mp4")
    assert result.audio == "encoded"
    with av.open(str(result.path)) as c:
        assert stream_seconds(c.streams.audio[0]) == pytest.approx(39 / FPS, abs=1e-3)


def test_segments_with_different_encoder_settings_are_refused(tmp_path: Path, segments):
    other = encode_segment(
        tmp_path / "other.mp4", [6], settings=EncoderSettings(profile="baseline")
    )
    audio = write_wav(tmp_path / "a.wav", 2.0)
    with pytest.raises(StitchError, match=r"segment 2 \(other.mp4\) differs from segment 0"):
        stitch([segments[0], segments[1], other.path], audio, tmp_path / "output.mp4")
    bigger = encode_segment(tmp_path / "bigger.mp4", [6], width=128)
    with pytest.raises(StitchError, match="segment 1 .* in width"):
        stitch([segments[0], bigger.path], audio, tmp_path / "output.mp4")
    assert not (tmp_path / "output.mp4").exists()


def test_bad_inputs_get_clear_errors_and_leave_no_output(tmp_path: Path, segments):
    audio = write_wav(tmp_path / "a.wav", 2.0)
    out = tmp_path / "output.mp4"
    with pytest.raises(StitchError, match="no segments"):
        stitch([], audio, out)
    with pytest.raises(StitchError, match="segment 1 is missing"):
        stitch([segments[0], tmp_path / "nope.mp4"], audio, out)
    with pytest.raises(StitchError, match="audio file is missing"):
        stitch(segments, tmp_path / "nope.wav", out)
    with pytest.raises(StitchError, match="has no audio stream"):
        stitch(segments, segments[0], out)  # a video-only file as the "audio"
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio at all" * 100)
    with pytest.raises(StitchError, match="cannot read audio"):
        stitch(segments, garbage, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["a.wav", "garbage.wav", *(p.name for p in segments)]
    )


def test_ffmpeg_failures_carry_the_tail_of_its_stderr(tmp_path: Path):
    with pytest.raises(FFmpegError, match="while probing a missing file:\n.*No such file") as info:
        run_ffmpeg(
            ["-i", tmp_path / "missing.wav", tmp_path / "x.wav"], what="probing a missing file"
        )
    assert info.value.returncode != 0
