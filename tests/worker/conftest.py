"""Fixtures for the media tests (helpers live in media_helpers.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from db.segments import Segment
from tests.worker.media_helpers import encode_segment
from tests.worker.stack import running_stack


@pytest.fixture
def segment_factory(tmp_path: Path) -> Callable[..., Segment]:
    counter = iter(range(10_000))

    def factory(clip_frames: Sequence[int], **kwargs: object) -> Segment:
        return encode_segment(tmp_path / f"{next(counter):05d}.mp4", clip_frames, **kwargs)  # type: ignore[arg-type]

    return factory


@pytest.fixture
def services(pg_db, postgres_url, s3_config, s3_storage, redis_prefix, tmp_path):
    """The real stack (tests/worker/stack.py): db, storage, env, relay, and start(name)."""
    yield from running_stack(pg_db, postgres_url, s3_config, s3_storage, redis_prefix, tmp_path)
