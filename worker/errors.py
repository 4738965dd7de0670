"""Failure classification: which errors deserve another attempt, and how they are recorded.

Retryable: the world failed, not the job: storage or network errors and timeouts, the
database going away, local I/O (a full scratch disk). Another attempt (on this worker or
another) may well succeed, and it resumes from the last checkpoint. (A lost lease is not a
failure of the job at all: the attempt stops and writes nothing; the job is someone else's.)

Not retryable: the job itself is the problem: inputs that turn out bad only now (a file that
no longer decodes, an input deleted from storage), requests the model rejects, model errors
(CUDA out of memory at this size), ffmpeg refusing the segments. Retrying would fail the same
way, so the job fails at once with its error. Unknown errors count as not retryable: a job
that fails in a new way should stop and be looked at, not loop. Whatever the class, a job
never runs more than `max_attempts` times.
"""

from __future__ import annotations

import traceback

import sqlalchemy.exc as sa_exc

from storage.base import ObjectNotFound, StorageError

MAX_ERROR_CHARS = 4000
TRACEBACK_FRAMES = 8


class JobInputError(ValueError):
    """An input of the job cannot be used (missing from storage, or undecodable)."""


def is_retryable(exc: BaseException) -> bool:
    for e in _chain(exc):
        if isinstance(e, (ObjectNotFound, JobInputError)):
            return False
        if isinstance(e, (StorageError, ConnectionError, TimeoutError)):
            return True
        if isinstance(e, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            return True
        if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
            return True
        # Local I/O (disk full, a vanished scratch directory). Only OSError itself and its
        # I/O subclasses: FileNotFoundError of an input is wrapped in JobInputError above.
        if type(e) is OSError or isinstance(e, (BlockingIOError, InterruptedError)):
            return True
    return False


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its explicit causes (`raise ... from`), outermost first. Implicit
    context is left out: an error raised while another was being handled is not caused by it."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__
    return seen


def describe(exc: BaseException) -> str:
    """`Type: message` then a short traceback (innermost frames), for the job's error field."""
    head = f"{type(exc).__name__}: {exc}".strip()
    frames = traceback.extract_tb(exc.__traceback__)[-TRACEBACK_FRAMES:]
    lines = [f"  {f.filename}:{f.lineno} in {f.name}" for f in frames]
    text = head + ("\ntraceback (innermost last):\n" + "\n".join(lines) if lines else "")
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 3] + "..."
    return text
