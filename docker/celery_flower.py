"""The Celery app Flower monitors: `celery --app celery_flower flower` (entrypoint role `flower`).

Built exactly as the API and the relay build theirs, from the LONGTAKE_* broker settings, so
Flower sees the same Redis, key prefix and transport options. It loads no task modules: Flower
learns about workers and tasks from their events, and must not import the render stack.
"""

from __future__ import annotations

from ops.settings import Settings
from worker.celery_app import make_celery_app

app = make_celery_app(Settings().celery_config(), task_modules=())
