"""The state machine's writes, shared by the API's, the workers' and the upkeep's functions.

Every status change goes through `transition`, which checks the table in `db.states` and
appends a `job_events` row (fanned out to webhooks in the same transaction). A job row is
changed only under its row lock (`lock`), so the events of one job are ordered by id.

Times come from the application clock in UTC; pass `now` to control it in tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db import webhooks
from db.capabilities import topic_for
from db.failures import Failure
from db.models import Job, JobEvent, OutboxMessage, utcnow
from db.states import LEASED, TERMINAL, JobStatus, check_transition


class JobNotFound(LookupError):
    def __init__(self, job_id: uuid.UUID):
        self.job_id = job_id
        super().__init__(f"job {job_id} does not exist")


def now_or(now: datetime | None) -> datetime:
    return now if now is not None else utcnow()


def lock(session: Session, job_id: uuid.UUID, *, skip_locked: bool = False) -> Job | None:
    stmt = (
        sa.select(Job)
        .where(Job.id == job_id)
        .with_for_update(skip_locked=skip_locked)
        .execution_options(populate_existing=True)
    )
    return session.scalars(stmt).one_or_none()


def lock_existing(session: Session, job_id: uuid.UUID, tenant: str | None) -> Job:
    job = lock(session, job_id)
    if job is None or (tenant is not None and job.tenant != tenant):
        raise JobNotFound(job_id)
    return job


def append_event(
    session: Session,
    job: Job,
    event: str,
    reason: str,
    now: datetime,
    *,
    from_status: JobStatus | None = None,
    to_status: JobStatus | None = None,
    worker_id: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> JobEvent:
    row = JobEvent(
        job_id=job.id,
        at=now,
        event=event,
        from_status=from_status.value if from_status else None,
        to_status=to_status.value if to_status else None,
        reason=reason,
        worker_id=worker_id,
        attempt=job.attempt,
        data=dict(data) if data is not None else None,
    )
    session.add(row)
    webhooks.fan_out(session, job, row)  # deliveries commit (or roll back) with the event
    return row


def enqueue_wakeup(
    session: Session, job: Job, reason: str, now: datetime, *, prefer_local_s: float = 0.0
) -> None:
    """The job's wake-up. When its newest checkpoint is local to a node (newer than the
    bucket's) and `prefer_local_s` > 0, that node's workers alone are woken first and may take
    it for that long; everyone is woken when the time is up."""
    local = job.local_checkpoint_clip or 0
    if (
        prefer_local_s > 0
        and job.local_checkpoint_node
        and local > (job.remote_checkpoint_clip or 0)
    ):
        job.preferred_until = now + timedelta(seconds=prefer_local_s)
        node_topic = topic_for(job.precision, job.local_checkpoint_node)
        session.add(OutboxMessage(job_id=job.id, topic=node_topic, reason=reason, created_at=now))
        available_at: datetime | None = job.preferred_until
    else:
        job.preferred_until = None
        available_at = None
    session.add(
        OutboxMessage(
            job_id=job.id,
            topic=topic_for(job.precision),
            reason=reason,
            created_at=now,
            available_at=available_at,
        )
    )


def transition(
    session: Session,
    job: Job,
    target: JobStatus,
    *,
    event: str,
    reason: str,
    now: datetime,
    worker_id: str | None = None,
    action: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> None:
    current = job.job_status
    check_transition(job.id, current, target, action or event)
    job.status = target.value
    job.updated_at = now
    if target not in LEASED:
        job.worker_id = None
        job.lease_expires_at = None
    if target is JobStatus.QUEUED:
        # The next attempt resumes from the last checkpoint; later progress is lost.
        job.clips_done = job.last_checkpoint_clip or 0
        job.frames_done = job.job_params.frames_for(job.clips_done, job.clips_total)
        job.fps = None
        job.eta_s = None
        job.finished_at = None
    if target in TERMINAL:
        job.finished_at = now
        job.eta_s = None
    append_event(
        session,
        job,
        event,
        reason,
        now,
        from_status=current,
        to_status=target,
        worker_id=worker_id,
        data=data,
    )


def expire_lease(
    session: Session, job: Job, now: datetime, *, enqueue: bool, prefer_local_s: float = 0.0
) -> JobStatus:
    """A leased job whose worker stopped heartbeating: requeue, fail or finish its cancel.

    A lost worker counts as a failed attempt (it may be the job that kills its workers)."""
    worker, attempt = job.worker_id, job.attempt
    expired = job.lease_expires_at.isoformat() if job.lease_expires_at else "?"
    lost = f"lease of worker {worker} (attempt {attempt}) expired at {expired}"
    if job.cancel_requested:
        transition(
            session,
            job,
            JobStatus.CANCELED,
            event="canceled",
            reason=f"{lost} with a cancel pending",
            now=now,
            worker_id=worker,
        )
        return job.job_status
    job.failed_attempts += 1
    if job.failed_attempts >= job.max_attempts:
        failure = Failure(
            f"no attempts left: {job.failed_attempts} of {job.max_attempts} failed, the last "
            "because its worker stopped responding; a retry resumes from the last checkpoint "
            "once the workers are healthy",
            "infrastructure",
            lost,
        )
        record_failure(job, failure)
        transition(
            session,
            job,
            JobStatus.FAILED,
            event="failed",
            reason=failure.message,
            now=now,
            worker_id=worker,
            data={"kind": failure.kind, "detail": failure.detail},
        )
    else:
        transition(
            session,
            job,
            JobStatus.QUEUED,
            event="lease_expired",
            reason=f"{lost} ({job.failed_attempts} of {job.max_attempts} attempts failed)",
            now=now,
            worker_id=worker,
        )
        if enqueue:
            enqueue_wakeup(session, job, "lease_expired", now, prefer_local_s=prefer_local_s)
    return job.job_status


def record_failure(job: Job, failure: Failure | None) -> None:
    """Set (or, with None, clear) the job's description of its failure."""
    job.error = failure.message if failure else None
    job.error_kind = failure.kind if failure else None
    job.error_detail = failure.detail if failure else None
