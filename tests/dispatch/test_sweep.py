"""The sweep of old resume points: failed or canceled jobs lose their checkpoint and segments
after the retention period, nothing else does, and a retry racing the sweep never resumes from
a half-deleted checkpoint (real PostgreSQL and SQLite, S3 API and local storage)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from db import job_store, leases, upkeep
from db.models import Job
from db.segments import Segment
from db.states import JobStatus
from dispatch.relay import OutboxRelay
from dispatch.sweep import ResumePointSweeper
from storage import keys
from storage.base import StorageError
from tests.dispatch.test_relay import Recorder
from tests.factories import failure, lease_for

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
DAY = 86400.0


def at(days: float) -> datetime:
    return T0 + timedelta(days=days)


def put(storage, key: str) -> None:
    storage.put_bytes(key, b"x" * 16)


def ended_job(db, storage, create_job, *, status: str, ended: datetime, clip: int = 4):
    """A job that rendered `clip` clips (two segments of clip/2, a checkpoint at `clip`) and
    then failed or was canceled at `ended`, with its files in storage."""
    job = create_job(db, now=ended - timedelta(hours=2))
    with db.transaction() as s:
        lease = leases.claim(s, job.id, "w1", 60, now=ended - timedelta(hours=1))
    assert lease is not None
    half = clip // 2
    for index in range(2):
        key = keys.segment_key(job.id, index)
        put(storage, key)
        with db.transaction() as s:
            record = Segment(index, key, index * half, half, half * 48, 16, "0" * 64)
            leases.record_segment(s, lease_for(job.id, "w1", 1), record, now=ended)
    for name in ("sink.safetensors", "step-0.safetensors", "manifest.json"):
        put(storage, keys.checkpoint_key(job.id, clip, name))
    with db.transaction() as s:
        leases.record_checkpoint(s, lease_for(job.id, "w1", 1), clip, now=ended)
    put(storage, job.image_key)
    put(storage, job.audio_key)
    with db.transaction() as s:
        if status == "failed":
            leases.mark_failed(
                s, lease_for(job.id, "w1", 1), failure("the GPU fell off the bus"), now=ended
            )
        else:
            job_store.request_cancel(s, job.id, now=ended)
            leases.mark_canceled(s, lease_for(job.id, "w1", 1), now=ended)
    return job


def state(db, storage, job_id):
    with db.transaction() as s:
        job = job_store.get_job(s, job_id)
        segments = len(job_store.list_segments(s, job_id))
        events = [e.event for e in job_store.list_events(s, job_id)]
    return job, segments, events, storage.list(keys.job_prefix(job_id))


def test_old_failed_and_canceled_jobs_lose_their_resume_point_and_nothing_else(
    db, storage, create_job
):
    failed = ended_job(db, storage, create_job, status="failed", ended=at(0))
    canceled = ended_job(db, storage, create_job, status="canceled", ended=at(0.5))
    recent = ended_job(db, storage, create_job, status="failed", ended=at(6.5))
    running = create_job(db, now=at(0))
    with db.transaction() as s:
        leases.claim(s, running.id, "w2", 60, now=at(0))
        leases.record_checkpoint(s, lease_for(running.id, "w2", 1), 2, now=at(0))
    put(storage, keys.checkpoint_key(running.id, 2, "manifest.json"))

    sweeper = ResumePointSweeper(db, storage, retention_s=7 * DAY)
    result = sweeper.run_once(now=at(8))

    assert sorted(result.dropped) == sorted([failed.id, canceled.id])
    assert result.objects_deleted == 2 * (3 + 2) and result.failed == []
    for job in (failed, canceled):
        row, segments, events, left = state(db, storage, job.id)
        assert row.last_checkpoint_clip is None and segments == 0
        assert row.status in ("failed", "canceled")  # the status and history stay
        assert events[-1] == "resume_point_dropped"
        assert left == sorted([job.image_key, job.audio_key])  # the inputs stay
    row, segments, events, left = state(db, storage, recent.id)
    assert row.last_checkpoint_clip == 4 and segments == 2 and len(left) == 7
    row, _, _, left = state(db, storage, running.id)
    assert row.status == "running" and row.last_checkpoint_clip == 2 and len(left) == 1

    # nothing left to do: a second pass drops nothing
    assert sweeper.run_once(now=at(8)).dropped == []


def test_a_retry_after_the_sweep_starts_from_clip_0(db, storage, create_job):
    job = ended_job(db, storage, create_job, status="failed", ended=at(0))
    ResumePointSweeper(db, storage, retention_s=DAY).run_once(now=at(2))
    with db.transaction() as s:
        retried = job_store.retry(s, job.id, attempts=3, now=at(3))
        assert retried.job_status == JobStatus.QUEUED and not retried.last_checkpoint_clip
    _, _, events, _ = state(db, storage, job.id)
    assert events[-2:] == ["resume_point_dropped", "retried"]
    with db.transaction() as s:
        assert "resuming from clip 0" in job_store.list_events(s, job.id)[-1].reason


def test_a_job_retried_before_the_sweep_reaches_it_is_left_alone(db, storage, create_job):
    job = ended_job(db, storage, create_job, status="failed", ended=at(0))
    with db.transaction() as s:
        candidates = upkeep.stale_resume_points(s, finished_before=at(1))
    assert candidates == [job.id]
    with db.transaction() as s:
        job_store.retry(s, job.id, attempts=3, now=at(2))
    with db.transaction() as s:  # the sweep comes back to the job it listed
        assert not upkeep.drop_resume_point(s, job.id, finished_before=at(1), reason="test")
    row, segments, _, left = state(db, storage, job.id)
    assert row.status == "queued" and row.last_checkpoint_clip == 4 and segments == 2
    assert len(left) == 7


class FailingDeletes:
    """Storage whose deletions fail until `healthy` is set (the bucket refusing requests)."""

    def __init__(self, inner):
        self.inner = inner
        self.healthy = False

    def delete_prefix(self, prefix: str) -> int:
        if not self.healthy:
            raise StorageError(f"could not delete {prefix!r}: service unavailable")
        return self.inner.delete_prefix(prefix)


def test_a_failed_deletion_keeps_the_record_and_is_tried_again(db, storage, create_job):
    job = ended_job(db, storage, create_job, status="canceled", ended=at(0))
    flaky = FailingDeletes(storage)
    sweeper = ResumePointSweeper(db, flaky, retention_s=DAY)  # type: ignore[arg-type]

    result = sweeper.run_once(now=at(2))
    assert result.dropped == [] and result.failed == [job.id]
    row, segments, events, left = state(db, storage, job.id)
    assert row.last_checkpoint_clip == 4 and segments == 2 and len(left) == 7
    assert "resume_point_dropped" not in events

    flaky.healthy = True
    assert sweeper.run_once(now=at(2)).dropped == [job.id]
    row, segments, _, left = state(db, storage, job.id)
    assert row.last_checkpoint_clip is None and segments == 0 and len(left) == 2


class PausedDeletes:
    """Storage that holds its first deletion until released, to race a retry against it."""

    def __init__(self, inner):
        self.inner = inner
        self.deleting = threading.Event()
        self.release = threading.Event()

    def delete_prefix(self, prefix: str) -> int:
        self.deleting.set()
        assert self.release.wait(30)
        return self.inner.delete_prefix(prefix)


def test_a_retry_during_the_sweep_waits_and_then_starts_over(pg_db, s3_storage, create_job):
    db, storage = pg_db, s3_storage
    job = ended_job(db, storage, create_job, status="failed", ended=at(0))
    paused = PausedDeletes(storage)
    sweeper = ResumePointSweeper(db, paused, retention_s=DAY)  # type: ignore[arg-type]
    sweep = threading.Thread(target=sweeper.run_once, kwargs={"now": at(2)})
    sweep.start()
    assert paused.deleting.wait(30)  # the sweep holds the job's row, its files half-deleted

    retried: list[Job] = []

    def retry() -> None:
        with db.transaction() as s:
            retried.append(job_store.retry(s, job.id, attempts=3, now=at(2)))

    racer = threading.Thread(target=retry)
    racer.start()
    time.sleep(0.5)
    assert retried == []  # waiting for the row
    paused.release.set()
    sweep.join(30)
    racer.join(30)
    assert retried and retried[0].job_status == JobStatus.QUEUED
    assert not retried[0].last_checkpoint_clip  # it starts over, from clip 0
    _, segments, events, left = state(db, storage, job.id)
    assert segments == 0 and events[-2:] == ["resume_point_dropped", "retried"]
    assert left == sorted([job.image_key, job.audio_key])


def test_the_relay_sweeps_once_per_interval(sqlite_db, local_storage, create_job, monkeypatch):
    db, storage = sqlite_db, local_storage
    first = ended_job(db, storage, create_job, status="failed", ended=at(0))
    sweeper = ResumePointSweeper(db, storage, retention_s=DAY, interval_s=3600)
    relay = OutboxRelay(db, Recorder(), sweeper=sweeper, redispatch_after_s=0)
    monkeypatch.setattr("dispatch.sweep.utcnow", lambda: at(30))

    swept = relay.run_once().swept
    assert swept is not None and swept.dropped == [first.id]
    second = ended_job(db, storage, create_job, status="failed", ended=at(1))
    assert relay.run_once().swept is None  # within the interval: no pass
    assert state(db, storage, second.id)[0].last_checkpoint_clip == 4

    sweeper._next_run = 0.0  # the interval has passed
    assert relay.run_once().swept.dropped == [second.id]


def test_retention_must_be_positive(sqlite_db, local_storage):
    with pytest.raises(ValueError, match="positive"):
        ResumePointSweeper(sqlite_db, local_storage, retention_s=0)
