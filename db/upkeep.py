"""Upkeep: what keeps the queue moving and storage bounded, whoever runs it (the relay's loop,
`longtake sweep`). Leases that expired go back to the queue; queued jobs whose wake-up was lost
get a new one; failed and canceled jobs drop their resume point after the retention period.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db import transitions as T
from db.models import Job, JobSegment, OutboxMessage, Upload
from db.states import LEASED, JobStatus


@dataclass(frozen=True)
class ReapedJob:
    job_id: uuid.UUID
    status: JobStatus
    """Where the job went: queued, failed (attempts exhausted) or canceled (cancel pending)."""


def reap_expired(
    session: Session,
    *,
    prefer_local_s: float = 0.0,
    now: datetime | None = None,
    limit: int = 100,
) -> list[ReapedJob]:
    """Return jobs whose lease expired to the queue (or fail them when out of attempts). A job
    whose newest checkpoint is on its node's disk is offered to that node first, for
    `prefer_local_s` (its worker may be restarting there)."""
    now = T.now_or(now)
    stmt = (
        sa.select(Job)
        .where(Job.status.in_([s.value for s in LEASED]), Job.lease_expires_at < now)
        .order_by(Job.lease_expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    return [
        ReapedJob(
            job.id, T.expire_lease(session, job, now, enqueue=True, prefer_local_s=prefer_local_s)
        )
        for job in session.scalars(stmt).all()
    ]


def redispatch_stale(
    session: Session, *, older_than: datetime, limit: int = 100, now: datetime | None = None
) -> list[uuid.UUID]:
    """Send a new wake-up for queued jobs untouched since `older_than` that have none pending.

    A safety net: a broker that loses messages (a Redis restart without persistence) must not
    leave jobs queued forever. Duplicate wake-ups are harmless; the claim drops them.
    """
    now = T.now_or(now)
    pending = sa.exists().where(OutboxMessage.job_id == Job.id, OutboxMessage.sent_at.is_(None))
    stmt = (
        sa.select(Job)
        .where(Job.status == JobStatus.QUEUED.value, Job.updated_at < older_than, ~pending)
        .order_by(Job.updated_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    jobs = list(session.scalars(stmt))
    for job in jobs:
        job.updated_at = now
        T.enqueue_wakeup(session, job, "redispatch", now)
    return [job.id for job in jobs]


def stale_resume_points(
    session: Session, *, finished_before: datetime, limit: int = 100
) -> list[uuid.UUID]:
    """Failed or canceled jobs that finished before `finished_before` and still hold a resume
    point (a recorded checkpoint or segment rows), oldest first."""
    has_segments = sa.exists().where(JobSegment.job_id == Job.id)
    stmt = (
        sa.select(Job.id)
        .where(
            Job.status.in_([JobStatus.FAILED.value, JobStatus.CANCELED.value]),
            Job.finished_at < finished_before,
            sa.or_(Job.last_checkpoint_clip > 0, has_segments),
        )
        .order_by(Job.finished_at)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def drop_resume_point(
    session: Session,
    job_id: uuid.UUID,
    *,
    finished_before: datetime,
    reason: str,
    now: datetime | None = None,
) -> bool:
    """Forget a failed or canceled job's checkpoint and segments: a retry renders it from clip
    0. The row stays locked until the caller's transaction ends, so the caller deletes the
    files before committing and a concurrent retry waits for both. False (and nothing done)
    when the job was retried meanwhile or holds no resume point."""
    now = T.now_or(now)
    job = T.lock(session, job_id)
    if (
        job is None
        or job.job_status not in (JobStatus.FAILED, JobStatus.CANCELED)
        or job.finished_at is None
        or job.finished_at >= finished_before
    ):
        return False
    segments = session.execute(sa.delete(JobSegment).where(JobSegment.job_id == job.id)).rowcount
    clip = job.last_checkpoint_clip or 0
    if clip == 0 and segments == 0:
        return False  # nothing was deleted
    job.last_checkpoint_clip = job.remote_checkpoint_clip = None
    job.local_checkpoint_clip = job.local_checkpoint_node = None
    job.updated_at = now
    T.append_event(
        session,
        job,
        "resume_point_dropped",
        reason,
        now,
        data={"checkpoint_clip": clip, "segments": segments},
    )
    return True


@dataclass(frozen=True)
class StoredJob:
    """What the storage reconciler needs to know of a job to tell its objects from garbage."""

    status: JobStatus
    remote_checkpoint_clip: int | None
    """The checkpoint the bucket must keep (the newest there)."""
    segment_keys: frozenset[str]


def stored_jobs(session: Session, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, StoredJob]:
    """The jobs among `job_ids` that have a row, with their recorded resume point."""
    if not job_ids:
        return {}
    rows = session.execute(
        sa.select(Job.id, Job.status, Job.remote_checkpoint_clip).where(Job.id.in_(job_ids))
    ).all()
    segments: dict[uuid.UUID, set[str]] = {}
    for job_id, key in session.execute(
        sa.select(JobSegment.job_id, JobSegment.key).where(JobSegment.job_id.in_(job_ids))
    ):
        segments.setdefault(job_id, set()).add(key)
    return {
        row.id: StoredJob(
            JobStatus(row.status),
            row.remote_checkpoint_clip,
            frozenset(segments.get(row.id, ())),
        )
        for row in rows
    }


def known_upload_keys(session: Session, keys: list[str]) -> set[str]:
    """The keys among `keys` that an upload row (of any tenant) names."""
    if not keys:
        return set()
    return set(session.scalars(sa.select(Upload.key).where(Upload.key.in_(keys))))


def local_checkpoints(
    session: Session, job_ids: list[uuid.UUID], node: str
) -> dict[uuid.UUID, int]:
    """Of these jobs, those whose newest local checkpoint the row places on `node`, and its
    clip (what a node's disk must keep; the rest of its local checkpoints is garbage)."""
    if not job_ids:
        return {}
    rows = session.execute(
        sa.select(Job.id, Job.local_checkpoint_clip).where(
            Job.id.in_(job_ids),
            Job.local_checkpoint_node == node,
            Job.local_checkpoint_clip.is_not(None),
            Job.status != JobStatus.SUCCEEDED.value,
        )
    )
    return {row.id: row.local_checkpoint_clip for row in rows}
