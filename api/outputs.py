"""What a finished video is: bytes, sha256, frames and duration.

Workers record this when a job succeeds. For a job whose worker did not, it is measured once
(the object is read through, hashed and probed) and stored with the job.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import av

from storage.base import Storage

_CHUNK = 1 << 20


def probe_video(path: Path) -> tuple[int | None, float | None]:
    """(frames, duration in seconds) of the first video stream; None where unknown."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return None, None
            stream = container.streams.video[0]
            frames = stream.frames or sum(1 for p in container.demux(stream) if p.size)
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            return frames, duration
    except av.FFmpegError:
        return None, None


def measure_output(storage: Storage, key: str) -> dict[str, Any]:
    digest = hashlib.sha256()
    size = 0
    with tempfile.TemporaryDirectory(prefix="longtake-output-") as workdir:
        path = Path(workdir) / "output.mp4"
        with path.open("wb") as out:
            for chunk in storage.iter_chunks(key, _CHUNK):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        frames, duration = probe_video(path)
    return {"bytes": size, "sha256": digest.hexdigest(), "frames": frames, "duration_s": duration}
