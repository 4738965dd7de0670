"""Provenance manifest: proof of which file longtake rendered, stored beside the output.

The manifest holds the sha256 of every segment and of the output file, and a hash of every
decoded frame of the output. ``verify`` first compares the file's sha256 (the exact file);
if that differs, it decodes the video and compares frame hashes, which survive a remux (a
container rewrite that copies the H.264 stream) but not a re-encode or an edited frame, and
says which frames differ.

Frame hashes are taken over the decoded picture planes (Y, U, V: visible pixels only, without
the decoder's line padding), prefixed by the pixel format and size. H.264 decoding is
bit-exact, so the hashes do not depend on the machine or the decoder's thread count.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np

from db.segments import Segment
from worker.segments import file_sha256

MANIFEST_FORMAT = "longtake-manifest/1"
MAX_REPORTED = 20  # differing frame indices listed in a verdict
FRAME_HASH = "sha256('<pix_fmt>:<width>x<height>:' + decoded planes, visible pixels, row-major)"


class ProvenanceError(RuntimeError):
    """A manifest cannot be built or read (unreadable video, inconsistent segments, bad JSON)."""


def _frame_digest(frame: av.VideoFrame) -> str:
    # to_ndarray returns the visible pixels of every plane without the decoder's line padding
    # (which is not part of the picture and may hold anything). Formats PyAV cannot export
    # as planes are hashed as RGB; the prefix keeps such hashes from matching plane hashes.
    try:
        pixels, fmt = frame.to_ndarray(), frame.format.name
    except ValueError:
        pixels, fmt = frame.to_ndarray(format="rgb24"), "rgb24"
    digest = hashlib.sha256(f"{fmt}:{frame.width}x{frame.height}:".encode())
    digest.update(np.ascontiguousarray(pixels).data)
    return digest.hexdigest()


def iter_frame_hashes(video_path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield the hash of every decoded frame of the first video stream, in display order."""
    try:
        with av.open(str(video_path)) as c:
            if not c.streams.video:
                raise ProvenanceError(f"{video_path} has no video stream")
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"  # frame-threaded H.264 decoding is still bit-exact
            for frame in c.decode(stream):
                yield _frame_digest(frame)
    except av.FFmpegError as exc:
        raise ProvenanceError(f"cannot decode {video_path}: {exc}") from exc


def _software_version() -> str:
    try:
        return f"longtake {importlib_metadata.version('longtake')}"
    except importlib_metadata.PackageNotFoundError:
        return "longtake"


def build_manifest(
    segments: Sequence[Segment],
    output: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
    created_at: datetime | None = None,
    segment_frame_hashes: Sequence[Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The provenance manifest of ``output`` stitched from ``segments`` (JSON-serialisable).

    ``metadata`` is free-form creation data recorded as given (job id, tenant, watermark
    text, model preset, ...). Raises ProvenanceError if the output's frames do not add up to
    the segments'.

    Decoding and hashing an hour of output takes minutes. ``segment_frame_hashes`` (one list
    per segment, from ``iter_frame_hashes`` run on each segment while the rest renders) skips
    that: the stitch copies the H.264 stream, so the output decodes to exactly the segments'
    frames in order (tests/worker/test_stitch.py holds the stitcher to this).
    """
    output = Path(output)
    try:
        with av.open(str(output)) as c:
            if not c.streams.video:
                raise ProvenanceError(f"{output} has no video stream")
            vs = c.streams.video[0]
            fps = Fraction(vs.average_rate) if vs.average_rate else None
            width, height = vs.codec_context.width, vs.codec_context.height
            output_frames = vs.frames  # from the container's index
    except av.FFmpegError as exc:
        raise ProvenanceError(f"cannot read {output}: {exc}") from exc
    if fps is None:
        raise ProvenanceError(f"{output} has no frame rate")
    if segment_frame_hashes is None:
        frame_hashes = list(iter_frame_hashes(output))
        frames_found = f"{output} decodes to {len(frame_hashes)} frames"
    else:
        if len(segment_frame_hashes) != len(segments):
            raise ProvenanceError(
                f"got frame hashes for {len(segment_frame_hashes)} segments, "
                f"but {len(segments)} segments"
            )
        for i, (seg, hashes) in enumerate(zip(segments, segment_frame_hashes, strict=True)):
            if len(hashes) != seg.frames:
                raise ProvenanceError(
                    f"segment {i} has {seg.frames} frames but {len(hashes)} hashes"
                )
        frame_hashes = [h for hashes in segment_frame_hashes for h in hashes]
        if output_frames != len(frame_hashes):
            raise ProvenanceError(
                f"{output} holds {output_frames} frames but its segments hold {len(frame_hashes)}"
            )
        frames_found = f"{output} holds {output_frames} frames"
    segment_frames = sum(s.frames for s in segments)
    if segments and segment_frames != len(frame_hashes):
        raise ProvenanceError(f"{frames_found} but its segments hold {segment_frames}")
    return {
        "format": MANIFEST_FORMAT,
        "created_at": (created_at or datetime.now(UTC)).isoformat(timespec="seconds"),
        "software": _software_version(),
        "metadata": dict(metadata or {}),
        "output": {
            "name": output.name,
            "sha256": file_sha256(output),
            "bytes": output.stat().st_size,
            "frames": len(frame_hashes),
            "fps": str(fps),
            "width": width,
            "height": height,
            "duration_s": round(float(len(frame_hashes) / fps), 6),
        },
        "segments": [
            {
                "index": i,
                "name": (s.path or Path(s.key)).name,
                "sha256": s.sha256,
                "bytes": s.bytes,
                "frames": s.frames,
            }
            for i, s in enumerate(segments)
        ],
        "frame_hash": FRAME_HASH,
        "frame_hashes": frame_hashes,
    }


def write_manifest(manifest: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and sanity-check a manifest file."""
    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProvenanceError(f"cannot read manifest {path}: {exc}") from exc
    _check_manifest(manifest, str(path))
    return manifest


def _check_manifest(manifest: Any, where: str) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ProvenanceError(f"{where} is not a {MANIFEST_FORMAT} manifest")
    output = manifest.get("output")
    hashes = manifest.get("frame_hashes")
    if (
        not isinstance(output, dict)
        or not isinstance(output.get("sha256"), str)
        or not isinstance(hashes, list)
        or output.get("frames") != len(hashes)
    ):
        raise ProvenanceError(
            f"manifest {where} is incomplete or inconsistent (output, frame_hashes)"
        )


@dataclass(frozen=True)
class VerifyResult:
    """Whether a video is the one a manifest describes.

    ``verdict``: "exact" (same file), "frames-match" (different file, identical decoded
    frames: a remux), "mismatch" (frames differ or are missing/extra), "unreadable".
    """

    verdict: Literal["exact", "frames-match", "mismatch", "unreadable"]
    file_sha256: str
    frames_expected: int
    frames_found: int | None = None
    first_mismatch: int | None = None
    mismatched_frames: int = 0
    differing: list[int] = field(default_factory=list)  # up to MAX_REPORTED indices
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.verdict in ("exact", "frames-match")

    def describe(self) -> str:
        if self.verdict == "exact":
            return f"OK: the file is the rendered output (sha256 {self.file_sha256[:16]}...)"
        if self.verdict == "frames-match":
            return (
                f"OK: the container differs from the rendered file, but all {self.frames_expected} "
                "decoded frames are identical (remuxed)"
            )
        if self.verdict == "unreadable":
            return f"FAIL: the video cannot be decoded: {self.detail}"
        parts = [f"FAIL: the video is not the rendered output: {self.detail}"]
        if self.differing:
            shown = ", ".join(map(str, self.differing))
            more = " ..." if self.mismatched_frames > len(self.differing) else ""
            parts.append(f"differing frames: {shown}{more}")
        return "\n".join(parts)


def verify(
    video_path: str | os.PathLike[str], manifest: Mapping[str, Any] | str | os.PathLike[str]
) -> VerifyResult:
    """Check ``video_path`` against a manifest (a dict or a path to its JSON file)."""
    if isinstance(manifest, (str, os.PathLike)):
        manifest = load_manifest(manifest)
    else:
        _check_manifest(manifest, "the given manifest")
    expected: list[str] = manifest["frame_hashes"]
    sha = file_sha256(Path(video_path))
    if sha == manifest["output"]["sha256"]:
        return VerifyResult("exact", sha, len(expected), frames_found=len(expected))

    found = 0
    differing: list[int] = []
    mismatched = 0
    try:
        for i, h in enumerate(iter_frame_hashes(video_path)):
            found = i + 1
            if i >= len(expected) or h != expected[i]:
                mismatched += 1
                if len(differing) < MAX_REPORTED:
                    differing.append(i)
    except ProvenanceError as exc:
        return VerifyResult("unreadable", sha, len(expected), detail=str(exc))
    missing = max(0, len(expected) - found)
    if mismatched == 0 and missing == 0:
        return VerifyResult("frames-match", sha, len(expected), frames_found=found)
    # Without differing frames the first mismatch is the first frame the video lacks.
    differing_first = differing[0] if differing else found
    details = []
    if mismatched:
        details.append(
            f"{mismatched} of {found} decoded frames differ, the first at frame {differing_first}"
        )
    if found != len(expected):
        details.append(f"the video has {found} frames, the manifest {len(expected)}")
    return VerifyResult(
        "mismatch",
        sha,
        len(expected),
        frames_found=found,
        first_mismatch=differing_first,
        mismatched_frames=mismatched + missing,
        differing=differing,
        detail="; ".join(details),
    )


def main_verify(video: str | os.PathLike[str], manifest: str | os.PathLike[str]) -> int:
    """``longtake verify VIDEO MANIFEST``: print a verdict; exit code 0 if the video is the
    rendered one (exact file or identical frames), 1 if not, 2 if the inputs cannot be read."""
    if not Path(video).is_file():
        print(f"error: video not found: {video}")
        return 2
    try:
        result = verify(video, manifest)
    except ProvenanceError as exc:
        print(f"error: {exc}")
        return 2
    print(result.describe())
    return 0 if result.ok else 1
