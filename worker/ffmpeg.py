"""Locating and running the ffmpeg binary.

The worker uses ffmpeg only where PyAV is the wrong tool: stitching segments with the concat
demuxer and encoding the audio track. The binary bundled with the imageio-ffmpeg wheel is
preferred (a known build with libx264 and the native AAC encoder on every node); a system
``ffmpeg`` on PATH is the fallback.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

STDERR_TAIL_CHARS = 2000


class FFmpegNotFoundError(RuntimeError):
    """Neither the imageio-ffmpeg binary nor a system ffmpeg is available."""


class FFmpegError(RuntimeError):
    """An ffmpeg run failed; the message ends with the tail of its stderr."""

    def __init__(self, message: str, returncode: int, stderr: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


@functools.cache
def find_ffmpeg() -> str:
    """Path of the ffmpeg executable: imageio-ffmpeg's bundled binary, else ``ffmpeg`` on PATH."""
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
        if exe and Path(exe).is_file():
            return exe
    except (ImportError, RuntimeError):
        # No wheel, or a wheel without a binary for this platform: try the system one.
        pass
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    raise FFmpegNotFoundError(
        "ffmpeg not found: install the imageio-ffmpeg wheel (pip install imageio-ffmpeg) "
        "or put an ffmpeg binary on PATH"
    )


def run_ffmpeg(args: Sequence[str | Path], *, what: str, timeout_s: float | None = None) -> None:
    """Run ``ffmpeg <args>`` quietly; raise FFmpegError with the stderr tail if it fails.

    ``what`` names the operation for the error message ("stitching 75 segments", ...).
    """
    cmd = [find_ffmpeg(), "-hide_banner", "-nostdin", "-loglevel", "error", *map(str, args)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        raise FFmpegError(
            f"ffmpeg timed out after {timeout_s} s while {what}", -1, stderr or ""
        ) from exc
    if proc.returncode != 0:
        tail = proc.stderr.strip()[-STDERR_TAIL_CHARS:] or "(no output on stderr)"
        raise FFmpegError(
            f"ffmpeg failed (exit code {proc.returncode}) while {what}:\n{tail}",
            proc.returncode,
            proc.stderr,
        )
