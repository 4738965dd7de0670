"""A job's segment: one encoded checkpoint interval of its video (one type for every package)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from db.models import JobSegment
from pipeline import params as P


@dataclass(frozen=True)
class Segment:
    """Segment `index` holds clips [first_clip, first_clip + clips) as `frames` frames, stored
    at `key` (`bytes` long, `sha256`). A worker that encoded it or downloaded it also knows
    its local `path` and, having encoded it, each frame's hash; neither is stored."""

    index: int
    key: str
    first_clip: int
    clips: int
    frames: int
    bytes: int
    sha256: str
    path: Path | None = field(default=None, compare=False)
    frame_hashes: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    @property
    def end_clip(self) -> int:
        return self.first_clip + self.clips

    @property
    def duration_s(self) -> float:
        return self.frames / P.FPS

    @classmethod
    def of(cls, row: JobSegment) -> Segment:
        return cls(
            index=row.index,
            key=row.key,
            first_clip=row.first_clip,
            clips=row.clips,
            frames=row.frames,
            bytes=row.bytes,
            sha256=row.sha256,
        )
