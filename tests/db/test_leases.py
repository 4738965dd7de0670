"""Leases: claims, heartbeats, the reaper, releases, retries, progress and checkpoints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from db import job_store, leases, outbox, upkeep
from db.segments import Segment
from db.states import JobStatus
from tests.factories import failure, lease_for

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LEASE_S = 60


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def get(db, job_id):
    with db.transaction() as s:
        return job_store.get_job(s, job_id)


def events(db, job_id):
    with db.transaction() as s:
        return job_store.list_events(s, job_id)


def unsent_reasons(db, job_id):
    with db.transaction() as s:
        return [m.reason for m in outbox.lock_unsent(s) if m.job_id == job_id]


def claim(db, job_id, worker, now):
    with db.transaction() as s:
        return leases.claim(s, job_id, worker, LEASE_S, now=now)


def test_claim_takes_a_lease_and_counts_the_attempt(db, create_job):
    job = create_job(db, now=T0)
    lease = claim(db, job.id, "w1", at(1))
    assert lease == leases.Lease(job.id, "w1", 1, at(1 + LEASE_S), leases.Checkpoints())
    row = get(db, job.id)
    assert (row.status, row.worker_id, row.attempt) == ("running", "w1", 1)
    assert row.lease_expires_at == at(61) and row.heartbeat_at == at(1) and row.started_at == at(1)


def test_claim_refuses_a_live_lease_and_takes_over_an_expired_one(db, create_job):
    job = create_job(db, now=T0)
    claim(db, job.id, "w1", at(0))
    assert claim(db, job.id, "w2", at(59)) is None  # duplicate wake-up: dropped
    assert get(db, job.id).worker_id == "w1"

    lease = claim(db, job.id, "w2", at(61))  # w1 went silent and nobody reaped it yet
    assert (lease.worker_id, lease.attempt) == ("w2", 2)
    assert [e.event for e in events(db, job.id)][-2:] == ["lease_expired", "claimed"]


def test_claim_of_an_expired_lease_without_attempts_left_fails_the_job(db, create_job):
    job = create_job(db, max_attempts=1, now=T0)
    claim(db, job.id, "w1", at(0))
    assert claim(db, job.id, "w2", at(100)) is None
    row = get(db, job.id)
    assert row.status == "failed"
    assert "no attempts left: 1 of 1 failed" in row.error


def test_heartbeat_extends_only_the_owners_lease(db, create_job):
    job = create_job(db, now=T0)
    lease = claim(db, job.id, "w1", at(0))
    with db.transaction() as s:
        assert leases.heartbeat(s, lease_for(job.id, "w1", lease.attempt), LEASE_S, now=at(30))
        assert not leases.heartbeat(s, lease_for(job.id, "w2", lease.attempt), LEASE_S, now=at(31))
        assert not leases.heartbeat(
            s, lease_for(job.id, "w1", lease.attempt + 1), LEASE_S, now=at(31)
        )
    row = get(db, job.id)
    assert row.lease_expires_at == at(90) and row.heartbeat_at == at(30)


def test_reaper_requeues_expired_leases_only(db, create_job):
    alive = create_job(db, now=T0)
    dead = create_job(db, now=T0)
    claim(db, alive.id, "w1", at(0))
    claim(db, dead.id, "w2", at(0))
    with db.transaction() as s:
        leases.heartbeat(s, lease_for(alive.id, "w1", 1), LEASE_S, now=at(50))
        assert upkeep.reap_expired(s, now=at(70)) == [upkeep.ReapedJob(dead.id, JobStatus.QUEUED)]

    row = get(db, dead.id)
    assert (row.status, row.worker_id, row.attempt) == ("queued", None, 1)
    last = events(db, dead.id)[-1]
    assert (last.event, last.worker_id) == ("lease_expired", "w2")
    assert "lease of worker w2 (attempt 1) expired" in last.reason
    assert unsent_reasons(db, dead.id) == ["created", "lease_expired"]
    assert get(db, alive.id).status == "running"

    # the old worker wakes up: every write it attempts is refused
    with db.transaction() as s:
        assert not leases.heartbeat(s, lease_for(dead.id, "w2", 1), LEASE_S, now=at(71))
        stale = lease_for(dead.id, "w2", 1)
        for write in (
            lambda: leases.update_progress(s, stale, clips_done=5),
            lambda: leases.record_checkpoint(s, stale, 5),
            lambda: leases.record_segment(s, stale, Segment(0, "k", 0, 5, 240, 1, "a" * 64)),
            lambda: leases.mark_stitching(s, stale),
            lambda: leases.release(s, stale),
            lambda: leases.mark_failed(s, stale, failure("late")),
            lambda: leases.mark_canceled(s, stale),
        ):
            with pytest.raises(leases.LeaseLost):
                write()
    assert get(db, dead.id).clips_done == 0


def test_reaper_fails_a_job_out_of_attempts(db, create_job):
    job = create_job(db, max_attempts=2, now=T0)
    for n in range(2):
        assert claim(db, job.id, f"w{n}", at(100 * n)).attempt == n + 1
        with db.transaction() as s:
            reaped = upkeep.reap_expired(s, now=at(100 * n + 61))
    assert reaped == [upkeep.ReapedJob(job.id, JobStatus.FAILED)]
    row = get(db, job.id)
    assert row.status == "failed" and "no attempts left: 2 of 2 failed" in row.error
    assert unsent_reasons(db, job.id) == ["created", "lease_expired"]  # no wake-up for a failure


def test_reaper_finishes_a_pending_cancel(db, create_job):
    job = create_job(db, now=T0)
    claim(db, job.id, "w1", at(0))
    with db.transaction() as s:
        job_store.request_cancel(s, job.id, now=at(10))
        assert upkeep.reap_expired(s, now=at(61)) == [upkeep.ReapedJob(job.id, JobStatus.CANCELED)]


def test_release_requeues_and_keeps_the_attempt_count(db, create_job):
    job = create_job(db, now=T0)
    lease = claim(db, job.id, "w1", at(0))
    with db.transaction() as s:
        leases.update_progress(s, lease_for(job.id, "w1", 1), clips_done=7, fps=20.0, eta_s=9)
        leases.record_checkpoint(s, lease_for(job.id, "w1", 1), 5)
        leases.release(s, lease_for(job.id, "w1", lease.attempt), reason="SIGTERM")
    row = get(db, job.id)
    assert (row.status, row.attempt, row.worker_id) == ("queued", 1, None)
    # progress past the checkpoint is lost; the next attempt starts at clip 5
    assert (row.clips_done, row.frames_done, row.fps, row.eta_s) == (5, 240, None, None)
    assert unsent_reasons(db, job.id) == ["created", "released"]
    assert claim(db, job.id, "w2", at(1)).checkpoints.remote_clip == 5


def test_progress_and_checkpoints_are_recorded_for_the_owner(db, create_job):
    job = create_job(db, now=T0)
    claim(db, job.id, "w1", at(0))
    with db.transaction() as s:
        leases.update_progress(s, lease_for(job.id, "w1", 1), clips_done=3, fps=21.5, eta_s=12.0)
        leases.record_checkpoint(s, lease_for(job.id, "w1", 1), 3)
        with pytest.raises(leases.LeaseLost):
            leases.update_progress(s, lease_for(job.id, "w2", 1), clips_done=9)
        with pytest.raises(ValueError):
            leases.record_checkpoint(s, lease_for(job.id, "w1", 1), -1)
    row = get(db, job.id)
    assert (row.clips_done, row.frames_done, row.fps, row.eta_s) == (3, 144, 21.5, 12.0)
    assert row.last_checkpoint_clip == 3
    assert events(db, job.id)[-1].reason == "checkpoint at clip 3 in the bucket"


def test_segments_are_recorded_and_replaced(db, create_job):
    job = create_job(db, now=T0)
    claim(db, job.id, "w1", at(0))
    seg = Segment(0, "jobs/x/segments/00000.mp4", 0, 10, 480, 1234, "a" * 64)
    with db.transaction() as s:
        leases.record_segment(s, lease_for(job.id, "w1", 1), seg)
        leases.record_segment(
            s, lease_for(job.id, "w1", 1), Segment(1, "k1", 10, 10, 480, 99, "b" * 64)
        )
        with pytest.raises(leases.LeaseLost):
            leases.record_segment(s, lease_for(job.id, "w2", 1), seg)
    with db.transaction() as s:
        leases.release(s, lease_for(job.id, "w1", 1))
    claim(db, job.id, "w2", at(1))
    with db.transaction() as s:  # the resumed attempt re-renders interval 1
        leases.record_segment(
            s, lease_for(job.id, "w2", 2), Segment(1, "k1", 10, 10, 480, 100, "c" * 64)
        )
    with db.transaction() as s:
        segs = [
            (g.index, g.bytes, g.sha256[0], g.attempt) for g in job_store.list_segments(s, job.id)
        ]
    assert segs == [(0, 1234, "a", 1), (1, 100, "c", 2)]


def test_retryable_failure_requeues_until_attempts_run_out(db, create_job):
    job = create_job(db, max_attempts=2, now=T0)
    claim(db, job.id, "w1", at(0))
    with db.transaction() as s:
        row = leases.mark_failed(
            s, lease_for(job.id, "w1", 1), failure("S3 timeout"), retryable=True
        )
    assert row.status == "queued" and row.error == "S3 timeout"
    claim(db, job.id, "w2", at(1))
    with db.transaction() as s:
        row = leases.mark_failed(
            s, lease_for(job.id, "w2", 2), failure("S3 timeout again"), retryable=True
        )
    assert row.status == "failed" and row.error == "S3 timeout again"
    assert unsent_reasons(db, job.id) == ["created", "retry"]


def test_retry_resumes_from_the_checkpoint_with_fresh_attempts(db, create_job):
    job = create_job(db, max_attempts=1, now=T0)
    claim(db, job.id, "w1", at(0))
    with db.transaction() as s:
        leases.record_checkpoint(s, lease_for(job.id, "w1", 1), 4)
        leases.mark_failed(s, lease_for(job.id, "w1", 1), failure("CUDA error"))
        row = job_store.retry(s, job.id, attempts=2, now=at(5))
    assert (row.status, row.attempt, row.max_attempts) == ("queued", 1, 3)
    assert (row.error, row.last_checkpoint_clip, row.clips_done) == (None, 4, 4)
    assert row.finished_at is None
    assert events(db, job.id)[-1].reason == "retry requested; resuming from clip 4"
    assert unsent_reasons(db, job.id) == ["created", "retry"]
    lease = claim(db, job.id, "w2", at(6))
    assert (lease.attempt, lease.checkpoints.newest) == (2, 4)


def test_cancel_of_a_running_job_is_a_flag_until_the_worker_stops(db, create_job):
    job = create_job(db, now=T0)
    claim(db, job.id, "w1", at(0))
    with db.transaction() as s:
        assert job_store.request_cancel(s, job.id).status == "running"
        job_store.request_cancel(s, job.id)  # a second request adds nothing
        assert leases.is_cancel_requested(s, lease_for(job.id, "w1", 1))
        leases.mark_canceled(s, lease_for(job.id, "w1", 1))
    assert [e.event for e in events(db, job.id)][-2:] == ["cancel_requested", "canceled"]
    with db.transaction() as s:
        row = job_store.retry(s, job.id, attempts=3)
    assert not row.cancel_requested


def test_graceful_hand_backs_are_not_failed_attempts(db, create_job):
    """Rolling deploys release the job any number of times; only failures and lost workers
    use up its attempts (three deploys and two crashes leave a job of three attempts alive)."""
    job = create_job(db, max_attempts=3, now=T0)
    t = 0
    for n in range(5):
        lease = claim(db, job.id, f"w{n}", at(t))
        if n in (1, 3):  # this worker crashed: its lease expires and is reaped
            t += LEASE_S + 1
            with db.transaction() as s:
                upkeep.reap_expired(s, now=at(t))
        else:  # SIGTERM during a deploy
            with db.transaction() as s:
                leases.release(s, lease)
        t += 1
    row = get(db, job.id)
    assert (row.status, row.attempt, row.failed_attempts) == ("queued", 5, 2)
    lease = claim(db, job.id, "w5", at(t))
    assert lease is not None and lease.attempt == 6
    # the third failure is the last one allowed
    with db.transaction() as s:
        row = leases.mark_failed(s, lease, failure("S3 timeout", "infrastructure"), retryable=True)
    assert (row.status, row.failed_attempts) == ("failed", 3)


def test_a_failure_is_told_to_the_owner_and_detailed_for_operators(db, create_job):
    job = create_job(db, now=T0)
    lease = claim(db, job.id, "w1", at(0))
    told = failure("the GPU ran out of memory at this size; submit it at a smaller size", "render")
    with db.transaction() as s:
        leases.mark_failed(s, lease, told)
    row = get(db, job.id)
    assert (row.error, row.error_kind) == (told.message, "render")
    assert row.error_detail == told.detail and "RuntimeError" not in row.error
    last = events(db, job.id)[-1]
    assert (last.reason, last.data) == (told.message, {"kind": "render", "detail": told.detail})
    with db.transaction() as s:  # a retry clears all three
        job_store.retry(s, job.id, attempts=1)
    row = get(db, job.id)
    assert (row.error, row.error_kind, row.error_detail) == (None, None, None)


def test_a_job_that_cannot_render_as_submitted_is_not_retried(db, create_job):
    from db.states import IllegalTransition

    job = create_job(db, now=T0)
    lease = claim(db, job.id, "w1", at(0))
    with db.transaction() as s:
        leases.mark_failed(s, lease, failure("audio is not decodable; submit it again", "input"))
    with db.transaction() as s, pytest.raises(IllegalTransition, match="submit it again"):
        job_store.retry(s, job.id, attempts=1)
    assert get(db, job.id).status == "failed"
