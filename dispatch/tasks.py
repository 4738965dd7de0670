"""The Celery task `longtake.render(job_id)` on queue `render`, run by the lifecycle.

A worker process runs one task at a time on the solo pool (`longtake worker`): the task runs
in the process's main thread, where the model is loaded once (at the first job) and stays;
there is no fork after CUDA is initialised. The message is a wake-up only: the lifecycle
claims the job's lease first, so a redelivered or duplicate message is dropped, and every
outcome (including failures) is recorded in the database, so the task itself never raises
for a job's sake and its message is acknowledged when it returns.

SIGTERM (a deploy) starts Celery's warm shutdown; `worker_shutting_down` tells the lifecycle,
which finishes the current clip, checkpoints, releases the job to the queue and returns, well
inside the soft shutdown timeout. kill -9 is left to lease expiry and the reaper.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.signals import worker_shutdown, worker_shutting_down

from dispatch.celery_app import RENDER_QUEUE, RENDER_TASK
from worker.engine import ENGINES
from worker.lifecycle import Lifecycle, Outcome

log = logging.getLogger(__name__)

LifecycleFactory = Callable[[], Lifecycle]


class _Runtime:
    """The lifecycle of one Celery app, built on first use from the installed factory."""

    def __init__(self, factory: LifecycleFactory):
        self.factory = factory
        self.lifecycle: Lifecycle | None = None
        self.shutting_down = False
        self._lock = threading.Lock()

    def get(self) -> Lifecycle:
        with self._lock:
            if self.lifecycle is None:
                self.lifecycle = self.factory()
                if self.shutting_down:
                    self.lifecycle.request_shutdown()
            return self.lifecycle

    def shutdown(self) -> None:
        self.shutting_down = True
        if self.lifecycle is not None:
            self.lifecycle.request_shutdown()


_RUNTIME_ATTR = "longtake_runtime"


def install(app: Celery, factory: LifecycleFactory) -> None:
    """Give `app`'s render task its lifecycle (built lazily, in the worker, by `factory`) and
    route the worker's warm shutdown to it."""
    runtime = _Runtime(factory)
    setattr(app, _RUNTIME_ATTR, runtime)

    def on_shutdown(sender: Any = None, **kwargs: Any) -> None:
        running = runtime.lifecycle.running if runtime.lifecycle is not None else None
        if running is not None:
            log.warning(
                "worker shutting down (%s): job %s is released after its current clip",
                kwargs.get("sig"),
                running,
            )
        else:
            log.info("worker shutting down (%s): no job is running", kwargs.get("sig"))
        runtime.shutdown()

    worker_shutting_down.connect(on_shutdown, weak=False)

    def on_stopped(sender: Any = None, **kwargs: Any) -> None:
        ENGINES.close()  # a multi-GPU engine's rank processes go with the worker

    worker_shutdown.connect(on_stopped, weak=False)


UNCLAIMED_RETRY_S = 15
"""A wake-up that could not be claimed (database unreachable) comes back after this long."""


def register(app: Celery) -> None:
    @app.task(
        name=RENDER_TASK,
        shared=False,
        queue=RENDER_QUEUE,
        ignore_result=True,
        bind=True,
        max_retries=None,
    )
    def render(task: Any, job_id: str) -> str:
        runtime: _Runtime | None = getattr(app, _RUNTIME_ATTR, None)
        if runtime is None:
            raise RuntimeError(
                "this Celery app has no render lifecycle installed (dispatch.tasks.install)"
            )
        try:
            parsed = uuid.UUID(str(job_id))
        except ValueError:
            log.error("dropping a wake-up with an invalid job id: %r", job_id)
            return Outcome.DROPPED.value
        outcome = runtime.get().run(parsed)
        if outcome is Outcome.UNCLAIMED and not runtime.shutting_down:
            # back to the queue it came from: the workers that can take this job
            queue = (task.request.delivery_info or {}).get("routing_key") or RENDER_QUEUE
            raise task.retry(countdown=UNCLAIMED_RETRY_S, queue=queue)
        return outcome.value
