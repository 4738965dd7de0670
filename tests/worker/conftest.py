"""Fixtures for the media tests (helpers live in media_helpers.py)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from db.database import Database
from db.segments import Segment
from storage.keys import manifest_key
from storage.local import LocalStorage
from tests.worker.lifecycle_helpers import ClipLog, Reference, config, make_job
from tests.worker.media_helpers import encode_segment
from tests.worker.stack import running_stack
from worker.lifecycle import Lifecycle, Outcome


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


@pytest.fixture(scope="module")
def reference_run(sqlite_template, tmp_path_factory) -> Reference:
    root = tmp_path_factory.mktemp("reference")
    shutil.copy(sqlite_template, root / "db.sqlite3")
    database = Database(f"sqlite:///{root / 'db.sqlite3'}")
    storage = LocalStorage(root / "objects")
    job_id = make_job(database, storage)
    clips = ClipLog()
    lifecycle = Lifecycle(config(root), database, storage, on_clip=clips)
    assert lifecycle.run(job_id) is Outcome.SUCCEEDED
    manifest = json.loads(storage.get_bytes(manifest_key(job_id)))
    database.dispose()
    raw = {clip: digest for clip, (_, digest) in clips.raw_by_clip(job_id).items()}
    return Reference(manifest["frame_hashes"], raw)


@pytest.fixture(scope="module")
def reference(reference_run) -> list[str]:
    """Decoded frame hashes of the standard job rendered without interruption."""
    return reference_run.frame_hashes
