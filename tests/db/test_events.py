"""The event history as a feed: progress at a bounded rate, checkpoint and segment facts,
ids that resume a feed, and webhook deliveries queued with the events they carry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from db import job_store, leases, webhooks
from db.segments import Segment
from tests.factories import job_params, lease_for

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def running(db, create_job, **overrides):
    job = create_job(db, now=T0, **overrides)
    with db.transaction() as s:
        leases.claim(s, job.id, "w1", 600, now=at(0))
    return job


def events(db, job_id, **kwargs):
    with db.transaction() as s:
        return job_store.list_events(s, job_id, **kwargs)


def test_progress_events_are_rate_limited_per_job(db, create_job):
    # six clips of 48 frames (288) for 11 s of speech: the video ends with it, after 275
    job = running(db, create_job, clips_total=6, params=job_params(audio_duration_s=11.0))

    def progress(clips, t):
        with db.transaction() as s:
            leases.update_progress(s, lease_for(job.id, "w1", 1), clips_done=clips, fps=20.0,
                eta_s=1.0, clip_s=2.4, now=at(t),
            )  # fmt: skip

    progress(1, 1.0)  # the first one always
    progress(2, 1.5)  # 0.5 s later: only the row changes
    progress(3, 2.6)  # 1.6 s after the last event
    progress(3, 4.0)  # the same clip count: nothing new to say
    progress(6, 4.1)  # the last clip always
    got = [e for e in events(db, job.id) if e.event == "progress"]
    assert [e.data["clips_done"] for e in got] == [1, 3, 6]
    assert got[0].data == {
        "clips_done": 1, "clips_total": 6, "frames_done": 48, "frames_total": 275,
        "fps": 20.0, "eta_s": 1.0, "clip_s": 2.4,
    }  # fmt: skip
    with db.transaction() as s:
        row = job_store.get_job(s, job.id)
    assert (row.clips_done, row.frames_done) == (
        6,
        275,
    )  # the last clip counts only its spoken frames


def test_a_new_attempt_reports_progress_at_once(db, create_job):
    job = running(db, create_job)
    with db.transaction() as s:
        leases.update_progress(s, lease_for(job.id, "w1", 1), clips_done=2, now=at(1))
        leases.release(s, lease_for(job.id, "w1", 1), now=at(1.1))
        leases.claim(s, job.id, "w2", 600, now=at(1.2))
        leases.update_progress(s, lease_for(job.id, "w2", 2), clips_done=1, now=at(1.3))
    got = [(e.attempt, e.data["clips_done"]) for e in events(db, job.id) if e.event == "progress"]
    assert got == [(1, 2), (2, 1)]


def test_checkpoints_segments_and_outputs_carry_their_facts(db, create_job):
    job = running(db, create_job, clips_total=2)
    segment = Segment(0, f"jobs/{job.id}/segments/00000.mp4", 0, 2, 96, 5000, "e" * 64)
    with db.transaction() as s:
        leases.record_checkpoint(
            s, lease_for(job.id, "w1", 1), 2, duration_s=0.8, bytes=123456, now=at(1)
        )
        leases.record_segment(s, lease_for(job.id, "w1", 1), segment, now=at(2))
        leases.mark_stitching(s, lease_for(job.id, "w1", 1), now=at(3))
        output = {"bytes": 9000, "sha256": "f" * 64, "frames": 96, "duration_s": 3.84}
        leases.mark_succeeded(s, lease_for(job.id, "w1", 1), "out.mp4", output=output, now=at(4))
    by_kind = {e.event: e for e in events(db, job.id)}
    assert by_kind["checkpoint"].data == {
        "clip": 2, "tier": "remote", "node": None, "duration_s": 0.8, "bytes": 123456,
    }  # fmt: skip
    assert by_kind["segment"].data["bytes"] == 5000 and by_kind["segment"].data["index"] == 0
    assert by_kind["succeeded"].data == {"output_key": "out.mp4", **output}
    with db.transaction() as s:
        assert job_store.get_job(s, job.id).output_meta == output


def test_event_ids_resume_a_feed(db, create_job):
    job = running(db, create_job)
    first = events(db, job.id)
    with db.transaction() as s:
        leases.record_checkpoint(s, lease_for(job.id, "w1", 1), 1, now=at(1))
        job_store.request_cancel(s, job.id, now=at(2))
    later = events(db, job.id, after_id=first[-1].id)
    assert [e.event for e in later] == ["checkpoint", "cancel_requested"]
    ids = [e.id for e in events(db, job.id)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [e.event for e in events(db, job.id, after_id=first[0].id, limit=1)] == ["claimed"]


def test_webhook_deliveries_are_queued_with_the_events(db, create_job):
    job = create_job(db, tenant="acme", now=T0)
    other = create_job(db, tenant="acme", now=T0)
    with db.transaction() as s:
        tenant_wide = webhooks.create_webhook(
            s, tenant="acme", url="http://r/all", events=["succeeded", "canceled"], secret="s1"
        )
        per_job = webhooks.create_webhook(
            s, tenant="acme", url="http://r/one", events=list(webhooks.WEBHOOK_EVENTS),
            secret="s2", job_id=job.id,
        )  # fmt: skip
        webhooks.create_webhook(s, tenant="else", url="http://r/x", events=["started"], secret="s")
    with db.transaction() as s:
        leases.claim(s, job.id, "w1", 600, now=at(1))
        leases.update_progress(s, lease_for(job.id, "w1", 1), clips_done=1, now=at(2))
        leases.record_checkpoint(s, lease_for(job.id, "w1", 1), 1, now=at(3))
        leases.mark_stitching(s, lease_for(job.id, "w1", 1), now=at(4))
        leases.mark_succeeded(s, lease_for(job.id, "w1", 1), "out.mp4", now=at(5))
        job_store.request_cancel(s, other.id, now=at(6))
    with db.transaction() as s:
        mine = webhooks.list_deliveries(s, webhook_id=per_job.id)
        wide = webhooks.list_deliveries(s, webhook_id=tenant_wide.id)
        by_id = {e.id: e for e in job_store.list_events(s, job.id)}
    assert [d.event_type for d in mine] == ["started", "checkpoint", "succeeded"]
    assert [(d.event_type, d.job_id) for d in wide] == [
        ("succeeded", job.id),
        ("canceled", other.id),
    ]
    done = mine[-1]
    assert done.status == "pending" and done.attempts == 0
    assert done.payload["id"] == done.event_id and by_id[done.event_id].event == "succeeded"
    assert done.payload["job"]["status"] == "succeeded"
    assert done.payload["job"]["output_key"] == "out.mp4"
    assert mine[0].payload["job"]["attempt"] == 1


def test_the_delivery_queue_leases_retries_and_gives_up(db, create_job):
    job = create_job(db, now=T0)
    with db.transaction() as s:
        hook = webhooks.create_webhook(
            s, tenant="default", url="http://r", events=["canceled"], secret="s"
        )
        job_store.request_cancel(s, job.id, now=at(0))

    def take(t):
        with db.transaction() as s:
            return webhooks.take_due(s, lease_s=30, now=at(t))

    (due,) = take(1)
    assert (due.url, due.secret, due.attempt, due.event_type) == ("http://r", "s", 1, "canceled")
    assert take(2) == []  # leased to the first taker
    with db.transaction() as s:
        webhooks.record_attempt(
            s, due.id, attempt=1, status_code=500, error="HTTP 500", retry_in_s=10, now=at(3)
        )
        assert webhooks.next_due_in(s, now=at(3)) == 10
    assert take(12) == []
    (again,) = take(13)
    assert again.attempt == 2
    with db.transaction() as s:  # a late answer to attempt 1 changes nothing
        webhooks.record_attempt(s, due.id, attempt=1, status_code=200, error=None, retry_in_s=None)
        webhooks.record_attempt(
            s, due.id, attempt=2, status_code=None, error="refused", retry_in_s=None, now=at(14)
        )
        (row,) = webhooks.list_deliveries(s, webhook_id=hook.id)
    assert (row.status, row.attempts, row.failures, row.last_error, row.delivered_at) == (
        "failed", 2, 2, "refused", None,
    )  # fmt: skip
    assert take(100) == []


def test_a_lease_that_runs_out_is_taken_again(db, create_job):
    job = create_job(db, now=T0)
    with db.transaction() as s:
        webhooks.create_webhook(
            s, tenant="default", url="http://r", events=["canceled"], secret="s"
        )
        job_store.request_cancel(s, job.id, now=at(0))
    with db.transaction() as s:
        (first,) = webhooks.take_due(s, lease_s=30, now=at(1))
    with db.transaction() as s:  # the first taker died mid-request
        (second,) = webhooks.take_due(s, lease_s=30, now=at(32))
        assert second.attempt == 2
        webhooks.record_attempt(
            s, second.id, attempt=2, status_code=204, error=None, retry_in_s=None, now=at(33)
        )
        (row,) = webhooks.list_deliveries(s, job_id=job.id)
    assert (row.status, row.last_status_code, row.delivered_at) == ("delivered", 204, at(33))
