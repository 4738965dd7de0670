"""Where an attempt starts, for every shape the database and storage can be in (the table in
worker/resume.py): the decision is a pure function of what they hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from db.segments import Segment
from worker.commit import OpenInterval
from worker.resume import needs_checkpoint, resume_point

TOTAL = 10  # clips of the job
FRAMES = 48  # per clip
CKPT = Path("/scratch/resume")


def seg(index: int, first: int, clips: int) -> Segment:
    return Segment(index, f"jobs/j/segments/{index:05d}.mp4", first, clips, clips * FRAMES, 1, "a")


def carried(index: int, first: int, clips: int, frames: int | None = None) -> OpenInterval:
    frames = clips * FRAMES if frames is None else frames
    return OpenInterval(index, first, clips, frames, 64, 64, CKPT / "open-interval.rgb")


TILE_0_4 = [seg(0, 0, 2), seg(1, 2, 2)]  # clips [0, 4)

CASES = [
    # (name, recorded, segments, checkpoint, carried) -> (clip, kept, checkpoint, carried)
    ("nothing recorded", 0, [], None, None, (0, 0, False, False)),
    ("every clip in a segment: stitch only", TOTAL,
     [seg(0, 0, 4), seg(1, 4, 4), seg(2, 8, 2)], None, None, (TOTAL, 3, False, False)),
    ("from the checkpoint", 4, TILE_0_4, CKPT, None, (4, 2, True, False)),
    ("from the checkpoint with its open interval", 5, TILE_0_4, CKPT, carried(2, 4, 1),
     (5, 2, True, True)),
    ("segments past the checkpoint are not kept", 4, [*TILE_0_4, seg(2, 4, 2)], CKPT, None,
     (4, 2, True, False)),
    # every way of not fitting starts over from clip 0
    ("checkpoint missing", 4, TILE_0_4, None, None, (0, 0, False, False)),
    ("a segment row lost in the middle", 4, [seg(0, 0, 2), seg(2, 4, 2)], CKPT, None,
     (0, 0, False, False)),
    ("segments end before the checkpoint, nothing carried", 6, TILE_0_4, CKPT, None,
     (0, 0, False, False)),
    ("the carried interval starts elsewhere", 5, TILE_0_4, CKPT, carried(2, 3, 2),
     (0, 0, False, False)),
    ("the carried interval ends before the checkpoint", 6, TILE_0_4, CKPT, carried(2, 4, 1),
     (0, 0, False, False)),
    ("the carried interval has the wrong index", 5, TILE_0_4, CKPT, carried(3, 4, 1),
     (0, 0, False, False)),
    ("the carried interval lost frames", 5, TILE_0_4, CKPT, carried(2, 4, 1, FRAMES - 1),
     (0, 0, False, False)),
    ("the last checkpoint without all segments", TOTAL, TILE_0_4, None, None,
     (0, 0, False, False)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("recorded", "segments", "checkpoint", "open_interval", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_resume_point(recorded, segments, checkpoint, open_interval, expected):
    start = resume_point(recorded, TOTAL, FRAMES, segments, checkpoint, open_interval)
    clip, kept, with_checkpoint, with_carried = expected
    assert start.clip == clip
    assert start.segments == segments[:kept]
    assert (start.checkpoint is not None) is with_checkpoint
    assert (start.open_interval is not None) is with_carried
    if clip == 0 and recorded > 0:
        assert "starting over" in start.reason  # said in the attempt's log


def test_the_checkpoint_is_fetched_only_when_the_decision_needs_it():
    assert [needs_checkpoint(r, TOTAL) for r in (0, 1, 9, 10)] == [False, True, True, False]
