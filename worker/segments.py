"""Segment encoder: uint8 frames from the generator -> one H.264 MP4 per checkpoint interval.

Every segment is encoded with the same settings, starts on an IDR frame, has closed GOPs and
no audio, and numbers its frames from 0 at 1/fps. That is what lets the stitcher join them by
stream copy (ffmpeg concat demuxer) into a video with exactly the sum of their frames at
continuous timestamps.

Encoding runs on a background thread fed through a bounded queue: ``submit`` returns at once
while the encoder keeps up and blocks only when ``max_pending_clips`` clips are waiting
(backpressure instead of unbounded memory). PyAV releases the GIL while it converts colours
and while x264 encodes, so the generator's thread keeps running beside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np

from db.segments import Segment
from worker.watermark import Watermark

X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
)


@dataclass(frozen=True)
class EncoderSettings:
    """libx264 settings shared by every segment of a job (segments with different settings
    cannot be joined by stream copy).

    ``veryfast`` encodes 720x400 at well over 100 frames/s on 2 cores (ops/bench/stitch.py,
    docs/benchmarks.md), ahead of a generator producing ~50 frames/s. ``gop_seconds`` is the
    fixed keyframe interval. ``threads`` is fixed, never taken from the machine: x264's output
    depends on its thread count (frame threading changes what each frame can reference), so a
    count chosen from the cores would encode a resumed segment differently on another node or
    under another load; with a fixed count the same frames give the same bytes anywhere.
    """

    preset: str = "veryfast"
    crf: int = 20
    gop_seconds: float = 2.0
    profile: str = "high"
    threads: int = 4

    def __post_init__(self) -> None:
        if self.preset not in X264_PRESETS:
            raise ValueError(
                f"x264 preset must be one of {', '.join(X264_PRESETS)}, got {self.preset!r}"
            )
        # crf 0 means lossless, which needs a 4:4:4 profile that yuv420p segments do not use.
        if not 1 <= self.crf <= 51:
            raise ValueError(f"x264 crf must be within [1, 51], got {self.crf}")
        if not 0.04 <= self.gop_seconds <= 10.0:
            raise ValueError(
                f"keyframe interval must be within [0.04, 10] s, got {self.gop_seconds}"
            )
        if self.profile not in ("baseline", "main", "high"):
            raise ValueError(f"H.264 profile must be baseline, main or high, got {self.profile!r}")
        if not 1 <= self.threads <= 64:
            raise ValueError(f"encoder threads must be within [1, 64], got {self.threads}")


class EncoderError(RuntimeError):
    """Encoding a segment failed; raised by the next ``submit`` or ``close`` after the fault."""


_CLOSE = object()  # queue sentinel: no more clips


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


class SegmentEncoder:
    """Encode one segment. Usage::

        enc = SegmentEncoder(path, width, height, fps=25, settings=EncoderSettings())
        for clip in clips:          # uint8 [T, H, W, 3] RGB, T >= 1
            enc.submit(clip)        # returns at once unless the encoder is far behind
        info = enc.close()          # waits for the encoder; the file now exists at ``path``

    The file is written to ``<path>.partial`` and renamed on a successful ``close``, so a
    segment that exists at its final path is complete. ``abort`` (or leaving a ``with`` block
    on an exception) discards it. A submitted array belongs to the encoder: the watermark is
    composited into it in place, so the caller must not reuse it.

    ``raw_copy`` names a file to which the encoder thread appends every clip as submitted
    (uint8 RGB, before the mark): a worker that must stop in the middle of a segment keeps
    those frames, and the next attempt encodes the segment whole, bit for bit as if it had
    never stopped (a segment cut in two would encode differently).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        width: int,
        height: int,
        fps: int | Fraction = 25,
        settings: EncoderSettings | None = None,
        *,
        watermark: Watermark | None = None,
        max_pending_clips: int = 4,
        raw_copy: str | os.PathLike[str] | None = None,
        index: int = 0,
        first_clip: int = 0,
        key: str = "",
    ) -> None:
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError(
                f"frame size must be positive and even (yuv420p), got {width}x{height}"
            )
        fps = Fraction(fps)
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if max_pending_clips < 1:
            raise ValueError(f"max_pending_clips must be at least 1, got {max_pending_clips}")
        if watermark is not None and (watermark.width, watermark.height) != (width, height):
            raise ValueError(
                f"watermark was rendered for {watermark.width}x{watermark.height} frames, "
                f"the segment is {width}x{height}"
            )
        self.path = Path(path)
        # which segment of a job this is: recorded in the Segment that close() returns
        self.index, self.first_clip, self.key = index, first_clip, key
        self.width, self.height, self.fps = width, height, fps
        self.settings = settings or EncoderSettings()
        self.watermark = watermark if watermark is not None and watermark.active else None
        self._partial = self.path.with_name(self.path.name + ".partial")
        # The frames as submitted (before the mark), appended by the encoder thread: what a
        # worker that must stop mid-segment keeps, so the segment can be re-encoded whole.
        self.raw_copy = Path(raw_copy) if raw_copy is not None else None
        self._raw = open(self.raw_copy, "ab") if self.raw_copy is not None else None  # noqa: SIM115

        self._container = av.open(str(self._partial), mode="w", format="mp4")
        try:
            self._stream = self._add_video_stream()
        except BaseException:
            self._container.close()
            self._partial.unlink(missing_ok=True)
            if self._raw is not None:
                self._raw.close()
            raise
        self._frames_submitted = 0
        self._clips_submitted = 0
        self._frames_encoded = 0  # touched only by the encoder thread until it has finished
        self._error: BaseException | None = None
        self._closed = False
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pending_clips)
        self._thread = threading.Thread(
            target=self._run, name=f"segment-encoder:{self.path.name}", daemon=True
        )
        self._thread.start()

    def _add_video_stream(self) -> av.video.stream.VideoStream:
        s = self.settings
        gop = max(1, round(s.gop_seconds * self.fps))
        stream = self._container.add_stream("libx264", rate=self.fps)
        stream.width, stream.height = self.width, self.height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = 1 / self.fps
        stream.codec_context.thread_count = s.threads
        # Tag what the RGB -> YUV conversion below produces: BT.709, limited range.
        stream.codec_context.colorspace = av.video.reformatter.Colorspace.ITU709
        stream.codec_context.color_range = av.video.reformatter.ColorRange.MPEG
        stream.codec_context.color_primaries = 1  # BT.709
        stream.codec_context.color_trc = 1  # BT.709
        params = f"keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=0"
        if self.width < 128:
            # x264's macroblock-tree rate control encodes frames narrower than 128 px
            # differently from run to run (libx264 in PyAV 18.1, under CPU load: up to 7
            # distinct outputs in 150 encodes of the same 64x64, 96x64 or 64x128 frames; one
            # output from 128 px up). A resumed render must encode exactly as an uninterrupted
            # one, so previews and tests that small go without it.
            params += ":mbtree=0"
        stream.options = {
            "preset": s.preset,
            "crf": str(s.crf),
            "profile": s.profile,
            # Fixed GOP: IDR every `gop` frames, no scene-cut keyframes, closed GOPs, so every
            # segment starts decodable on its own and shares one structure with the others.
            "x264-params": params,
        }
        return stream

    # -- caller side ---------------------------------------------------------------------

    @property
    def frames_submitted(self) -> int:
        return self._frames_submitted

    @property
    def clips_submitted(self) -> int:
        """Calls of `submit` with frames: the clips this segment holds."""
        return self._clips_submitted

    @property
    def pending_clips(self) -> int:
        """Clips queued and not yet taken up by the encoder thread."""
        return self._queue.qsize()

    def submit(self, frames: np.ndarray) -> None:
        """Queue one clip of uint8 RGB frames [T, H, W, 3] for encoding.

        Blocks while ``max_pending_clips`` clips are already waiting. Raises EncoderError if
        the encoder thread has failed since the last call.
        """
        if self._closed:
            raise EncoderError(f"segment {self.path.name} is already closed")
        self._raise_if_failed()
        if (
            not isinstance(frames, np.ndarray)
            or frames.dtype != np.uint8
            or frames.ndim != 4
            or frames.shape[1:] != (self.height, self.width, 3)
        ):
            got = (
                f"{frames.dtype} {tuple(frames.shape)}"
                if isinstance(frames, np.ndarray)
                else type(frames).__name__
            )
            raise ValueError(
                f"expected uint8 RGB frames of shape [T, {self.height}, {self.width}, 3], got {got}"
            )
        if frames.shape[0] == 0:
            return
        self._queue.put(frames)
        self._frames_submitted += frames.shape[0]
        self._clips_submitted += 1

    def close(self) -> Segment:
        """Flush the encoder, finish the file and move it to ``path``; return its record."""
        if self._closed:
            raise EncoderError(f"segment {self.path.name} is already closed")
        self._closed = True
        self._queue.put(_CLOSE)
        self._thread.join()
        if self._error is not None:
            self._partial.unlink(missing_ok=True)
            self._raise_if_failed()
        if self._frames_encoded == 0:
            self._partial.unlink(missing_ok=True)
            raise EncoderError(f"segment {self.path.name} received no frames")
        os.replace(self._partial, self.path)
        return Segment(
            index=self.index,
            key=self.key,
            first_clip=self.first_clip,
            clips=self._clips_submitted,
            frames=self._frames_encoded,
            bytes=self.path.stat().st_size,
            sha256=file_sha256(self.path),
            path=self.path,
        )

    def abort(self) -> None:
        """Stop encoding and delete the unfinished file (cancel, or a failed interval)."""
        if not self._closed:
            self._closed = True
            self._error = self._error or EncoderError("aborted")
            self._queue.put(_CLOSE)
        self._thread.join()
        self._partial.unlink(missing_ok=True)

    def __enter__(self) -> SegmentEncoder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # On success the caller calls close() itself to get the Segment; anything else
        # (an exception, or forgetting to close) leaves no half-written segment behind.
        if exc_type is not None or not self._closed:
            self.abort()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise EncoderError(
                f"encoding segment {self.path.name} failed: {self._error}"
            ) from self._error

    # -- encoder thread ------------------------------------------------------------------

    def _run(self) -> None:
        close_seen = False
        try:
            while True:
                item = self._queue.get()
                if item is _CLOSE:
                    close_seen = True
                    break
                if self._error is None:  # after abort(), queued clips are dropped
                    self._encode_clip(item)  # type: ignore[arg-type]
            if self._error is None:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
                self._container.close()
        except BaseException as exc:  # surfaced to the caller by submit/close
            self._error = exc
            # Keep taking clips so that a caller blocked in submit() is released and sees the
            # error on its next call.
            while not close_seen:
                close_seen = self._queue.get() is _CLOSE
        finally:
            with contextlib.suppress(Exception):
                self._container.close()
            if self._raw is not None:
                with contextlib.suppress(Exception):
                    self._raw.close()

    def _encode_clip(self, frames: np.ndarray) -> None:
        if self._raw is not None:
            self._raw.write(np.ascontiguousarray(frames).data)
        if self.watermark is not None:
            self.watermark.apply(frames, inplace=True)
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame = frame.reformat(
                format="yuv420p",
                dst_colorspace="ITU709",
                dst_color_range="MPEG",
            )
            frame.pts = self._frames_encoded
            self._frames_encoded += 1
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
