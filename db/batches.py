"""Batches: many jobs written in one transaction, their combined status, and cancel for all.

The jobs of a batch are inserted with multi-row statements (a job, its `created` event and
its outbox row each), so ten thousand jobs take one round trip per table, not thirty thousand.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db.job_store import NewJob, new_job_rows, request_cancel
from db.models import Batch, Job, JobEvent, OutboxMessage, Webhook, utcnow
from db.states import LEASED, JobStatus
from db.webhooks import new_webhook_id


@dataclass(frozen=True)
class JobWebhook:
    url: str
    events: list[str]
    secret: str


@dataclass(frozen=True)
class NewBatch:
    id: uuid.UUID
    tenant: str
    jobs: Sequence[NewJob]
    webhooks: Sequence[JobWebhook | None] = ()
    """Per job (same order as `jobs`), or empty for none."""
    name: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None


@dataclass
class BatchSummary:
    batch: Batch
    counts: dict[str, int] = field(default_factory=dict)
    clips_done: int = 0
    clips_total: int = 0

    @property
    def finished(self) -> bool:
        unfinished = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.STITCHING)
        return not any(self.counts.get(s.value, 0) for s in unfinished)


def create_batch(session: Session, new: NewBatch, *, now: datetime | None = None) -> Batch:
    """Insert the batch and all its jobs, queued, each with its event and outbox row."""
    now = now or utcnow()
    batch = Batch(
        id=new.id,
        tenant=new.tenant,
        name=new.name,
        jobs_total=len(new.jobs),
        idempotency_key=new.idempotency_key,
        request_hash=new.request_hash,
        created_at=now,
    )
    session.add(batch)
    session.flush()  # a duplicate idempotency key surfaces here
    jobs: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    outbox: list[dict[str, Any]] = []
    for job in new.jobs:
        row, created, wakeup = new_job_rows(dataclasses.replace(job, batch_id=new.id), now)
        jobs.append(row)
        events.append({**created, "reason": f"submitted in batch {new.id}"})
        outbox.append(wakeup)
    if jobs:
        session.execute(sa.insert(Job), jobs)
        session.execute(sa.insert(JobEvent), events)
        session.execute(sa.insert(OutboxMessage), outbox)
    hooks = [
        {
            "id": new_webhook_id(),
            "tenant": new.tenant,
            "job_id": job.id,
            "url": hook.url,
            "events": hook.events,
            "secret": hook.secret,
            "created_at": now,
        }
        for job, hook in zip(new.jobs, new.webhooks, strict=False)
        if hook is not None
    ]
    if hooks:
        session.execute(sa.insert(Webhook), hooks)
    return batch


def get_batch(session: Session, batch_id: uuid.UUID, *, tenant: str) -> Batch | None:
    return session.scalars(
        sa.select(Batch).where(Batch.id == batch_id, Batch.tenant == tenant)
    ).one_or_none()


def find_by_idempotency_key(session: Session, tenant: str, key: str) -> Batch | None:
    return session.scalars(
        sa.select(Batch).where(Batch.tenant == tenant, Batch.idempotency_key == key)
    ).one_or_none()


def job_ids(session: Session, batch_id: uuid.UUID) -> list[uuid.UUID]:
    """The batch's jobs in submission order."""
    stmt = sa.select(Job.id).where(Job.batch_id == batch_id).order_by(Job.created_at, Job.id)
    return list(session.scalars(stmt))


def summarize(session: Session, batch: Batch) -> BatchSummary:
    summary = BatchSummary(batch)
    rows = session.execute(
        sa.select(
            Job.status, sa.func.count(), sa.func.sum(Job.clips_done), sa.func.sum(Job.clips_total)
        )
        .where(Job.batch_id == batch.id)
        .group_by(Job.status)
    )
    for status, count, done, total in rows:
        summary.counts[status] = count
        summary.clips_done += int(done or 0)
        summary.clips_total += int(total or 0)
    return summary


def cancel_batch(
    session: Session,
    batch: Batch,
    *,
    reason: str = "batch canceled",
    now: datetime | None = None,
) -> int:
    """Cancel every unfinished job of the batch (running ones stop after their current clip).
    Returns how many jobs were canceled or flagged."""
    now = now or utcnow()
    unfinished = [JobStatus.QUEUED.value, *(s.value for s in LEASED)]
    ids = session.scalars(
        sa.select(Job.id).where(Job.batch_id == batch.id, Job.status.in_(unfinished))
    ).all()
    changed = 0
    for job_id in ids:
        job = request_cancel(session, job_id, tenant=batch.tenant, reason=reason, now=now)
        changed += job.status == JobStatus.CANCELED.value or job.cancel_requested
    return changed


def list_batches(
    session: Session,
    *,
    tenant: str,
    before: tuple[datetime, uuid.UUID] | None = None,
    limit: int = 50,
) -> list[Batch]:
    stmt = sa.select(Batch).where(Batch.tenant == tenant)
    if before is not None:
        created_at, batch_id = before
        stmt = stmt.where(
            sa.or_(
                Batch.created_at < created_at,
                sa.and_(Batch.created_at == created_at, Batch.id < batch_id),
            )
        )
    return list(
        session.scalars(stmt.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit))
    )
