"""Repository functions: the job state machine and the queries the API and workers need.

Every function runs inside the caller's transaction (`with db.transaction() as s: ...`), so a
caller can combine several (the API writes a job and its outbox row together). Functions that
change status go through `_transition`, which checks the table in `db.states` and appends a
`job_events` row. Functions a worker calls while rendering take `(job_id, worker_id, attempt)`
and act only while that worker still holds that attempt's lease: a worker that lost its lease
(and whose job may already run elsewhere) cannot overwrite anything.

Events are the system's history and its feed: the SSE stream, webhooks and the render metrics
all read `job_events`. Progress events are appended at a bounded rate per job (see
`update_progress`), so a worker can report after every clip without flooding them.

Times come from the application clock in UTC; pass `now` to control it in tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db import webhooks
from db.models import Job, JobEvent, JobSegment, OutboxMessage, utcnow
from db.states import LEASED, TERMINAL, IllegalTransition, JobStatus, check_transition

RENDER_TOPIC = "render"
PROGRESS_EVENT_INTERVAL_S = 1.0
"""At most one `progress` event per job this often (the job row always has the latest)."""


class JobNotFound(LookupError):
    def __init__(self, job_id: uuid.UUID):
        self.job_id = job_id
        super().__init__(f"job {job_id} does not exist")


class LeaseLost(Exception):
    """The caller no longer holds the job's lease (expired and reaped, or another attempt)."""

    def __init__(self, job_id: uuid.UUID, worker_id: str, attempt: int):
        self.job_id = job_id
        super().__init__(
            f"worker {worker_id} no longer holds the lease of job {job_id} (attempt {attempt})"
        )


@dataclass(frozen=True)
class Lease:
    """A worker's right to run one attempt of a job until `expires_at` (extended by heartbeats)."""

    job_id: uuid.UUID
    worker_id: str
    attempt: int
    expires_at: datetime
    resume_from_clip: int | None
    """The last checkpoint clip: render from here (None: from the start)."""


@dataclass(frozen=True)
class NewJob:
    id: uuid.UUID
    tenant: str
    params: dict[str, Any]
    image_key: str
    audio_key: str
    clips_total: int
    max_attempts: int
    priority: int = 0
    idempotency_key: str | None = None
    request_hash: str | None = None
    batch_id: uuid.UUID | None = None


@dataclass(frozen=True)
class SegmentRecord:
    index: int
    key: str
    first_clip: int
    clips: int
    frames: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ReapedJob:
    job_id: uuid.UUID
    status: JobStatus
    """Where the job went: queued, failed (attempts exhausted) or canceled (cancel pending)."""


# --------------------------------------------------------------------------- helpers


def _now(now: datetime | None) -> datetime:
    return now if now is not None else utcnow()


def _lock(session: Session, job_id: uuid.UUID, *, skip_locked: bool = False) -> Job | None:
    stmt = (
        sa.select(Job)
        .where(Job.id == job_id)
        .with_for_update(skip_locked=skip_locked)
        .execution_options(populate_existing=True)
    )
    return session.scalars(stmt).one_or_none()


def _lock_existing(session: Session, job_id: uuid.UUID, tenant: str | None) -> Job:
    job = _lock(session, job_id)
    if job is None or (tenant is not None and job.tenant != tenant):
        raise JobNotFound(job_id)
    return job


def _lock_owned(session: Session, job_id: uuid.UUID, worker_id: str, attempt: int) -> Job:
    job = _lock(session, job_id)
    if (
        job is None
        or job.job_status not in LEASED
        or job.worker_id != worker_id
        or job.attempt != attempt
    ):
        raise LeaseLost(job_id, worker_id, attempt)
    return job


def _owned_filter(job_id: uuid.UUID, worker_id: str, attempt: int) -> list[sa.ColumnElement[bool]]:
    return [
        Job.id == job_id,
        Job.worker_id == worker_id,
        Job.attempt == attempt,
        Job.status.in_([s.value for s in LEASED]),
    ]


def _event(
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


def _enqueue(session: Session, job: Job, reason: str, now: datetime) -> None:
    session.add(OutboxMessage(job_id=job.id, topic=RENDER_TOPIC, reason=reason, created_at=now))


def _transition(
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
        job.frames_done = job.clips_done * int(job.params.get("infer_frames", 0))
        job.fps = None
        job.eta_s = None
        job.finished_at = None
    if target in TERMINAL:
        job.finished_at = now
        job.eta_s = None
    _event(
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


def _take(session: Session, job: Job, worker_id: str, lease_s: float, now: datetime) -> Lease:
    job.attempt += 1
    _transition(
        session,
        job,
        JobStatus.RUNNING,
        event="claimed",
        reason=f"claimed by {worker_id} (attempt {job.attempt} of {job.max_attempts})",
        now=now,
        worker_id=worker_id,
        action="claim",
    )
    job.worker_id = worker_id
    job.lease_expires_at = now + timedelta(seconds=lease_s)
    job.heartbeat_at = now
    if job.started_at is None:
        job.started_at = now
    return Lease(job.id, worker_id, job.attempt, job.lease_expires_at, job.last_checkpoint_clip)


def _expire_lease(session: Session, job: Job, now: datetime, *, enqueue: bool) -> JobStatus:
    """A leased job whose worker stopped heartbeating: requeue, fail or finish its cancel."""
    worker, attempt = job.worker_id, job.attempt
    expired = job.lease_expires_at.isoformat() if job.lease_expires_at else "?"
    lost = f"lease of worker {worker} (attempt {attempt}) expired at {expired}"
    if job.cancel_requested:
        _transition(
            session,
            job,
            JobStatus.CANCELED,
            event="canceled",
            reason=f"{lost} with a cancel pending",
            now=now,
            worker_id=worker,
        )
    elif attempt >= job.max_attempts:
        job.error = f"{lost}; no attempts left ({attempt} of {job.max_attempts} used)"
        _transition(
            session,
            job,
            JobStatus.FAILED,
            event="failed",
            reason=job.error,
            now=now,
            worker_id=worker,
        )
    else:
        _transition(
            session,
            job,
            JobStatus.QUEUED,
            event="lease_expired",
            reason=lost,
            now=now,
            worker_id=worker,
        )
        if enqueue:
            _enqueue(session, job, "lease_expired", now)
    return job.job_status


# --------------------------------------------------------------------------- API side


def create_job(session: Session, new: NewJob, *, now: datetime | None = None) -> Job:
    """Insert a queued job, its `created` event and its outbox row (one transaction: the caller's).

    Written with three plain INSERTs (the submission path's hot spot; a `created` event has no
    webhook to fan out to); the job comes back as written, not attached to the session.
    """
    now = _now(now)
    row = {
        "id": new.id,
        "tenant": new.tenant,
        "status": JobStatus.QUEUED.value,
        "priority": new.priority,
        "params": new.params,
        "image_key": new.image_key,
        "audio_key": new.audio_key,
        "clips_total": new.clips_total,
        "clips_done": 0,
        "frames_done": 0,
        "attempt": 0,
        "max_attempts": new.max_attempts,
        "cancel_requested": False,
        "idempotency_key": new.idempotency_key,
        "request_hash": new.request_hash,
        "batch_id": new.batch_id,
        "created_at": now,
        "updated_at": now,
    }
    session.execute(sa.insert(Job), [row])  # a duplicate idempotency key raises here
    created = {
        "job_id": new.id,
        "at": now,
        "event": "created",
        "to_status": JobStatus.QUEUED.value,
        "reason": "submitted",
        "attempt": 0,
    }
    session.execute(sa.insert(JobEvent), [created])
    wakeup = {
        "job_id": new.id,
        "topic": RENDER_TOPIC,
        "reason": "created",
        "created_at": now,
        "publish_attempts": 0,
    }
    session.execute(sa.insert(OutboxMessage), [wakeup])
    return Job(**row)


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
    now = _now(now)
    job = _lock_existing(session, job_id, tenant)
    status = job.job_status
    if status is JobStatus.CANCELED:
        return job
    if status is JobStatus.QUEUED:
        _transition(session, job, JobStatus.CANCELED, event="canceled", reason=reason, now=now)
    elif status in LEASED:
        if not job.cancel_requested:
            job.cancel_requested = True
            job.updated_at = now
            _event(session, job, "cancel_requested", reason, now, worker_id=job.worker_id)
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
    lease); `attempts` more are allowed from here.
    """
    now = _now(now)
    job = _lock_existing(session, job_id, tenant)
    if job.job_status not in (JobStatus.FAILED, JobStatus.CANCELED):
        raise IllegalTransition(
            job.id,
            job.job_status,
            JobStatus.QUEUED,
            "retry",
            hint="only failed or canceled jobs can be retried",
        )
    resume = job.last_checkpoint_clip
    _transition(
        session,
        job,
        JobStatus.QUEUED,
        event="retried",
        reason=f"{reason}; resuming from clip {resume or 0}",
        now=now,
    )
    job.max_attempts = job.attempt + attempts
    job.error = None
    job.cancel_requested = False
    _enqueue(session, job, "retry", now)
    return job


# --------------------------------------------------------------------------- worker side


def claim(
    session: Session,
    job_id: uuid.UUID,
    worker_id: str,
    lease_s: float,
    *,
    now: datetime | None = None,
) -> Lease | None:
    """Take the lease of one job (what a worker does on a wake-up message).

    None when the job is final, unknown, or leased to someone whose lease is alive: that
    message was a duplicate and is dropped. A leased job whose lease expired but was not yet
    reaped is taken over (or failed when it has no attempts left).
    """
    now = _now(now)
    job = _lock(session, job_id)  # waits for a concurrent claimer, then sees its result
    if job is None or job.job_status in TERMINAL:
        return None
    if job.job_status in LEASED:
        if job.lease_expires_at is not None and job.lease_expires_at > now:
            return None
        if _expire_lease(session, job, now, enqueue=False) is not JobStatus.QUEUED:
            return None
    return _take(session, job, worker_id, lease_s, now)


def claim_next(
    session: Session,
    worker_id: str,
    lease_s: float,
    *,
    tenant: str | None = None,
    now: datetime | None = None,
) -> Lease | None:
    """Take the best queued job: highest priority; among equals, the tenant with the fewest
    running jobs (fair share: one tenant's bulk upload cannot starve another's single job);
    then the oldest. Concurrent callers each get a different job (`FOR UPDATE SKIP LOCKED`;
    on SQLite the transaction is serialised). `tenant` restricts the choice to one tenant.
    """
    now = _now(now)
    candidates = [] if tenant is not None else _fair_share_candidates(session)
    for job_id in candidates:
        job = session.scalars(
            sa.select(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
            .with_for_update(skip_locked=True)
            .execution_options(populate_existing=True)
        ).one_or_none()
        if job is not None:
            return _take(session, job, worker_id, lease_s, now)
    # one tenant only, or every candidate was just taken by concurrent claimers
    stmt = sa.select(Job).where(Job.status == JobStatus.QUEUED.value)
    if tenant is not None:
        stmt = stmt.where(Job.tenant == tenant)
    stmt = (
        stmt.order_by(Job.priority.desc(), Job.created_at, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    job = session.scalars(stmt).one_or_none()
    if job is None:
        return None
    return _take(session, job, worker_id, lease_s, now)


def claim_for_wakeup(
    session: Session,
    job_id: uuid.UUID,
    worker_id: str,
    lease_s: float,
    *,
    now: datetime | None = None,
) -> Lease | None:
    """What a worker does with a wake-up message so that priorities and fair share hold:
    a message says that work exists, not which work comes first. Takes the best queued job
    (`claim_next`); when none is queued, falls back to `claim(job_id)`, which takes over the
    woken job if its lease expired unreaped. Every queued job has a wake-up of its own, so
    each still runs, in priority order; one taken early leaves its own message with nothing
    to do (dropped, like any duplicate)."""
    lease = claim_next(session, worker_id, lease_s, now=now)
    if lease is not None:
        return lease
    return claim(session, job_id, worker_id, lease_s, now=now)


# Each tenant with queued jobs (found by skipping through the ix_jobs_fair index, one probe per
# tenant), its best queued job and its running count; best first. Costs one index probe per
# tenant, however many jobs are queued.
_FAIR_SHARE = sa.text(
    """
    WITH RECURSIVE queued_tenants(tenant) AS (
        SELECT (SELECT min(tenant) FROM jobs WHERE status = 'queued')
        UNION ALL
        SELECT (SELECT min(j.tenant) FROM jobs j WHERE j.status = 'queued' AND j.tenant > q.tenant)
        FROM queued_tenants q WHERE q.tenant IS NOT NULL
    ),
    best AS (
        SELECT
            (SELECT b.id FROM jobs b WHERE b.status = 'queued' AND b.tenant = q.tenant
             ORDER BY b.priority DESC, b.created_at, b.id LIMIT 1) AS job_id,
            (SELECT count(*) FROM jobs r WHERE r.status IN ('running', 'stitching')
             AND r.tenant = q.tenant) AS running
        FROM queued_tenants q WHERE q.tenant IS NOT NULL
    )
    SELECT jobs.id FROM best JOIN jobs ON jobs.id = best.job_id
    ORDER BY jobs.priority DESC, best.running, jobs.created_at, jobs.id
    LIMIT 16
    """
).columns(id=sa.Uuid)


def _fair_share_candidates(session: Session) -> list[uuid.UUID]:
    return list(session.scalars(_FAIR_SHARE))


def heartbeat(
    session: Session,
    job_id: uuid.UUID,
    worker_id: str,
    attempt: int,
    lease_s: float,
    *,
    now: datetime | None = None,
) -> bool:
    """Extend the lease. False: the lease is lost and the worker must stop (without writing)."""
    now = _now(now)
    result = session.execute(
        sa.update(Job)
        .where(*_owned_filter(job_id, worker_id, attempt))
        .values(lease_expires_at=now + timedelta(seconds=lease_s), heartbeat_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def is_cancel_requested(session: Session, job_id: uuid.UUID) -> bool:
    return bool(session.scalar(sa.select(Job.cancel_requested).where(Job.id == job_id)))


def update_progress(
    session: Session,
    job_id: uuid.UUID,
    worker_id: str,
    attempt: int,
    *,
    clips_done: int,
    frames_done: int,
    fps: float | None = None,
    eta_s: float | None = None,
    clip_s: float | None = None,
    now: datetime | None = None,
) -> bool:
    """Record progress; False when the lease is lost (nothing is written then).

    `clip_s` is how long the last clip took. A `progress` event is appended when the clip
    count changed and the job's previous one is at least PROGRESS_EVENT_INTERVAL_S old (the
    last clip and a new attempt always get one).
    """
    now = _now(now)
    try:
        job = _lock_owned(session, job_id, worker_id, attempt)
    except LeaseLost:
        return False
    job.clips_done = clips_done
    job.frames_done = frames_done
    job.fps = fps
    job.eta_s = eta_s
    job.updated_at = now
    last = session.execute(
        sa.select(JobEvent.at, JobEvent.attempt, JobEvent.data)
        .where(JobEvent.job_id == job_id, JobEvent.event == "progress")
        .order_by(JobEvent.id.desc())
        .limit(1)
    ).one_or_none()
    due = (
        last is None
        or last.attempt != attempt
        or (
            (last.data or {}).get("clips_done") != clips_done
            and (
                (now - last.at).total_seconds() >= PROGRESS_EVENT_INTERVAL_S
                or clips_done >= job.clips_total
            )
        )
    )
    if due:
        infer_frames = int(job.params.get("infer_frames", 0))
        data = {
            "clips_done": clips_done,
            "clips_total": job.clips_total,
            "frames_done": frames_done,
            "frames_total": job.clips_total * infer_frames,
            "fps": fps,
            "eta_s": eta_s,
            "clip_s": clip_s,
        }
        reason = f"clip {clips_done} of {job.clips_total}"
        _event(session, job, "progress", reason, now, worker_id=worker_id, data=data)
    return True


def record_checkpoint(
    session: Session,
    job_id: uuid.UUID,
    worker_id: str,
    attempt: int,
    clip: int,
    *,
    duration_s: float | None = None,
    bytes: int | None = None,
    now: datetime | None = None,
) -> bool:
    """The checkpoint after `clip` clips is complete (its manifest exists): resume from here.

    `duration_s` (what writing it cost the render) and `bytes` (its size) feed the metrics.
    """
    if clip < 0:
        raise ValueError(f"checkpoint clip must be >= 0, got {clip}")
    now = _now(now)
    try:
        job = _lock_owned(session, job_id, worker_id, attempt)
    except LeaseLost:
        return False
    job.last_checkpoint_clip = clip
    job.updated_at = now
    data = {"clip": clip, "duration_s": duration_s, "bytes": bytes}
    _event(
        session,
        job,
        "checkpoint",
        f"checkpoint at clip {clip}",
        now,
        worker_id=worker_id,
        data=data,
    )
    return True


def record_segment(
    session: Session,
    job_id: uuid.UUID,
    worker_id: str,
    attempt: int,
    segment: SegmentRecord,
    *,
    now: datetime | None = None,
) -> bool:
    """Insert or replace the record of one uploaded segment (a resumed interval replaces it)."""
    now = _now(now)
    try:
        job = _lock_owned(session, job_id, worker_id, attempt)
    except LeaseLost:
        return False
    row = session.get(JobSegment, (job.id, segment.index))
    if row is None:
        row = JobSegment(job_id=job.id, index=segment.index)
        session.add(row)
    row.key = segment.key
    row.first_clip = segment.first_clip
    row.clips = segment.clips
    row.frames = segment.frames
    row.bytes = segment.bytes
    row.sha256 = segment.sha256
    row.attempt = attempt
    row.created_at = now
    data = {
        "index": segment.index,
        "key": segment.key,
        "first_clip": segment.first_clip,
        "clips": segment.clips,
        "frames": segment.frames,
        "bytes": segment.bytes,
        "sha256": segment.sha256,
    }
    reason = f"segment {segment.index} uploaded ({segment.clips} clips)"
    _event(session, job, "segment", reason, now, worker_id=worker_id, data=data)
    return True


def list_segments(session: Session, job_id: uuid.UUID) -> list[JobSegment]:
    stmt = sa.select(JobSegment).where(JobSegment.job_id == job_id).order_by(JobSegment.index)
    return list(session.scalars(stmt))


def release(
    session: Session,
    job_id: uuid.UUID,
    worker_id: str,
    attempt: int,
    *,
    reason: str = "worker shutting down",
    now: datetime | None = None,
) -> Job:
    """Give the job back (e.g. on SIGTERM after a checkpoint): running -> queued, re-enqueued."""
    now = _now(now)
    job = _lock_owned(session, job_id, worker_id, attempt)
    _transition(
        session,
        job,
        JobStatus.QUEUED,
        event="released",
        reason=reason,
        now=now,
        worker_id=worker_id,
    )
    _enqueue(session, job, "released", now)
    return job


def reap_expired(
    session: Session, *, now: datetime | None = None, limit: int = 100
) -> list[ReapedJob]:
    """Return jobs whose lease expired to the queue (or fail them when out of attempts)."""
    now = _now(now)
    stmt = (
        sa.select(Job)
        .where(Job.status.in_([s.value for s in LEASED]), Job.lease_expires_at < now)
        .order_by(Job.lease_expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    return [
        ReapedJob(job.id, _expire_lease(session, job, now, enqueue=True))
        for job in session.scalars(stmt).all()
    ]


def redispatch_stale(
    session: Session, *, older_than: datetime, limit: int = 100, now: datetime | None = None
) -> list[uuid.UUID]:
    """Send a new wake-up for queued jobs untouched since `older_than` that have none pending.

    A safety net: a broker that loses messages (a Redis restart without persistence) must not
    leave jobs queued forever. Duplicate wake-ups are harmless; the claim drops them.
    """
    now = _now(now)
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
        _enqueue(session, job, "redispatch", now)
    return [job.id for job in jobs]


def mark_stitching(
    session: Session,
    job_id: uuid.UUID,
    worker_id: str,
    attempt: int,
    *,
    now: datetime | None = None,
) -> Job:
    now = _now(now)
    job = _lock_owned(session, job_id, worker_id, attempt)
    _transition(
        session,
        job,
        JobStatus.STITCHING,
        event="stitching",
        reason=f"all {job.clips_total} clips rendered",
        now=now,
        worker_id=worker_id,
    )
    return job


def mark_succeeded(
    session: Session,
    job_id: uuid.UUID,
    worker_id: str,
    attempt: int,
    output_key: str,
    *,
    output: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> Job:
    """The output is stored. `output` describes it: {"bytes", "sha256", "frames",
    "duration_s"} (the API measures what is missing on the first request for the result)."""
    now = _now(now)
    job = _lock_owned(session, job_id, worker_id, attempt)
    job.output_key = output_key
    job.output_meta = dict(output) if output is not None else None
    job.error = None
    _transition(
        session,
        job,
        JobStatus.SUCCEEDED,
        event="succeeded",
        reason=f"output stored at {output_key}",
        now=now,
        worker_id=worker_id,
        data={"output_key": output_key, **(output or {})},
    )
    return job


def set_output_meta(session: Session, job_id: uuid.UUID, output: Mapping[str, Any]) -> None:
    """Store what was measured about a succeeded job's output."""
    session.execute(
        sa.update(Job)
        .where(Job.id == job_id)
        .values(output_meta=dict(output))
        .execution_options(synchronize_session=False)
    )


def mark_failed(
    session: Session,
    job_id: uuid.UUID,
    worker_id: str,
    attempt: int,
    error: str,
    *,
    retryable: bool = False,
    now: datetime | None = None,
) -> Job:
    """Record an error. A retryable one requeues the job while attempts remain."""
    now = _now(now)
    job = _lock_owned(session, job_id, worker_id, attempt)
    job.error = error
    if retryable and job.attempt < job.max_attempts:
        _transition(
            session,
            job,
            JobStatus.QUEUED,
            event="retry_scheduled",
            reason=f"attempt {attempt} of {job.max_attempts} failed: {error}",
            now=now,
            worker_id=worker_id,
        )
        _enqueue(session, job, "retry", now)
    else:
        _transition(
            session,
            job,
            JobStatus.FAILED,
            event="failed",
            reason=error,
            now=now,
            worker_id=worker_id,
        )
    return job


def mark_canceled(
    session: Session,
    job_id: uuid.UUID,
    worker_id: str,
    attempt: int,
    *,
    reason: str = "canceled by its worker after a cancel request",
    now: datetime | None = None,
) -> Job:
    now = _now(now)
    job = _lock_owned(session, job_id, worker_id, attempt)
    _transition(
        session,
        job,
        JobStatus.CANCELED,
        event="canceled",
        reason=reason,
        now=now,
        worker_id=worker_id,
    )
    return job


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
    now = _now(now)
    job = _lock(session, job_id)
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
    job.last_checkpoint_clip = None
    job.updated_at = now
    _event(
        session,
        job,
        "resume_point_dropped",
        reason,
        now,
        data={"checkpoint_clip": clip, "segments": segments},
    )
    return True
