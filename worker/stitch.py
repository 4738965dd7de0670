"""Stitch a job's segments into the output video and mux the source audio once.

The video is joined by stream copy (ffmpeg concat demuxer, ``-c:v copy``): segments share
encoder settings and start on IDR frames (worker/segments.py), so nothing is re-encoded and
an hour stitches in seconds. The audio is muxed once, as AAC, cut to the video's length, or
padded with silence where the speech ends before the last frame. ``-movflags +faststart``
puts the index first so players can start before the download ends.

Encoding an hour of AAC costs far more than the whole stream copy (ffmpeg's AAC encoder runs
about 30-45x real time on one core for speech; docs/benchmarks.md), so the worker encodes the
audio track with ``prepare_audio`` while the video renders; ``stitch`` then only copies it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av

from worker.ffmpeg import run_ffmpeg


@dataclass(frozen=True)
class AudioSettings:
    """The output audio track: AAC at ``sample_rate`` with at most ``max_channels``."""

    bitrate: str = "128k"
    sample_rate: int = 48000
    max_channels: int = 2

    def __post_init__(self) -> None:
        if self.sample_rate not in (16000, 22050, 24000, 32000, 44100, 48000):
            raise ValueError(f"AAC sample rate must be a standard rate, got {self.sample_rate}")
        if self.max_channels not in (1, 2):
            raise ValueError(f"max_channels must be 1 or 2, got {self.max_channels}")
        if not self.bitrate.rstrip("k").isdigit():
            raise ValueError(f"audio bitrate must look like '128k', got {self.bitrate!r}")


@dataclass(frozen=True)
class StitchResult:
    path: Path
    frames: int
    fps: Fraction
    duration_s: float
    bytes: int
    audio: Literal["copied", "encoded"]


class StitchError(RuntimeError):
    """The segments or the audio cannot be stitched, or the result is not what was asked for."""


@dataclass(frozen=True)
class _VideoProbe:
    frames: int
    fps: Fraction
    width: int
    height: int
    codec: str
    pix_fmt: str
    extradata: bytes


@dataclass(frozen=True)
class _AudioProbe:
    codec: str
    channels: int
    duration_s: float | None


def _probe_video(path: Path) -> _VideoProbe:
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise StitchError(f"{path} has no video stream")
            s = c.streams.video[0]
            cc = s.codec_context
            return _VideoProbe(
                frames=s.frames,
                fps=Fraction(s.average_rate) if s.average_rate else Fraction(0),
                width=cc.width,
                height=cc.height,
                codec=cc.name,
                pix_fmt=cc.pix_fmt or "",
                extradata=bytes(cc.extradata or b""),
            )
    except (av.FFmpegError, OSError) as exc:
        raise StitchError(f"cannot read video {path}: {exc}") from exc


def _probe_audio(path: Path) -> _AudioProbe:
    try:
        with av.open(str(path)) as c:
            if not c.streams.audio:
                raise StitchError(f"{path} has no audio stream")
            s = c.streams.audio[0]
            duration = float(s.duration * s.time_base) if s.duration and s.time_base else None
            return _AudioProbe(
                codec=s.codec_context.name, channels=s.codec_context.channels, duration_s=duration
            )
    except (av.FFmpegError, OSError) as exc:
        raise StitchError(f"cannot read audio {path}: {exc}") from exc


def _probe_segments(segment_paths: Sequence[Path]) -> tuple[int, Fraction]:
    """Check that the segments can be joined by stream copy; return (total frames, fps)."""
    if not segment_paths:
        raise StitchError("no segments to stitch")
    first: _VideoProbe | None = None
    total = 0
    for i, path in enumerate(segment_paths):
        if not path.is_file():
            raise StitchError(f"segment {i} is missing: {path}")
        probe = _probe_video(path)
        if probe.frames <= 0:
            raise StitchError(f"segment {i} ({path}) has no frames")
        if first is None:
            first = probe
        else:
            # Stream copy is only valid when every segment has the same parameter sets.
            for field in ("codec", "width", "height", "pix_fmt", "fps", "extradata"):
                if getattr(probe, field) != getattr(first, field):
                    raise StitchError(
                        f"segment {i} ({path.name}) differs from segment 0 in {field}; segments "
                        "must share encoder settings to be stitched by stream copy"
                    )
        total += probe.frames
    assert first is not None
    if first.fps <= 0:
        raise StitchError(f"segment 0 ({segment_paths[0]}) has no frame rate")
    return total, first.fps


def _audio_encode_args(duration: str, channels: int, settings: AudioSettings) -> list[str]:
    return [
        # Pad with silence up to the video's end, then cut there (sample-exact before encoding).
        "-af",
        f"apad=whole_dur={duration},atrim=duration={duration}",
        "-c:a",
        "aac",
        "-b:a",
        settings.bitrate,
        "-ar",
        str(settings.sample_rate),
        "-ac",
        str(min(channels, settings.max_channels)),
    ]


def _seconds(frames: int, fps: Fraction) -> str:
    return f"{float(frames / fps):.6f}"


def _tmp_beside(out_path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{out_path.stem}.", suffix=".tmp.mp4", dir=out_path.parent)
    os.close(fd)
    return Path(name)


def prepare_audio(
    source: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    duration_s: float,
    settings: AudioSettings | None = None,
) -> Path:
    """Encode ``source`` as the job's AAC track, exactly ``duration_s`` long (padded with
    silence or cut), into an .m4a that ``stitch`` copies without re-encoding.

    ``duration_s`` is the video's length, total frames / fps, known when the job starts.
    """
    source, out_path = Path(source), Path(out_path)
    settings = settings or AudioSettings()
    if duration_s <= 0:
        raise ValueError(f"audio duration must be positive, got {duration_s}")
    probe = _probe_audio(source)
    tmp = _tmp_beside(out_path)
    try:
        run_ffmpeg(
            [
                "-y",
                "-i",
                source,
                "-map",
                "0:a:0",
                "-vn",
                "-map_metadata",
                "-1",
                *_audio_encode_args(f"{duration_s:.6f}", probe.channels, settings),
                "-f",
                "mp4",
                tmp,
            ],
            what=f"encoding the audio track from {source.name}",
        )
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def _concat_list(segment_paths: Sequence[Path], directory: Path) -> Path:
    lines = []
    for p in segment_paths:
        # concat demuxer syntax: single-quoted, with ' written as '\''
        quoted = str(p.resolve()).replace("'", "'\\''")
        lines.append(f"file '{quoted}'\n")
    list_path = directory / "segments.txt"
    list_path.write_text("".join(lines), encoding="utf-8")
    return list_path


def stitch(
    segment_paths: Sequence[str | os.PathLike[str]],
    audio_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    settings: AudioSettings | None = None,
) -> StitchResult:
    """Join ``segment_paths`` in order by stream copy and mux ``audio_path`` as the only audio
    track: AAC, exactly as long as the video (cut, or padded with silence), faststart.

    If ``audio_path`` is already an AAC track of the video's length (``prepare_audio``), it is
    copied; any other audio file is encoded here. The output is written beside ``out_path``
    and moved there once checked, so ``out_path`` never holds a partial video.
    """
    segments = [Path(p) for p in segment_paths]
    audio, out_path = Path(audio_path), Path(out_path)
    settings = settings or AudioSettings()
    frames, fps = _probe_segments(segments)
    if not audio.is_file():
        raise StitchError(f"audio file is missing: {audio}")
    audio_probe = _probe_audio(audio)
    duration = _seconds(frames, fps)
    video_s = float(frames / fps)
    # A prepared track: AAC, ending within one video frame before the video's end, not after.
    prepared = (
        audio_probe.codec == "aac"
        and audio_probe.duration_s is not None
        and video_s - float(1 / fps) < audio_probe.duration_s <= video_s + 1e-3
    )
    if prepared:
        audio_args = ["-c:a", "copy"]
    else:
        audio_args = _audio_encode_args(duration, audio_probe.channels, settings)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_beside(out_path)
    try:
        with tempfile.TemporaryDirectory(prefix="longtake-stitch-") as workdir:
            list_path = _concat_list(segments, Path(workdir))
            run_ffmpeg(
                [
                    "-y",
                    "-f",
                    "concat",
                    "-safe",
                    "0",
                    "-i",
                    list_path,
                    "-i",
                    audio,
                    "-map",
                    "0:v:0",
                    "-map",
                    "1:a:0",
                    "-map_metadata",
                    "-1",
                    "-c:v",
                    "copy",
                    *audio_args,
                    "-movflags",
                    "+faststart",
                    "-f",
                    "mp4",
                    tmp,
                ],
                what=f"stitching {len(segments)} segments with {audio.name}",
            )
        out = _probe_video(tmp)
        if out.frames != frames:
            raise StitchError(
                f"stitched video has {out.frames} frames, the segments have {frames}: "
                "segments must start on keyframes and share encoder settings"
            )
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return StitchResult(
        path=out_path,
        frames=frames,
        fps=fps,
        duration_s=video_s,
        bytes=out_path.stat().st_size,
        audio="copied" if prepared else "encoded",
    )
