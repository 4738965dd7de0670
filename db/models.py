"""The schema: jobs, their append-only event history, the outbox, and rendered segments; the
tenants that own jobs and their API keys; batches, uploaded inputs and named presenters;
webhooks and the durable queue of their deliveries.

The row in `jobs` is the source of truth for a render; broker messages are only wake-ups.
Types are chosen to work on both PostgreSQL and SQLite (the embedded mode).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from db.failures import KINDS, FailureKind
from db.params import JobParams
from db.states import JobStatus

# JSONB on Postgres (indexable, compact), plain JSON text elsewhere.
JSONDoc = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# SQLite has no 64-bit autoincrement besides INTEGER PRIMARY KEY.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


STATUS_VALUES = tuple(s.value for s in JobStatus)


class Base(DeclarativeBase):
    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(64))
    status: Mapped[str] = mapped_column(sa.String(16), default=JobStatus.QUEUED.value)
    priority: Mapped[int] = mapped_column(sa.Integer, default=0)
    precision: Mapped[str] = mapped_column(sa.String(32), default="bf16", server_default="bf16")
    """The DiT's precision (bf16, fp8, fp8-attention): only a worker that serves it claims the
    job, and a stream resumes only at the precision it started with."""

    # The validated request, as `db.params.JobParams` writes it; read it with `job_params`.
    params: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    image_key: Mapped[str] = mapped_column(sa.String(1024))
    audio_key: Mapped[str] = mapped_column(sa.String(1024))
    presenter: Mapped[str | None] = mapped_column(sa.String(64))
    """The name of the presenter the job was submitted with, for people: the job holds its
    own copy of what it took from it (portrait key, prompt, size), so a presenter deleted
    or made again later changes nothing about the job."""

    # progress
    clips_total: Mapped[int] = mapped_column(sa.Integer)
    clips_done: Mapped[int] = mapped_column(sa.Integer, default=0)
    frames_done: Mapped[int] = mapped_column(sa.Integer, default=0)
    fps: Mapped[float | None] = mapped_column(sa.Float)
    eta_s: Mapped[float | None] = mapped_column(sa.Float)
    last_checkpoint_clip: Mapped[int | None] = mapped_column(sa.Integer)
    """Clips completed at the newest checkpoint whose manifest exists, in either tier."""
    local_checkpoint_clip: Mapped[int | None] = mapped_column(sa.Integer)
    """The newest checkpoint on a node's own disk (the local tier), and that node: a worker
    there resumes from it without a download."""
    local_checkpoint_node: Mapped[str | None] = mapped_column(sa.String(255))
    remote_checkpoint_clip: Mapped[int | None] = mapped_column(sa.Integer)
    """The newest checkpoint in the bucket (the remote tier): any worker can resume from it."""
    preferred_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """A requeued job whose newest checkpoint is local is offered to workers of
    `local_checkpoint_node` alone until then, and to every worker after."""

    # attempts and lease: who runs the job now, until when
    attempt: Mapped[int] = mapped_column(sa.Integer, default=0)
    """Leases taken so far; names the current one (a stale worker's never matches)."""
    failed_attempts: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    """Attempts that failed or lost their worker; a graceful hand-back is not one."""
    max_attempts: Mapped[int] = mapped_column(sa.Integer)
    """The job fails for good when `failed_attempts` reaches this."""
    worker_id: Mapped[str | None] = mapped_column(sa.String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    cancel_requested: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    error: Mapped[str | None] = mapped_column(sa.Text)
    """What went wrong and what to do, for the job's owner."""
    error_kind: Mapped[str | None] = mapped_column(sa.String(16))
    """input (the job cannot render as submitted), render, or infrastructure (db.failures)."""
    error_detail: Mapped[str | None] = mapped_column(sa.Text)
    """The exception and a short traceback, for operators."""
    output_key: Mapped[str | None] = mapped_column(sa.String(1024))
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(255))
    request_hash: Mapped[str | None] = mapped_column(sa.String(64))
    """sha256 of the submitted request (parameters and input digests): an Idempotency-Key
    sent again with a different request is a conflict, not a replay."""
    batch_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("batches.id", ondelete="SET NULL")
    )
    presenter_key: Mapped[str | None] = mapped_column(sa.String(64))
    """Names the job's presenter (`db.params.presenter_key`: tenant, portrait, prompt, size,
    precision): a worker that holds its encodings prefers the job among equals."""
    output_meta: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    """What the output is: bytes, sha256, frames, duration_s (recorded at success, or
    measured once on the first request for the result)."""

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.CheckConstraint(sa.column("status").in_(STATUS_VALUES), name="status"),
        sa.CheckConstraint("attempt >= 0 AND max_attempts >= 1", name="attempts"),
        sa.CheckConstraint("failed_attempts >= 0", name="failed_attempts"),
        sa.CheckConstraint("clips_total >= 1 AND clips_done >= 0", name="clips"),
        sa.UniqueConstraint("tenant", "idempotency_key"),
        # claim_next: the best queued job (highest priority, then oldest)
        sa.Index("ix_jobs_claim", "status", sa.desc("priority"), "created_at"),
        # fair share: the best queued job of each tenant, running jobs per tenant, quotas
        sa.Index("ix_jobs_fair", "status", "tenant", sa.desc("priority"), "created_at", "id"),
        # presenter affinity: the best queued job of a presenter a worker holds
        sa.Index(
            "ix_jobs_presenter",
            "status",
            "presenter_key",
            sa.desc("priority"),
            "created_at",
            "id",
        ),
        # batch status and cancel
        sa.Index("ix_jobs_batch", "batch_id", "status"),
        # listings: a tenant's jobs, newest first (scanned backwards)
        sa.Index("ix_jobs_tenant_created", "tenant", "created_at", "id"),
        # the reaper: leases that may have expired
        sa.Index("ix_jobs_lease", "lease_expires_at"),
    )

    @property
    def job_status(self) -> JobStatus:
        return JobStatus(self.status)

    @property
    def failure_kind(self) -> FailureKind | None:
        return next((kind for kind in KINDS if kind == self.error_kind), None)

    @property
    def job_params(self) -> JobParams:
        return JobParams.model_validate(self.params)

    @property
    def frames_total(self) -> int:
        return self.job_params.frames_total(self.clips_total)


class JobEvent(Base):
    """Append-only history: every transition and notable fact, with the reason."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    event: Mapped[str] = mapped_column(sa.String(32))
    from_status: Mapped[str | None] = mapped_column(sa.String(16))
    to_status: Mapped[str | None] = mapped_column(sa.String(16))
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    worker_id: Mapped[str | None] = mapped_column(sa.String(255))
    attempt: Mapped[int | None] = mapped_column(sa.Integer)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    """Facts of the event as plain data: progress (clips, frames, fps, clip time), the
    checkpoint's clip and cost, a segment's size and digest. Metrics are derived from it."""

    __table_args__ = (sa.Index("ix_job_events_job", "job_id", "id"),)


class OutboxMessage(Base):
    """A wake-up to publish to the broker, written in the transaction that made it due."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    topic: Mapped[str] = mapped_column(sa.String(32), default="render")
    reason: Mapped[str] = mapped_column(sa.String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    available_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """Not published before this time (None: at once)."""
    publish_attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(sa.Text)

    __table_args__ = (
        sa.Index(
            "ix_outbox_unsent",
            "id",
            postgresql_where=sa.text("sent_at IS NULL"),
            sqlite_where=sa.text("sent_at IS NULL"),
        ),
    )


class JobSegment(Base):
    """One encoded segment: the video of one checkpoint interval, stitched at the end."""

    __tablename__ = "job_segments"

    job_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(1024))
    first_clip: Mapped[int] = mapped_column(sa.Integer)
    clips: Mapped[int] = mapped_column(sa.Integer)
    frames: Mapped[int] = mapped_column(sa.Integer)
    bytes: Mapped[int] = mapped_column(sa.BigInteger)
    sha256: Mapped[str] = mapped_column(sa.String(64))
    attempt: Mapped[int] = mapped_column(sa.Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Tenant(Base):
    """A customer account: owns jobs, API keys and webhooks. Limits left NULL take the
    server's defaults."""

    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    max_queued_jobs: Mapped[int | None] = mapped_column(sa.Integer)
    """Jobs this tenant may have unfinished (queued, running or stitching) at once."""
    max_image_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    max_audio_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    max_audio_seconds: Mapped[float | None] = mapped_column(sa.Float)
    webhook_secret: Mapped[str] = mapped_column(sa.String(128))
    """Signs the tenant's webhooks that were registered without a secret of their own."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    """A bearer token of one tenant. Only its sha256 is stored: tokens are 256-bit random,
    so a fast hash is as safe as a slow one and keeps authentication cheap."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.ForeignKey("tenants.name", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.String(255), default="")
    token_sha256: Mapped[str] = mapped_column(sa.String(64), unique=True)
    rate_limit_per_s: Mapped[float | None] = mapped_column(sa.Float)
    """Requests per second (bursts of twice that); NULL: the server default; 0: unlimited."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (sa.Index("ix_api_keys_tenant", "tenant"),)


class Batch(Base):
    """Jobs submitted together: status and cancel act on all of them."""

    __tablename__ = "batches"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(64))
    name: Mapped[str | None] = mapped_column(sa.String(255))
    jobs_total: Mapped[int] = mapped_column(sa.Integer)
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(255))
    request_hash: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        sa.UniqueConstraint("tenant", "idempotency_key"),
        sa.Index("ix_batches_tenant_created", "tenant", "created_at", "id"),
    )


class Upload(Base):
    """A validated input stored once and referenced by any number of jobs (`upl_...` ids).
    Content-addressed per tenant: the same bytes uploaded again are the same upload."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(64))
    kind: Mapped[str] = mapped_column(sa.String(8))
    sha256: Mapped[str] = mapped_column(sa.String(64))
    key: Mapped[str] = mapped_column(sa.String(1024))
    bytes: Mapped[int] = mapped_column(sa.BigInteger)
    info: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    """What inspection found: width/height/format, or duration/codec/sample rate/channels."""
    source: Mapped[str | None] = mapped_column(sa.String(2048))
    """The s3:// reference it was imported from, if any."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        sa.CheckConstraint(sa.column("kind").in_(("image", "audio")), name="kind"),
        sa.UniqueConstraint("tenant", "kind", "sha256"),
    )


class Presenter(Base):
    """A named portrait, prompt and size of one tenant, that jobs name instead of repeating
    them. The portrait is an upload (stored once, shared by every job that uses it)."""

    __tablename__ = "presenters"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(64))
    name: Mapped[str] = mapped_column(sa.String(64))
    upload_id: Mapped[str] = mapped_column(sa.ForeignKey("uploads.id", ondelete="RESTRICT"))
    prompt: Mapped[str] = mapped_column(sa.Text)
    size: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    upload: Mapped[Upload] = relationship(lazy="joined")

    __table_args__ = (
        sa.UniqueConstraint("tenant", "name"),
        sa.Index("ix_presenters_upload", "upload_id"),
    )


class Webhook(Base):
    """Where to POST a tenant's job events: for all its jobs (job_id NULL) or for one job."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(64))
    job_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(sa.String(2048))
    events: Mapped[list[str]] = mapped_column(JSONDoc)
    secret: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (sa.Index("ix_webhooks_tenant_job", "tenant", "job_id"),)


DELIVERY_STATUSES = ("pending", "delivered", "failed")


class WebhookDelivery(Base):
    """One event for one webhook: a durable queue entry and its delivery log.

    Written in the transaction that appended the event, so no event is ever missed; worked
    by the delivery loop with retries and backoff until delivered or out of attempts.
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    webhook_id: Mapped[str] = mapped_column(sa.ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(sa.ForeignKey("job_events.id", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(sa.String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    """The body without its event id (added at send time: the id exists after the insert)."""
    status: Mapped[str] = mapped_column(sa.String(16), default="pending")
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    failures: Mapped[int] = mapped_column(sa.Integer, default=0)
    """Attempts that failed (refused, timed out or answered with an error)."""
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(sa.Integer)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    event: Mapped[JobEvent] = relationship()

    __table_args__ = (
        sa.CheckConstraint(sa.column("status").in_(DELIVERY_STATUSES), name="status"),
        sa.UniqueConstraint("webhook_id", "event_id"),
        sa.Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=sa.text("status = 'pending'"),
            sqlite_where=sa.text("status = 'pending'"),
        ),
        sa.Index("ix_webhook_deliveries_webhook", "webhook_id", "id"),
        sa.Index("ix_webhook_deliveries_job", "job_id", "id"),
    )
