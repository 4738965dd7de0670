"""The handle through which a worker does everything it does to its job during one attempt.

A `LeasedJob` is one claimed lease (`db.leases.Lease`) and its verbs: read the job and its
segments, heartbeat, progress, record an interval (segment + checkpoint), stitching, succeed,
fail, cancel, release. Each write runs in a transaction of its own, retried while the database
is away, and is checked against the lease in the database (`db.leases`); once any of them
finds the lease lost, `lost` is set and every later write raises `LeaseLost` at once, without
touching the database or storage. Before every write to storage the worker calls `verify()`,
which asks the database (a worker paused past its lease must not upload into a job that is
someone else's now).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from db import job_store, leases
from db.database import Database
from db.failures import Failure
from db.leases import Lease, LeaseLost
from db.models import Job
from db.segments import Segment
from worker.backoff import with_retries
from worker.config import RetryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")


class LeasedJob:
    def __init__(
        self,
        database: Database,
        lease: Lease,
        *,
        lease_s: float,
        retry: RetryPolicy,
        stop: threading.Event | None = None,
    ):
        self.database = database
        self.lease = lease
        self.lease_s = lease_s
        self.retry = retry
        self.stop = stop if stop is not None else threading.Event()
        """Set when the attempt ends early: database retries stop waiting."""
        self.lost = threading.Event()

    @property
    def job_id(self) -> uuid.UUID:
        return self.lease.job_id

    @property
    def attempt(self) -> int:
        return self.lease.attempt

    @property
    def worker_id(self) -> str:
        return self.lease.worker_id

    def check(self) -> None:
        """LeaseLost if the lease is known to be lost: call before writing anything."""
        if self.lost.is_set():
            raise LeaseLost(self.lease)

    def verify(self) -> None:
        """Confirm in the database that the lease is held (extending it) before a write to
        storage: a worker that was paused past its lease (SIGSTOP, a stalled VM) learns it
        here, not from a heartbeat that has not run yet, and writes nothing."""
        self.check()
        if not self._run(lambda s: leases.heartbeat(s, self.lease, self.lease_s), "heartbeat"):
            self.lost.set()
            raise LeaseLost(self.lease)

    def _run(self, operation: Callable[[Session], T], what: str) -> T:
        """`operation(session)` in a transaction, retried while the database is away."""

        def once() -> T:
            with self.database.transaction() as s:
                return operation(s)

        try:
            return with_retries(once, what, self.retry, stop=self.stop)
        except LeaseLost:
            self.lost.set()
            raise

    def _write(self, operation: Callable[[Session], T], what: str) -> T:
        self.check()
        return self._run(operation, what)

    # ---- reads ---------------------------------------------------------------------------

    def job(self) -> Job:
        job = self._run(lambda s: job_store.get_job(s, self.job_id), "read the job")
        if job is None:
            raise LeaseLost(self.lease)  # deleted under us: nobody holds it any more
        return job

    def segments(self) -> list[Segment]:
        rows = self._run(lambda s: job_store.list_segments(s, self.job_id), "read the segments")
        return [Segment.of(row) for row in rows]

    def cancel_requested(self) -> bool:
        """The cancel flag (False while the database cannot be read: the render goes on)."""
        try:
            with self.database.transaction() as s:
                return leases.is_cancel_requested(s, self.lease)
        except Exception as exc:
            log.warning("job %s: cancel flag not read (%s)", self.job_id, exc)
            return False

    # ---- while rendering -----------------------------------------------------------------

    def heartbeat(self) -> bool:
        """Extend the lease once. False (and `lost` set) if it is lost; raises if the database
        is unreachable (the heartbeat thread tries again at its next beat)."""
        with self.database.transaction() as s:
            held = leases.heartbeat(s, self.lease, self.lease_s)
        if not held:
            self.lost.set()
        return held

    def progress(
        self,
        clips_done: int,
        *,
        fps: float | None = None,
        eta_s: float | None = None,
        clip_s: float | None = None,
    ) -> None:
        """Record progress once (no retries: the next clip reports again). A database that
        cannot be reached is logged and ignored; a lost lease raises."""
        self.check()
        try:
            with self.database.transaction() as s:
                leases.update_progress(
                    s, self.lease, clips_done=clips_done, fps=fps, eta_s=eta_s, clip_s=clip_s
                )
        except LeaseLost:
            self.lost.set()
            raise
        except Exception as exc:  # progress can wait for the database; the render cannot
            log.warning("job %s: progress not recorded (%s)", self.job_id, exc)

    def record_interval(
        self,
        segment: Segment | None,
        checkpoint_clip: int,
        *,
        local_node: str | None = None,
        remote: bool = True,
        duration_s: float = 0.0,
        bytes: int = 0,
    ) -> None:
        """One transaction: the interval's segment (if any) and the checkpoint after it, in
        the tiers it reached: on `local_node`'s disk, in the bucket (`remote`), or neither
        (then the resume point stays where it was)."""

        def record(s: Session) -> None:
            if segment is not None:
                leases.record_segment(s, self.lease, segment)
            if local_node is not None:
                leases.record_checkpoint(
                    s, self.lease, checkpoint_clip, tier="local", node=local_node,
                    duration_s=duration_s, bytes=bytes,
                )  # fmt: skip
            if remote:
                leases.record_checkpoint(
                    s, self.lease, checkpoint_clip, duration_s=duration_s, bytes=bytes
                )

        self._write(record, f"record the checkpoint at clip {checkpoint_clip}")

    def note(self, event: str, reason: str, data: Mapping[str, Any] | None = None) -> None:
        """Record an event of the attempt (a checkpoint skipped, say): logged as a warning
        too; a database that cannot be reached is only logged."""
        log.warning("job %s: %s", self.job_id, reason)
        self.check()
        try:
            with self.database.transaction() as s:
                leases.note(s, self.lease, event, reason, data)
        except LeaseLost:
            self.lost.set()
            raise
        except Exception as exc:
            log.warning("job %s: event %s not recorded (%s)", self.job_id, event, exc)

    # ---- ending the attempt --------------------------------------------------------------

    def stitching(self) -> Job:
        return self._write(lambda s: leases.mark_stitching(s, self.lease), "mark stitching")

    def succeed(self, output_key: str, output: Mapping[str, Any]) -> Job:
        return self._write(
            lambda s: leases.mark_succeeded(s, self.lease, output_key, output=output),
            "record the success",
        )

    def fail(self, failure: Failure, *, retryable: bool, prefer_local_s: float = 0.0) -> Job:
        return self._write(
            lambda s: leases.mark_failed(
                s, self.lease, failure, retryable=retryable, prefer_local_s=prefer_local_s
            ),
            "record the failure",
        )

    def cancel(self) -> Job:
        return self._write(lambda s: leases.mark_canceled(s, self.lease), "record the cancel")

    def release(self, reason: str, *, prefer_local_s: float = 0.0) -> Job:
        return self._write(
            lambda s: leases.release(s, self.lease, reason=reason, prefer_local_s=prefer_local_s),
            "release the job",
        )


class Heartbeat:
    """A thread that extends the lease while the render runs.

    When a beat finds the lease lost (the reaper gave the job to another attempt after this
    worker went silent too long), `lost` is set and the thread ends: the render stops without
    writing anything more. A database that cannot be reached is not a lost lease: the beat is
    tried again at the next interval and the render goes on; if the outage outlasts the lease,
    the first beat after it finds the lease gone.
    """

    def __init__(self, leased: LeasedJob, *, interval_s: float):
        self.leased = leased
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat:{leased.job_id}", daemon=True
        )

    @property
    def lost(self) -> threading.Event:
        return self.leased.lost

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        job_id, attempt = self.leased.job_id, self.leased.attempt
        while not self._stop.wait(self.interval_s):
            try:
                if not self.leased.heartbeat():
                    log.warning("job %s: lease of attempt %d is lost; stopping", job_id, attempt)
                    return
            except Exception as exc:  # the database is down: keep rendering, beat again later
                log.warning("job %s: heartbeat failed (%s); will retry", job_id, exc)
