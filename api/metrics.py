"""Prometheus metrics at /metrics, derived from what the database records.

Gauges (jobs by status, queue depth and age, webhook deliveries) are read from the database at
scrape time. Render metrics (fps, clip time, checkpoint time, uploaded bytes) are fed by the
`job_events` that workers append through the repository, read incrementally at each scrape:
they work whichever process rendered, and every API process reports the same totals (scrape
one of them, or do not sum across them). HTTP request counts and latencies are this process's.

Storage errors come from both sides: `source="worker"` counts attempts that a worker recorded
as failed by a storage error (derived from events, like the render metrics), `source="api"`
this process's answers that storage was unavailable (503 `storage_unavailable`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from db.database import Database
from db.models import DELIVERY_STATUSES, Job, JobEvent, WebhookDelivery, utcnow
from db.states import LEASED, JobStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

FAILURE_EVENTS = ("failed", "retry_scheduled")
# A failed attempt's event data holds the operator's detail of its error, which starts
# "StorageError: ..." when a storage backend raised it (worker.errors.describe).
_STORAGE_ERROR = "StorageError: "


class EventFeed:
    """Reads `job_events` in id order, across scrapes.

    An id is taken at insert but seen only at commit, so a smaller id can appear after a larger
    one. Ids skipped over are looked up again for GAP_TTL_S seconds (a rolled-back insert
    leaves a gap that never fills).
    """

    GAP_TTL_S = 120.0
    MAX_GAPS = 10_000

    def __init__(self, clock: Any = time.monotonic):
        self.cursor = 0
        self.gaps: dict[int, float] = {}
        self._clock = clock

    def read(self, session: Session, limit: int) -> list[sa.Row]:
        columns = (JobEvent.id, JobEvent.event, JobEvent.data)
        rows = list(
            session.execute(
                sa.select(*columns)
                .where(JobEvent.id > self.cursor)
                .order_by(JobEvent.id)
                .limit(limit)
            )
        )
        now = self._clock()
        self.gaps = {i: t for i, t in self.gaps.items() if now - t < self.GAP_TTL_S}
        late: list[sa.Row] = []
        if self.gaps:
            late = list(
                session.execute(sa.select(*columns).where(JobEvent.id.in_(list(self.gaps))))
            )
            for row in late:
                del self.gaps[row.id]
        expected = self.cursor + 1
        for row in rows:
            if row.id > expected and self.cursor > 0 and len(self.gaps) < self.MAX_GAPS:
                for missing in range(expected, min(row.id, expected + self.MAX_GAPS)):
                    self.gaps[missing] = now
            expected = row.id + 1
        if rows:
            self.cursor = rows[-1].id
        return late + rows


class _DeliveryFailures(Collector):
    def __init__(self) -> None:
        self.value = 0.0

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "longtake_webhook_delivery_failures",
            "Webhook delivery attempts that failed (refused, timed out, or answered with an error)",
            value=self.value,
        )


class Metrics:
    SCRAPE_EVENT_LIMIT = 20_000

    def __init__(self, database: Database):
        self.database = database
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "longtake_http_requests", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.http_seconds = Histogram(
            "longtake_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.jobs = Gauge("longtake_jobs", "Jobs by status", ["status"], registry=r)
        self.queue_depth = Gauge("longtake_queue_depth", "Jobs waiting to run", registry=r)
        self.queue_oldest = Gauge(
            "longtake_queue_oldest_age_seconds",
            "Time since the oldest queued job was submitted (0 when none waits)",
            registry=r,
        )
        self.heartbeat_oldest = Gauge(
            "longtake_heartbeat_oldest_age_seconds",
            "Time since the stalest worker heartbeat of a running or stitching job (0 when none)",
            registry=r,
        )
        self.progress_oldest = Gauge(
            "longtake_progress_oldest_age_seconds",
            "Time since the running job that moved least recently recorded progress (0 when none)",
            registry=r,
        )
        self.leases_expired = Gauge(
            "longtake_leases_expired",
            "Running or stitching jobs whose lease has expired and that no reaper has requeued",
            registry=r,
        )
        self.deliveries = Gauge(
            "longtake_webhook_deliveries", "Webhook deliveries by status", ["status"], registry=r
        )
        self.failures = _DeliveryFailures()
        r.register(self.failures)
        self.render_fps = Histogram(
            "longtake_render_fps",
            "Frames per second reported by rendering workers",
            buckets=(0.5, 1, 2, 5, 10, 15, 20, 25, 30, 45, 60, 90),
            registry=r,
        )
        self.clip_seconds = Histogram(
            "longtake_clip_seconds",
            "Time to render one clip",
            buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300),
            registry=r,
        )
        self.checkpoint_seconds = Histogram(
            "longtake_checkpoint_seconds",
            "Time a checkpoint cost the render",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.upload_bytes = Counter(
            "longtake_upload_bytes",
            "Bytes uploaded by workers (segments, checkpoints, outputs)",
            ["kind"],
            registry=r,
        )
        self.job_events = Counter(
            "longtake_job_events", "Job events by kind", ["event"], registry=r
        )
        self.storage_errors = Counter(
            "longtake_storage_errors",
            "Storage errors: worker attempts failed by one, and this API process's 503 answers",
            ["source"],
            registry=r,
        )
        for source in ("api", "worker"):  # present from the start, so increase() sees the first
            self.storage_errors.labels(source)
        self._feed = EventFeed()
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- scrape

    def refresh(self) -> None:
        """Read the database's current state and the events since the last scrape."""
        with self._lock, self.database.transaction() as s:
            self._read_gauges(s)
            for _ in range(5):  # catch up in pages; the rest waits for the next scrape
                rows = self._feed.read(s, self.SCRAPE_EVENT_LIMIT)
                for row in rows:
                    self._observe(row.event, row.data or {})
                if len(rows) < self.SCRAPE_EVENT_LIMIT:
                    break

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def _read_gauges(self, s: Session) -> None:
        counts = dict.fromkeys((st.value for st in JobStatus), 0)
        counts.update(s.execute(sa.select(Job.status, sa.func.count()).group_by(Job.status)).all())
        for status, n in counts.items():
            self.jobs.labels(status).set(n)
        self.queue_depth.set(counts[JobStatus.QUEUED.value])
        oldest = s.scalar(
            sa.select(sa.func.min(Job.created_at)).where(Job.status == JobStatus.QUEUED.value)
        )
        now = utcnow()
        self.queue_oldest.set(0 if oldest is None else (now - oldest).total_seconds())
        # heartbeats only extend the lease; progress, checkpoints and segments touch updated_at
        stalest, idlest, expired = s.execute(
            sa.select(
                sa.func.min(sa.func.coalesce(Job.heartbeat_at, Job.updated_at)),
                sa.func.min(sa.case((Job.status == JobStatus.RUNNING.value, Job.updated_at))),
                sa.func.count().filter(Job.lease_expires_at < now),
            ).where(Job.status.in_([st.value for st in LEASED]))
        ).one()
        self.heartbeat_oldest.set(0 if stalest is None else (now - stalest).total_seconds())
        self.progress_oldest.set(0 if idlest is None else (now - idlest).total_seconds())
        self.leases_expired.set(expired)
        by_status = dict.fromkeys(DELIVERY_STATUSES, 0)
        by_status.update(
            s.execute(
                sa.select(WebhookDelivery.status, sa.func.count()).group_by(WebhookDelivery.status)
            ).all()
        )
        for status, n in by_status.items():
            self.deliveries.labels(status).set(n)
        self.failures.value = float(s.scalar(sa.select(sa.func.sum(WebhookDelivery.failures))) or 0)

    def _observe(self, event: str, data: dict[str, Any]) -> None:
        self.job_events.labels(event).inc()
        if event in FAILURE_EVENTS and str(data.get("detail", "")).startswith(_STORAGE_ERROR):
            self.storage_errors.labels("worker").inc()
        if event == "progress":
            if data.get("fps"):
                self.render_fps.observe(data["fps"])
            if data.get("clip_s") is not None:
                self.clip_seconds.observe(data["clip_s"])
        elif event == "checkpoint":
            if data.get("duration_s") is not None:
                self.checkpoint_seconds.observe(data["duration_s"])
            if data.get("bytes"):
                self.upload_bytes.labels("checkpoint").inc(data["bytes"])
        elif event == "segment" and data.get("bytes"):
            self.upload_bytes.labels("segment").inc(data["bytes"])
        elif event == "succeeded" and data.get("bytes"):
            self.upload_bytes.labels("output").inc(data["bytes"])

    # ---------------------------------------------------------------- HTTP

    def observe_storage_unavailable(self) -> None:
        self.storage_errors.labels("api").inc()

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_seconds.labels(method, route).observe(seconds)


class MetricsMiddleware:
    """Counts requests and their latency by route template (never by raw path: ids would
    make a new series per job)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(
                scope["method"], template, status, time.perf_counter() - start
            )
