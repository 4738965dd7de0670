"""The deployment's Celery app, for Celery's own tools: Flower, `inspect` and `control`.

    entrypoint.sh flower --port=5555                      # celery --app celery_cli flower
    entrypoint.sh celery inspect active                   # what every worker is rendering
    entrypoint.sh celery control cancel_consumer render   # drain: workers take no new job

Built exactly as the API and the relay build theirs, from the LONGTAKE_* broker settings, so
these tools see the same Redis, key prefix and transport options (a bare `celery -b URL` would
miss the key prefix). It loads no task modules: the tools work from the broker alone, and must
not import the render stack.
"""

from __future__ import annotations

from dispatch.celery_app import make_celery_app
from ops.settings import Settings

app = make_celery_app(Settings().celery_config(), task_modules=())
