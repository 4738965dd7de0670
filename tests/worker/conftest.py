"""Fixtures for the media tests (helpers live in media_helpers.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from db.segments import Segment
from tests.worker.media_helpers import encode_segment


@pytest.fixture
def segment_factory(tmp_path: Path) -> Callable[..., Segment]:
    counter = iter(range(10_000))

    def factory(clip_frames: Sequence[int], **kwargs: object) -> Segment:
        return encode_segment(tmp_path / f"{next(counter):05d}.mp4", clip_frames, **kwargs)  # type: ignore[arg-type]

    return factory
