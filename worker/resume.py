"""Where an attempt starts: a pure decision over what the database and storage hold.

The job row records `last_checkpoint_clip` (the resume point) and a row per segment. Segment
rows are recorded with their checkpoints, so in a consistent job segments 0..k tile clips
[0, e) with e == recorded, or e < recorded when the checkpoint also carries the open interval
[e, recorded) (a worker stopped in the middle of an interval). Anything else (rows or
checkpoint files lost, a checkpoint that does not fit the segments) starts the job over from
clip 0: its segments are regenerated and their rows replaced.

    recorded  segments tile   checkpoint              start
    0         -               -                       clip 0, nothing kept
    total     [0, total)      -                       stitch only
    r < total [0, r)          found, no open interval clip r, segments kept
    r < total [0, e), e < r   found, open [e, r)      clip r, the open interval re-encoded
    r > 0     otherwise       missing or not fitting  clip 0 (start over)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from db.segments import Segment
from worker.commit import OpenInterval


@dataclass(frozen=True)
class ResumePoint:
    clip: int
    """The first clip this attempt generates (== clips_total: only the stitch is left)."""
    segments: list[Segment] = field(default_factory=list)
    """Recorded segments before `clip` (all of them, unless an open interval is carried)."""
    checkpoint: Path | None = None
    """The checkpoint directory at `clip` to resume the stream from (None: from the start)."""
    open_interval: OpenInterval | None = None
    """Frames of the segment after `segments`, generated before `clip`: encoded again first."""
    reason: str = ""
    """Why: said in the attempt's log."""


def needs_checkpoint(recorded: int, clips_total: int) -> bool:
    """Whether the decision needs the checkpoint at `recorded` (to be fetched first)."""
    return 0 < recorded < clips_total


def resume_point(
    recorded: int,
    clips_total: int,
    infer_frames: int,
    segments: Sequence[Segment],
    checkpoint: Path | None,
    carried: OpenInterval | None,
) -> ResumePoint:
    """Decide where to start (see the table above).

    `recorded` is the job's last checkpoint clip (0: none); `segments` its recorded segments
    in index order; `checkpoint` the fetched checkpoint directory at `recorded` (None when it
    could not be had) and `carried` the open interval that checkpoint holds, if any.
    """
    if recorded == 0:
        return ResumePoint(0, reason="no checkpoint: from the start")
    kept: list[Segment] = []
    end = 0
    for seg in segments:
        if seg.index != len(kept) or seg.first_clip != end or seg.end_clip > recorded:
            break
        kept.append(seg)
        end = seg.end_clip
    if recorded == clips_total and end == recorded:
        return ResumePoint(recorded, kept, reason="every clip is in a segment: stitch only")
    if recorded < clips_total and checkpoint is not None:
        if end == recorded and carried is None:
            return ResumePoint(recorded, kept, checkpoint, reason=f"from the checkpoint at {end}")
        if (
            carried is not None
            and carried.index == len(kept)
            and carried.first_clip == end
            and carried.first_clip + carried.clips == recorded
            and carried.frames == carried.clips * infer_frames
        ):
            return ResumePoint(
                recorded,
                kept,
                checkpoint,
                carried,
                reason=f"from the checkpoint at {recorded}, re-encoding clips {end}..{recorded}",
            )
    found = "found" if checkpoint is not None else "missing"
    return ResumePoint(
        0,
        reason=f"the checkpoint at clip {recorded} ({found}) and the segments before it "
        f"(clips [0, {end})) do not make a resume point: starting over",
    )
