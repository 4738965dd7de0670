"""What a worker does to a job: take its lease, then, while holding it, heartbeat, record
progress, segments and checkpoints, and end the attempt (stitching, succeeded, failed,
canceled, released).

A `Lease` names one attempt of one job. Every write below is checked against it in one place
(`_held`): the job must still be leased to that worker for that attempt, else `LeaseLost` and
nothing is written. A worker that lost its lease (expired and reaped, its job perhaps running
elsewhere) cannot overwrite anything. The worker holds its lease through one handle,
`worker.lease.LeasedJob`, which runs these functions in transactions of their own.

Every function runs inside the caller's transaction. Progress events are appended at a bounded
rate per job (see `update_progress`), so a worker can report after every clip without flooding
the event feed.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db import transitions as T
from db.capabilities import Capabilities
from db.failures import Failure
from db.models import Job, JobEvent, JobSegment, UTCDateTime
from db.segments import Segment
from db.states import LEASED, TERMINAL, JobStatus

ANY_DEFAULT = Capabilities()
"""A worker that serves only the default precision."""

PROGRESS_EVENT_INTERVAL_S = 1.0
"""At most one `progress` event per job this often (the job row always has the latest)."""


Tier = Literal["local", "remote"]
"""Where a checkpoint is: a node's own disk, or the bucket."""


@dataclass(frozen=True)
class Checkpoints:
    """A job's newest checkpoint in each tier, as the claim found them."""

    local_clip: int | None = None
    local_node: str | None = None
    remote_clip: int | None = None

    @property
    def newest(self) -> int:
        return max(self.local_clip or 0, self.remote_clip or 0)


@dataclass(frozen=True)
class Lease:
    """A worker's right to run one attempt of a job until `expires_at` (extended by heartbeats)."""

    job_id: uuid.UUID
    worker_id: str
    attempt: int
    expires_at: datetime
    checkpoints: Checkpoints = Checkpoints()
    """Where the job's resume points are: render from the newest this worker can reach."""


class LeaseLost(Exception):
    """The caller no longer holds the job's lease (expired and reaped, or another attempt)."""

    def __init__(self, lease: Lease):
        self.lease = lease
        self.job_id = lease.job_id
        super().__init__(
            f"worker {lease.worker_id} no longer holds the lease of job {lease.job_id} "
            f"(attempt {lease.attempt})"
        )


# --------------------------------------------------------------------------- the lease itself


def _held(session: Session, lease: Lease) -> Job:
    """The job, locked, while `lease` holds it; LeaseLost otherwise. Every write goes here."""
    job = T.lock(session, lease.job_id)
    if (
        job is None
        or job.job_status not in LEASED
        or job.worker_id != lease.worker_id
        or job.attempt != lease.attempt
    ):
        raise LeaseLost(lease)
    return job


def _take(session: Session, job: Job, worker_id: str, lease_s: float, now: datetime) -> Lease:
    job.attempt += 1
    T.transition(
        session,
        job,
        JobStatus.RUNNING,
        event="claimed",
        reason=f"claimed by {worker_id} (attempt {job.attempt}; "
        f"{job.failed_attempts} of {job.max_attempts} failed so far)",
        now=now,
        worker_id=worker_id,
        action="claim",
    )
    job.worker_id = worker_id
    job.lease_expires_at = now + timedelta(seconds=lease_s)
    job.heartbeat_at = now
    if job.started_at is None:
        job.started_at = now
    checkpoints = Checkpoints(
        job.local_checkpoint_clip, job.local_checkpoint_node, job.remote_checkpoint_clip
    )
    return Lease(job.id, worker_id, job.attempt, job.lease_expires_at, checkpoints)


# --------------------------------------------------------------------------- claiming


def claim(
    session: Session,
    job_id: uuid.UUID,
    worker_id: str,
    lease_s: float,
    *,
    serves: Capabilities = ANY_DEFAULT,
    now: datetime | None = None,
) -> Lease | None:
    """Take the lease of one job (what a worker does on a wake-up message).

    None when the job is final, unknown, needs what this worker does not serve, or is leased
    to someone whose lease is alive: that message was a duplicate and is dropped. A leased job
    whose lease expired but was not yet reaped is taken over (or failed when it has no
    attempts left).
    """
    now = T.now_or(now)
    job = T.lock(session, job_id)  # waits for a concurrent claimer, then sees its result
    if job is None or job.job_status in TERMINAL or not serves.serves(job, now):
        return None
    if job.job_status in LEASED:
        if job.lease_expires_at is not None and job.lease_expires_at > now:
            return None
        if T.expire_lease(session, job, now, enqueue=False) is not JobStatus.QUEUED:
            return None
    return _take(session, job, worker_id, lease_s, now)


def claim_next(
    session: Session,
    worker_id: str,
    lease_s: float,
    *,
    serves: Capabilities = ANY_DEFAULT,
    tenant: str | None = None,
    cached: Collection[str] = (),
    now: datetime | None = None,
) -> Lease | None:
    """Take the best queued job: highest priority; among equals, the tenant with the fewest
    running jobs (fair share: one tenant's bulk upload cannot starve another's single job);
    among equals again, a job whose presenter the worker holds (`cached`: presenter keys,
    `jobs.presenter_key`: it opens in a fraction of the time); then the oldest. Concurrent
    callers each get a different job (`FOR UPDATE SKIP LOCKED`; on SQLite the transaction is
    serialised). Only jobs the worker `serves` are considered; `tenant` restricts the choice
    to one tenant (by priority and age alone).
    """
    now = T.now_or(now)
    candidates = [] if tenant is not None else _fair_share_candidates(session, serves, now, cached)
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
    stmt = sa.select(Job).where(Job.status == JobStatus.QUEUED.value, serves.claimable(now))
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
    serves: Capabilities = ANY_DEFAULT,
    cached: Collection[str] = (),
    now: datetime | None = None,
) -> Lease | None:
    """What a worker does with a wake-up message so that priorities and fair share hold:
    a message says that work exists, not which work comes first. Takes the best queued job
    (`claim_next`); when none is queued, falls back to `claim(job_id)`, which takes over the
    woken job if its lease expired unreaped. Every queued job has a wake-up of its own, so
    each still runs, in priority order; one taken early leaves its own message with nothing
    to do (dropped, like any duplicate)."""
    lease = claim_next(session, worker_id, lease_s, serves=serves, cached=cached, now=now)
    if lease is not None:
        return lease
    return claim(session, job_id, worker_id, lease_s, serves=serves, now=now)


# Each tenant with queued jobs this worker can take (found by skipping through the
# ix_jobs_fair index, one probe per tenant), its best such job and its running count; best
# first. Costs one index probe per tenant, however many jobs are queued. A job this worker can
# take: of a precision it serves, and not reserved for another node's workers right now.
_TAKEABLE = """
    precision IN :precisions
    AND (preferred_until IS NULL OR preferred_until <= :now OR local_checkpoint_node = :node)
"""
_QUEUED_TENANTS = f"""
    queued_tenants(tenant) AS (
        SELECT (SELECT min(tenant) FROM jobs WHERE status = 'queued' AND {_TAKEABLE})
        UNION ALL
        SELECT (SELECT min(tenant) FROM jobs
                WHERE status = 'queued' AND {_TAKEABLE} AND tenant > q.tenant)
        FROM queued_tenants q WHERE q.tenant IS NOT NULL
    ),
    best AS (
        SELECT
            q.tenant AS tenant,
            (SELECT b.id FROM jobs b
             WHERE b.status = 'queued' AND {_TAKEABLE} AND b.tenant = q.tenant
             ORDER BY b.priority DESC, b.created_at, b.id LIMIT 1) AS job_id,
            (SELECT count(*) FROM jobs r WHERE r.status IN ('running', 'stitching')
             AND r.tenant = q.tenant) AS running
        FROM queued_tenants q WHERE q.tenant IS NOT NULL
    )
"""
_FAIR_SHARE = f"""
    WITH RECURSIVE {_QUEUED_TENANTS}
    SELECT jobs.id FROM best JOIN jobs ON jobs.id = best.job_id
    ORDER BY jobs.priority DESC, best.running, jobs.created_at, jobs.id
    LIMIT 16
"""
# With presenters held: also the best queued job of each (one probe of ix_jobs_presenter per
# presenter; a key names one tenant), a candidate of its tenant's standing, ahead of equals.
_FAIR_SHARE_HELD = """
    WITH RECURSIVE {tenants},
    held(k) AS (VALUES {values}),
    cached AS (
        SELECT (SELECT c.id FROM jobs c
                WHERE c.status = 'queued' AND {takeable} AND c.presenter_key = h.k
                ORDER BY c.priority DESC, c.created_at, c.id LIMIT 1) AS job_id
        FROM held h
    ),
    candidates(job_id, running, cached) AS (
        SELECT job_id, running, 0 FROM best
        UNION ALL
        SELECT cached.job_id, best.running, 1
        FROM cached JOIN jobs c ON c.id = cached.job_id JOIN best ON best.tenant = c.tenant
    )
    SELECT jobs.id FROM candidates JOIN jobs ON jobs.id = candidates.job_id
    ORDER BY jobs.priority DESC, candidates.running, candidates.cached DESC, jobs.created_at,
        jobs.id
    LIMIT 16
"""
HELD_KEYS_MAX = 64
"""Presenter keys a claim considers, the first given (a worker gives its most recent first)."""


@functools.cache
def _fair_share_query(held: int) -> sa.TextClause:
    """The fair-share candidates' query, for `held` presenter keys (`:held_0`, ...)."""
    if held:
        values = ", ".join(f"(:held_{i})" for i in range(held))
        sql = _FAIR_SHARE_HELD.format(tenants=_QUEUED_TENANTS, values=values, takeable=_TAKEABLE)
    else:
        sql = _FAIR_SHARE
    return (
        sa.text(sql)
        .bindparams(
            sa.bindparam("precisions", expanding=True),
            sa.bindparam("now", type_=UTCDateTime()),
        )
        .columns(id=sa.Uuid)
    )


def _fair_share_candidates(
    session: Session, serves: Capabilities, now: datetime, cached: Collection[str] = ()
) -> list[uuid.UUID]:
    held = list(dict.fromkeys(cached))[:HELD_KEYS_MAX]  # the caller's first (most recent)
    params: dict[str, Any] = {
        "precisions": sorted(serves.precisions),
        "now": now,
        "node": serves.node,
    }
    params.update({f"held_{i}": key for i, key in enumerate(held)})
    found = session.scalars(_fair_share_query(len(held)), params)
    return list(dict.fromkeys(found))  # a job may be its tenant's best and a cached one


# --------------------------------------------------------------------------- while rendering


def heartbeat(
    session: Session, lease: Lease, lease_s: float, *, now: datetime | None = None
) -> bool:
    """Extend the lease. False: the lease is lost and the worker must stop (without writing).

    One UPDATE guarded by the lease, not a lock: heartbeats are frequent and never wait."""
    now = T.now_or(now)
    result = session.execute(
        sa.update(Job)
        .where(
            Job.id == lease.job_id,
            Job.worker_id == lease.worker_id,
            Job.attempt == lease.attempt,
            Job.status.in_([s.value for s in LEASED]),
        )
        .values(lease_expires_at=now + timedelta(seconds=lease_s), heartbeat_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def is_cancel_requested(session: Session, lease: Lease) -> bool:
    return bool(session.scalar(sa.select(Job.cancel_requested).where(Job.id == lease.job_id)))


def update_progress(
    session: Session,
    lease: Lease,
    *,
    clips_done: int,
    fps: float | None = None,
    eta_s: float | None = None,
    clip_s: float | None = None,
    now: datetime | None = None,
) -> None:
    """Record progress (LeaseLost, and nothing written, when the lease is lost).

    `clip_s` is how long the last clip took. A `progress` event is appended when the clip
    count changed and the job's previous one is at least PROGRESS_EVENT_INTERVAL_S old (the
    last clip and a new attempt always get one).
    """
    now = T.now_or(now)
    job = _held(session, lease)
    frames_done = job.job_params.frames_for(clips_done, job.clips_total)
    job.clips_done = clips_done
    job.frames_done = frames_done
    job.fps = fps
    job.eta_s = eta_s
    job.updated_at = now
    last = session.execute(
        sa.select(JobEvent.at, JobEvent.attempt, JobEvent.data)
        .where(JobEvent.job_id == job.id, JobEvent.event == "progress")
        .order_by(JobEvent.id.desc())
        .limit(1)
    ).one_or_none()
    due = (
        last is None
        or last.attempt != lease.attempt
        or (
            (last.data or {}).get("clips_done") != clips_done
            and (
                (now - last.at).total_seconds() >= PROGRESS_EVENT_INTERVAL_S
                or clips_done >= job.clips_total
            )
        )
    )
    if due:
        data = {
            "clips_done": clips_done,
            "clips_total": job.clips_total,
            "frames_done": frames_done,
            "frames_total": job.frames_total,
            "fps": fps,
            "eta_s": eta_s,
            "clip_s": clip_s,
        }
        reason = f"clip {clips_done} of {job.clips_total}"
        T.append_event(session, job, "progress", reason, now, worker_id=lease.worker_id, data=data)


def record_segment(
    session: Session, lease: Lease, segment: Segment, *, now: datetime | None = None
) -> None:
    """Insert or replace the record of one uploaded segment (a resumed interval replaces it)."""
    now = T.now_or(now)
    job = _held(session, lease)
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
    row.attempt = lease.attempt
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
    clips = f"{segment.clips} clip{'' if segment.clips == 1 else 's'}"
    reason = f"segment {segment.index} uploaded ({clips})"
    T.append_event(session, job, "segment", reason, now, worker_id=lease.worker_id, data=data)


def record_checkpoint(
    session: Session,
    lease: Lease,
    clip: int,
    *,
    tier: Tier = "remote",
    node: str | None = None,
    duration_s: float | None = None,
    bytes: int | None = None,
    now: datetime | None = None,
) -> None:
    """The checkpoint after `clip` clips is complete (its manifest exists) in `tier`: on
    `node`'s own disk (local), or in the bucket (remote). A resume can start from it.

    `duration_s` (what writing it cost the render) and `bytes` (its size) feed the metrics.
    """
    if clip < 0:
        raise ValueError(f"checkpoint clip must be >= 0, got {clip}")
    if (tier == "local") != (node is not None):
        raise ValueError("a local checkpoint names its node; a remote one names none")
    now = T.now_or(now)
    job = _held(session, lease)
    if tier == "local":
        job.local_checkpoint_clip, job.local_checkpoint_node = clip, node
    else:
        job.remote_checkpoint_clip = clip
    job.last_checkpoint_clip = max(job.local_checkpoint_clip or 0, job.remote_checkpoint_clip or 0)
    job.updated_at = now
    data = {"clip": clip, "tier": tier, "node": node, "duration_s": duration_s, "bytes": bytes}
    where = f"on {node}" if node is not None else "in the bucket"
    T.append_event(
        session,
        job,
        "checkpoint",
        f"checkpoint at clip {clip} {where}",
        now,
        worker_id=lease.worker_id,
        data=data,
    )


def note(
    session: Session,
    lease: Lease,
    event: str,
    reason: str,
    data: Mapping[str, Any] | None = None,
    *,
    now: datetime | None = None,
) -> None:
    """An event about the attempt that changes nothing else (metrics count events)."""
    job = _held(session, lease)
    T.append_event(session, job, event, reason, T.now_or(now), worker_id=lease.worker_id, data=data)


# --------------------------------------------------------------------------- ending the attempt


def _move(
    session: Session,
    lease: Lease,
    target: JobStatus,
    *,
    event: str,
    reason: str,
    now: datetime | None,
    data: Mapping[str, Any] | None = None,
) -> Job:
    """The held job to `target`, with its event (LeaseLost if the lease is not held)."""
    job = _held(session, lease)
    T.transition(
        session,
        job,
        target,
        event=event,
        reason=reason,
        now=T.now_or(now),
        worker_id=lease.worker_id,
        data=data,
    )
    return job


def release(
    session: Session,
    lease: Lease,
    *,
    reason: str = "worker shutting down",
    prefer_local_s: float = 0.0,
    now: datetime | None = None,
) -> Job:
    """Give the job back (e.g. on SIGTERM after a checkpoint): running -> queued, re-enqueued.
    A graceful hand-back is not a failed attempt: a job survives any number of deploys."""
    job = _move(session, lease, JobStatus.QUEUED, event="released", reason=reason, now=now)
    T.enqueue_wakeup(session, job, "released", job.updated_at, prefer_local_s=prefer_local_s)
    return job


def mark_stitching(session: Session, lease: Lease, *, now: datetime | None = None) -> Job:
    job = _held(session, lease)
    T.transition(
        session,
        job,
        JobStatus.STITCHING,
        event="stitching",
        reason=f"all {job.clips_total} clips rendered",
        now=T.now_or(now),
        worker_id=lease.worker_id,
    )
    return job


def mark_succeeded(
    session: Session,
    lease: Lease,
    output_key: str,
    *,
    output: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> Job:
    """The output is stored. `output` describes it: {"bytes", "sha256", "frames",
    "duration_s"} (the API measures what is missing on the first request for the result)."""
    now = T.now_or(now)
    job = _held(session, lease)
    job.output_key = output_key
    job.output_meta = dict(output) if output is not None else None
    job.local_checkpoint_clip = job.local_checkpoint_node = None  # no node keeps it now
    T.record_failure(job, None)
    T.transition(
        session,
        job,
        JobStatus.SUCCEEDED,
        event="succeeded",
        reason=f"output stored at {output_key}",
        now=now,
        worker_id=lease.worker_id,
        data={"output_key": output_key, **(output or {})},
    )
    return job


def mark_failed(
    session: Session,
    lease: Lease,
    failure: Failure,
    *,
    retryable: bool = False,
    prefer_local_s: float = 0.0,
    now: datetime | None = None,
) -> Job:
    """Record a failed attempt. A retryable one requeues the job while attempts remain."""
    now = T.now_or(now)
    job = _held(session, lease)
    job.failed_attempts += 1
    T.record_failure(job, failure)
    data = {"kind": failure.kind, "detail": failure.detail}
    if retryable and job.failed_attempts < job.max_attempts:
        T.transition(
            session,
            job,
            JobStatus.QUEUED,
            event="retry_scheduled",
            reason=f"attempt {lease.attempt} failed ({job.failed_attempts} of "
            f"{job.max_attempts}): {failure.message}",
            now=now,
            worker_id=lease.worker_id,
            data=data,
        )
        T.enqueue_wakeup(session, job, "retry", now, prefer_local_s=prefer_local_s)
    else:
        T.transition(
            session,
            job,
            JobStatus.FAILED,
            event="failed",
            reason=failure.message,
            now=now,
            worker_id=lease.worker_id,
            data=data,
        )
    return job


def mark_canceled(
    session: Session,
    lease: Lease,
    *,
    reason: str = "canceled by its worker after a cancel request",
    now: datetime | None = None,
) -> Job:
    return _move(session, lease, JobStatus.CANCELED, event="canceled", reason=reason, now=now)
