"""What the API does to jobs: create them, read them, list them and their events, cancel and
retry them. Every function runs inside the caller's transaction (`with db.transaction() as s:`),
so a caller can combine several (the API writes a job and its outbox row together).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db import transitions as T
from db.capabilities import topic_for
from db.models import Job, JobEvent, JobSegment, OutboxMessage
from db.params import JobParams
from db.states import LEASED, IllegalTransition, JobStatus
from db.transitions import JobNotFound

__all__ = [
    "JobNotFound",
    "NewJob",
    "create_job",
    "find_by_idempotency_key",
    "get_job",
    "list_events",
    "list_jobs",
    "list_segments",
    "new_job_rows",
    "request_cancel",
    "retry",
    "set_output_meta",
]


@dataclass(frozen=True)
class NewJob:
    id: uuid.UUID
    tenant: str
    params: JobParams
    image_key: str
    audio_key: str
    clips_total: int
    max_attempts: int
    priority: int = 0
    precision: str = "bf16"
    idempotency_key: str | None = None
    request_hash: str | None = None
    batch_id: uuid.UUID | None = None
    presenter_key: str | None = None
    """`db.params.presenter_key` of the job (None: no presenter affinity)."""
    presenter: str | None = None
    """The presenter's name, for people (the job's inputs and params are its own copies)."""


def new_job_rows(
    new: NewJob, now: datetime
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The rows that make a new queued job: the job, its `created` event, its wake-up."""
    job = {
        "id": new.id,
        "tenant": new.tenant,
        "status": JobStatus.QUEUED.value,
        "priority": new.priority,
        "params": new.params.model_dump(mode="json"),
        "image_key": new.image_key,
        "audio_key": new.audio_key,
        "clips_total": new.clips_total,
        "clips_done": 0,
        "frames_done": 0,
        "attempt": 0,
        "failed_attempts": 0,
        "max_attempts": new.max_attempts,
        "precision": new.precision,
        "cancel_requested": False,
        "idempotency_key": new.idempotency_key,
        "request_hash": new.request_hash,
        "batch_id": new.batch_id,
        "presenter_key": new.presenter_key,
        "presenter": new.presenter,
        "created_at": now,
        "updated_at": now,
    }
    created = {
        "job_id": new.id,
        "at": now,
        "event": "created",
        "to_status": JobStatus.QUEUED.value,
        "reason": "submitted",
        "attempt": 0,
    }
    wakeup = {
        "job_id": new.id,
        "topic": topic_for(new.precision),
        "reason": "created",
        "created_at": now,
        "publish_attempts": 0,
    }
    return job, created, wakeup


def create_job(session: Session, new: NewJob, *, now: datetime | None = None) -> Job:
    """Insert a queued job, its `created` event and its outbox row (one transaction: the caller's).

    Written with three plain INSERTs (the submission path's hot spot; a `created` event has no
    webhook to fan out to); the job comes back as written, not attached to the session.
    """
    job, created, wakeup = new_job_rows(new, T.now_or(now))
    session.execute(sa.insert(Job), [job])  # a duplicate idempotency key raises here
    session.execute(sa.insert(JobEvent), [created])
    session.execute(sa.insert(OutboxMessage), [wakeup])
    return Job(**job)


def get_job(session: Session, job_id: uuid.UUID, *, tenant: str | None = None) -> Job | None:
    stmt = sa.select(Job).where(Job.id == job_id)
    if tenant is not None:
        stmt = stmt.where(Job.tenant == tenant)
    return session.scalars(stmt).one_or_none()


def find_by_idempotency_key(session: Session, tenant: str, key: str) -> Job | None:
    stmt = sa.select(Job).where(Job.tenant == tenant, Job.idempotency_key == key)
    return session.scalars(stmt).one_or_none()


def list_jobs(
    session: Session,
    *,
    tenant: str | None = None,
    statuses: list[JobStatus] | None = None,
    before: tuple[datetime, uuid.UUID] | None = None,
    limit: int = 50,
    batch_id: uuid.UUID | None = None,
) -> list[Job]:
    """Newest first. `before` is the (created_at, id) of the last job of the previous page."""
    stmt = sa.select(Job)
    if tenant is not None:
        stmt = stmt.where(Job.tenant == tenant)
    if batch_id is not None:
        stmt = stmt.where(Job.batch_id == batch_id)
    if statuses:
        stmt = stmt.where(Job.status.in_([s.value for s in statuses]))
    if before is not None:
        created_at, job_id = before
        stmt = stmt.where(
            sa.or_(
                Job.created_at < created_at,
                sa.and_(Job.created_at == created_at, Job.id < job_id),
            )
        )
    stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    return list(session.scalars(stmt))


def list_events(
    session: Session, job_id: uuid.UUID, *, after_id: int | None = None, limit: int | None = None
) -> list[JobEvent]:
    """The job's events in order. Ids grow with every event of a job (its transactions hold
    the job's row lock), so `after_id` resumes a feed where it stopped."""
    stmt = sa.select(JobEvent).where(JobEvent.job_id == job_id)
    if after_id is not None:
        stmt = stmt.where(JobEvent.id > after_id)
    stmt = stmt.order_by(JobEvent.id)
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


def list_segments(session: Session, job_id: uuid.UUID) -> list[JobSegment]:
    stmt = sa.select(JobSegment).where(JobSegment.job_id == job_id).order_by(JobSegment.index)
    return list(session.scalars(stmt))


def request_cancel(
    session: Session,
    job_id: uuid.UUID,
    *,
    tenant: str | None = None,
    reason: str = "cancel requested",
    now: datetime | None = None,
) -> Job:
    """Cancel a queued job at once; flag a running one (its worker stops at the next clip).

    Canceling a canceled job is a no-op; a succeeded or failed job cannot be canceled.
    """
    now = T.now_or(now)
    job = T.lock_existing(session, job_id, tenant)
    status = job.job_status
    if status is JobStatus.CANCELED:
        return job
    if status is JobStatus.QUEUED:
        T.transition(session, job, JobStatus.CANCELED, event="canceled", reason=reason, now=now)
    elif status in LEASED:
        if not job.cancel_requested:
            job.cancel_requested = True
            job.updated_at = now
            T.append_event(session, job, "cancel_requested", reason, now, worker_id=job.worker_id)
    else:
        raise IllegalTransition(job.id, status, JobStatus.CANCELED, "cancel")
    return job


def retry(
    session: Session,
    job_id: uuid.UUID,
    *,
    attempts: int,
    tenant: str | None = None,
    reason: str = "retry requested",
    now: datetime | None = None,
) -> Job:
    """Queue a failed or canceled job again; it resumes from its last checkpoint.

    Attempt numbers keep counting (a stale worker of an old attempt can never match the new
    lease); `attempts` more failed attempts are allowed from here.
    """
    now = T.now_or(now)
    job = T.lock_existing(session, job_id, tenant)
    if job.job_status not in (JobStatus.FAILED, JobStatus.CANCELED):
        raise IllegalTransition(
            job.id,
            job.job_status,
            JobStatus.QUEUED,
            "retry",
            hint="only failed or canceled jobs can be retried",
        )
    if job.error_kind == "input":
        raise IllegalTransition(
            job.id,
            job.job_status,
            JobStatus.QUEUED,
            "retry",
            hint="it cannot render as submitted and would fail the same way; "
            "submit it again with other inputs",
        )
    resume = job.last_checkpoint_clip
    T.transition(
        session,
        job,
        JobStatus.QUEUED,
        event="retried",
        reason=f"{reason}; resuming from clip {resume or 0}",
        now=now,
    )
    job.max_attempts = job.failed_attempts + attempts
    T.record_failure(job, None)
    job.cancel_requested = False
    T.enqueue_wakeup(session, job, "retry", now)
    return job


def set_output_meta(session: Session, job_id: uuid.UUID, output: Mapping[str, Any]) -> None:
    """Store what was measured about a succeeded job's output."""
    session.execute(
        sa.update(Job)
        .where(Job.id == job_id)
        .values(output_meta=dict(output))
        .execution_options(synchronize_session=False)
    )
