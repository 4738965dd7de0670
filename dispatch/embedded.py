"""Embedded mode: Celery's place taken by two threads in the serving process.

The relay thread drains the outbox (and reaps expired leases) exactly as the standalone relay
does, but "publishes" into an in-process queue; the worker thread takes job ids from it and
calls the handler, one job at a time. Without a handler nothing is dispatched: jobs stay
queued, their outbox rows unsent, until a process with a handler runs.

The default handler (`make_render_handler`) is the render lifecycle itself, the same one a
Celery worker runs: `longtake serve --embedded` renders end to end on SQLite, local storage
and the configured model (tiny, on the CPU, unless configured otherwise). Stopping the runner
asks a handler that can (`request_shutdown`) to release its job after the current clip.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from db.capabilities import RENDER_TOPIC
from db.database import Database
from dispatch.reconcile import StorageReconciler
from dispatch.relay import OutboxRelay
from dispatch.sweep import ResumePointSweeper
from storage.base import Storage

log = logging.getLogger(__name__)

JobHandler = Callable[[uuid.UUID], Any]


class WorkerSettings(Protocol):
    def worker_config(self) -> Any: ...


def make_render_handler(settings: WorkerSettings, database: Database, storage: Storage) -> Any:
    """The embedded handler: the render lifecycle, configured by `settings.worker_config()`."""
    from worker.lifecycle import Lifecycle

    return Lifecycle(settings.worker_config(), database, storage)


class EmbeddedRunner:
    """Implements the Dispatcher interface for its own relay."""

    def __init__(
        self,
        database: Database,
        handler: JobHandler | None,
        *,
        poll_s: float = 0.5,
        redispatch_after_s: float = 3600.0,
        sweeper: ResumePointSweeper | None = None,
        reconciler: StorageReconciler | None = None,
    ):
        self.handler = handler
        self.poll_s = poll_s
        self.relay = OutboxRelay(
            database,
            self,
            redispatch_after_s=redispatch_after_s,
            sweeper=sweeper,
            reconciler=reconciler,
        )
        self._jobs: queue.Queue[uuid.UUID | None] = queue.Queue()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    # Dispatcher
    def publish(self, job_id: uuid.UUID, topic: str = RENDER_TOPIC) -> None:
        # one in-process worker: it serves what the deployment serves, whatever the topic
        self._jobs.put(job_id)

    def ping(self) -> None:
        if self.handler is not None and not all(t.is_alive() for t in self._threads):
            raise RuntimeError("the embedded runner is not running")

    @property
    def dispatching(self) -> bool:
        return self.handler is not None

    def wake(self) -> None:
        """Publish new outbox rows now instead of at the next poll."""
        self._wake.set()

    def start(self) -> None:
        if self.handler is None:
            log.info("embedded runner has no job handler: jobs stay queued")
            return
        self._threads = [
            threading.Thread(target=self._relay_loop, name="longtake-relay", daemon=True),
            threading.Thread(target=self._worker_loop, name="longtake-worker", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop both threads; a running job is asked to release itself and given `timeout`."""
        self._stop.set()
        self._wake.set()
        self._jobs.put(None)
        request_shutdown = getattr(self.handler, "request_shutdown", None)
        if request_shutdown is not None:
            request_shutdown()
        for thread in self._threads:
            thread.join(timeout)

    def _relay_loop(self) -> None:
        self.relay.run(self._stop, poll_s=self.poll_s, wake=self._wake)

    def _worker_loop(self) -> None:
        assert self.handler is not None
        while not self._stop.is_set():
            job_id = self._jobs.get()
            if job_id is None:
                return
            try:
                self.handler(job_id)
            except Exception:  # the job's lease expires and the reaper requeues it
                log.exception("handler failed for job %s", job_id)
