"""Dispatch: the outbox relay and the small interface it publishes through.

The API writes a job and its outbox row in one transaction; the relay publishes unsent rows
to the broker and marks them sent. At least once: a crash between publishing and marking
publishes again, and the duplicate wake-up is dropped by the claim. Several relays can run
at once: each locks the rows it publishes (`FOR UPDATE SKIP LOCKED`; serialised on SQLite).
When the broker is down the rows stay unsent and the relay retries with backoff.

Each pass also returns jobs with expired leases to the queue (the reaper) and, as a safety net
for wake-ups a broker lost, re-sends one for jobs that stayed queued for a long time. Given a
sweeper, it also expires the resume points of long-failed jobs (`dispatch.sweep`), and given a
reconciler, it removes objects no row accounts for (`dispatch.reconcile`), once an interval.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from celery import Celery

from db import outbox, upkeep
from db.capabilities import RENDER_TOPIC
from db.database import Database
from db.models import utcnow
from dispatch.celery_app import RENDER_TASK
from dispatch.reconcile import ReconcileResult, StorageReconciler
from dispatch.sweep import ResumePointSweeper, SweepResult

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    def publish(self, job_id: uuid.UUID, topic: str = RENDER_TOPIC) -> None:
        """Hand one wake-up to the broker, for the workers that consume `topic` (what the
        job needs, `db.capabilities`); raise if it did not take it."""

    def ping(self) -> None:
        """Raise if the broker cannot be reached."""


class CeleryDispatcher:
    """Publishes `longtake.render(job_id)` to the queue named by the wake-up's topic (`render`,
    `render.fp8`): the queues of workers that can take the job."""

    def __init__(self, app: Celery):
        self.app = app

    def publish(self, job_id: uuid.UUID, topic: str = RENDER_TOPIC) -> None:
        # retry=False: fail fast and leave the row for the relay's next pass
        self.app.send_task(RENDER_TASK, args=[str(job_id)], queue=topic, retry=False)

    def ping(self) -> None:
        with self.app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1)


@dataclass
class RelayPass:
    published: int = 0
    failed: bool = False
    reaped: list[upkeep.ReapedJob] = field(default_factory=list)
    redispatched: list[uuid.UUID] = field(default_factory=list)
    swept: SweepResult | None = None
    reconciled: ReconcileResult | None = None


class OutboxRelay:
    def __init__(
        self,
        database: Database,
        dispatcher: Dispatcher,
        *,
        batch_size: int = 100,
        reap: bool = True,
        redispatch_after_s: float = 3600.0,
        sweeper: ResumePointSweeper | None = None,
        reconciler: StorageReconciler | None = None,
        prefer_local_s: float = 0.0,
    ):
        self.database = database
        self.prefer_local_s = prefer_local_s
        """A reaped job whose newest checkpoint is on its node's disk waits this long for
        that node's workers (the dead worker may be restarting there)."""
        self.dispatcher = dispatcher
        self.batch_size = batch_size
        self.reap = reap
        self.redispatch_after_s = redispatch_after_s
        self.sweeper = sweeper
        self.reconciler = reconciler

    def publish_pending(self) -> tuple[int, bool]:
        """Publish unsent messages, oldest first. Returns (published, broker_failed)."""
        published = 0
        while True:
            failed = False
            with self.database.transaction() as s:
                messages = outbox.lock_unsent(s, self.batch_size)
                for message in messages:
                    try:
                        self.dispatcher.publish(message.job_id, message.topic)
                    except Exception as e:  # the broker refused: keep the row, try later
                        outbox.note_failure(message, f"{type(e).__name__}: {e}")
                        log.warning("could not publish wake-up for job %s: %s", message.job_id, e)
                        failed = True
                        break
                    outbox.mark_sent(message)
                    published += 1
            if failed or len(messages) < self.batch_size:
                return published, failed

    def run_once(self) -> RelayPass:
        result = RelayPass()
        if self.reap:
            with self.database.transaction() as s:
                result.reaped = upkeep.reap_expired(s, prefer_local_s=self.prefer_local_s)
            for reaped in result.reaped:
                log.warning("lease of job %s expired; now %s", reaped.job_id, reaped.status)
        if self.redispatch_after_s > 0:
            older_than = utcnow() - timedelta(seconds=self.redispatch_after_s)
            with self.database.transaction() as s:
                result.redispatched = upkeep.redispatch_stale(s, older_than=older_than)
        result.published, result.failed = self.publish_pending()
        if self.sweeper is not None:
            result.swept = self.sweeper.maybe_run()  # failures are per job, logged there
        if self.reconciler is not None:
            result.reconciled = self.reconciler.maybe_run()
        return result

    def run(
        self,
        stop: threading.Event,
        *,
        poll_s: float = 0.5,
        max_backoff_s: float = 30.0,
        wake: threading.Event | None = None,
    ) -> None:
        """Relay until `stop` is set. `wake`, set after a commit, cuts a poll interval short
        (to stop promptly when using it, set `stop` and then `wake`)."""
        backoff = poll_s
        while not stop.is_set():
            try:
                failed = self.run_once().failed
            except Exception:  # the database is down, say: log it and keep trying
                log.exception("outbox relay pass failed")
                failed = True
            backoff = min(backoff * 2, max_backoff_s) if failed else poll_s
            (wake or stop).wait(backoff)
            if wake is not None:
                wake.clear()
