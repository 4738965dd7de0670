"""Retrying operations on external services with exponential backoff.

Only errors that `worker.errors.is_retryable` accepts are retried: a missing object or a
rejected request fails at once. Every operation retried here is idempotent (uploads to fixed
keys, downloads, deletes, lease-guarded database writes), so a retry after a failure that
happened on the far side (the object was stored, the reply was lost) does no harm.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from worker.config import RetryPolicy
from worker.errors import is_retryable

log = logging.getLogger(__name__)
T = TypeVar("T")


def with_retries(
    operation: Callable[[], T],
    what: str,
    policy: RetryPolicy,
    *,
    stop: threading.Event | None = None,
) -> T:
    """Run `operation`; on a retryable error wait and try again, up to `policy.attempts` times.

    `stop`, when set, ends the waiting early (the last error is raised then).
    """
    failures = 0
    while True:
        try:
            return operation()
        except Exception as exc:
            failures += 1
            if not is_retryable(exc) or failures >= policy.attempts:
                raise
            delay = policy.delay(failures)
            log.warning(
                "%s failed (%s: %s); retry %d of %d in %.1f s",
                what,
                type(exc).__name__,
                exc,
                failures,
                policy.attempts - 1,
                delay,
            )
            if stop is not None:
                if stop.wait(delay):
                    raise
            else:
                threading.Event().wait(delay)
