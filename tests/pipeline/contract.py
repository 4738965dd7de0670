"""A caller of the engine contract (pipeline.engine), written against the Protocol alone: the
single-device generator and the TPP engine are both run through it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import RenderRequest, params
from pipeline import state as state_io
from pipeline.engine import Engine, RenderStream


def render_with_a_resume(
    engine: Engine, request: RenderRequest, directory: Path, cut: int
) -> list[np.ndarray]:
    """Render `cut` clips, checkpoint the way the engine says it should be done, close the
    stream, resume from the checkpoint in a new stream; every clip's frames, in order."""
    stream = engine.open(request)
    assert isinstance(stream, RenderStream)
    assert stream.next_clip == 0 and stream.num_clips > cut
    frames = [next(stream).frames for _ in range(cut)]
    assert stream.next_clip == cut
    for clip in frames:
        assert clip.shape[1:] == (stream.height, stream.width, 3)
    if engine.writes_own_checkpoints:
        written = stream.checkpoint(directory)
    else:
        written = state_io.write_checkpoint(stream.state_dict(pin_memory=True), directory)
    assert written[-1].name == state_io.MANIFEST and all(p.is_file() for p in written)
    assert engine.precision in params.PRECISIONS
    assert state_io.read_manifest(directory)["meta"]["precision"] == engine.precision
    stream.close()
    stream.close()  # idempotent

    resumed = engine.open(request, resume_from=directory)
    assert resumed.next_clip == cut and resumed.num_clips == stream.num_clips
    assert resumed.fps == 25
    frames += [clip.frames for clip in resumed]
    resumed.close()
    return frames
