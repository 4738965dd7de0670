"""The Celery application: Redis broker, queue `render`, settings for hour-long GPU tasks.

A Celery message is only a wake-up carrying a job id; the job row is the truth, and a worker
claims the job's lease in the database before doing anything. That is what makes redelivery
safe: Redis redelivers an unacknowledged message once its visibility timeout passes (so a long
task can be delivered twice, see celery/celery#5935), and the duplicate finds the lease taken.

Tasks are registered by modules that expose `register(app)` (declaring tasks with
`@app.task(name=..., shared=False)`, so they stay on that app); the render task lives in such a
module (`dispatch.tasks`), loaded when present.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass

from celery import Celery

from db.capabilities import RENDER_TOPIC

RENDER_TASK = "longtake.render"
RENDER_QUEUE = RENDER_TOPIC
"""The queue of default jobs; a job needing more goes to the queue of its topic
(db.capabilities.topic_for), consumed by the workers that serve it."""
TASK_MODULES = ("dispatch.tasks",)


@dataclass(frozen=True)
class CeleryConfig:
    broker_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = ""
    """Prefix of every Redis key the broker uses, so deployments (or test runs) can share a
    Redis server."""
    visibility_timeout_s: int = 12 * 3600
    """Unacknowledged messages come back after this long. Longer than most renders keeps
    duplicates rare; they are harmless either way."""
    soft_shutdown_timeout_s: float = 60.0
    """On SIGTERM a task gets this long to checkpoint and release its job before it is killed."""
    connect_timeout_s: float = 5.0


def make_celery_app(config: CeleryConfig, task_modules: Sequence[str] = TASK_MODULES) -> Celery:
    app = Celery("longtake", broker=config.broker_url, set_as_current=False)
    transport_options: dict[str, object] = {
        "visibility_timeout": config.visibility_timeout_s,
        "socket_connect_timeout": config.connect_timeout_s,
        "socket_timeout": max(config.connect_timeout_s, 30.0),
    }
    if config.key_prefix:
        transport_options["global_keyprefix"] = config.key_prefix
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_timeout=config.connect_timeout_s,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_routes={RENDER_TASK: {"queue": RENDER_QUEUE}},
        # Long GPU tasks: acknowledge after the task (a crash redelivers), take one message at
        # a time, run one task per node. Tasks whose broker connection is gone are to be
        # cancelled; on the threads pool `longtake worker` uses, Celery cannot cancel a
        # running task (it logs that it failed to), which is what a render wants: it needs no
        # broker, its lease in the database decides who renders, and a redelivered message
        # finds that lease taken.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # SIGTERM gives a running render this long to checkpoint and release its job; an idle
        # worker has nothing to save and stops at once (with the on-idle variant it waited
        # the whole timeout).
        worker_soft_shutdown_timeout=config.soft_shutdown_timeout_s,
        worker_enable_soft_shutdown_on_idle=False,
        # monitoring (flower, celery events)
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    for name in task_modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # the module exists but something it imports does not
                raise
            continue
        module.register(app)
    return app


def has_render_task(app: Celery) -> bool:
    return RENDER_TASK in app.tasks
