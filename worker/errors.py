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

from db.failures import Failure
from pipeline.inputs import InputError
from storage.base import ObjectNotFound, StorageError

TRACEBACK_FRAMES = 8


class JobInputError(ValueError):
    """An input of the job cannot be used (missing from storage, or undecodable)."""


def is_retryable(exc: BaseException) -> bool:
    for e in _chain(exc):
        if isinstance(e, (ObjectNotFound, JobInputError, InputError)):
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


def describe(exc: BaseException) -> Failure:
    """The failure as the job's owner reads it (what went wrong, what to do) and as an
    operator does (`Type: message` and the innermost frames of the traceback)."""
    head = f"{type(exc).__name__}: {exc}".strip()
    frames = traceback.extract_tb(exc.__traceback__)[-TRACEBACK_FRAMES:]
    lines = [f"  {f.filename}:{f.lineno} in {f.name}" for f in frames]
    detail = head + ("\ntraceback (innermost last):\n" + "\n".join(lines) if lines else "")
    said = _first_line(exc)
    if any(isinstance(e, (ObjectNotFound, JobInputError, InputError)) for e in _chain(exc)):
        message = (
            f"the job's inputs cannot be rendered ({said}); submit it again with inputs that can"
        )
        return Failure(message, "input", detail)
    if is_retryable(exc):
        # the cause's own words name servers, buckets and paths: they stay with the operator
        message = (
            f"the render was interrupted by a {_service_of(exc)} problem; "
            "a retry resumes from the last checkpoint"
        )
        return Failure(message, "infrastructure", detail)
    if "out of memory" in said.lower():
        message = (
            "the GPU ran out of memory at this size; submit the job again at a smaller size, "
            "or ask the operator for a larger GPU"
        )
        return Failure(message, "render", detail)
    message = (
        f"the render failed ({type(exc).__name__}: {said}); the operator has the details, "
        "and a retry resumes from the last checkpoint once the cause is fixed"
    )
    return Failure(message, "render", detail)


def _service_of(exc: BaseException) -> str:
    for e in _chain(exc):
        if isinstance(e, StorageError):
            return "storage"
        if isinstance(e, sa_exc.DBAPIError):
            return "database"
        if isinstance(e, (ConnectionError, TimeoutError)):
            return "network"
    return "local disk"


def _first_line(exc: BaseException) -> str:
    """The exception's own words, first line only (no traceback, no chained causes)."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
