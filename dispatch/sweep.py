"""Expire the resume points of failed and canceled jobs.

A failed or canceled job keeps its last checkpoint and its segments so that a retry resumes
instead of starting over; with the 14B model a checkpoint is ~48 GB. After a retention period
(`LONGTAKE_RESUME_RETENTION_DAYS`) nobody is going to retry, and the sweep deletes those files
and forgets them in the database: a later retry still works, from clip 0. Inputs and the job's
history are kept.

For each job the database row stays locked while its files are deleted, so a retry that comes
at the same moment waits and then starts over, never resuming from a half-deleted checkpoint.
If a deletion fails, the transaction rolls back and the next pass tries again; the checkpoint's
manifest may be gone by then, and a resume from it starts over by itself.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from db import upkeep
from db.database import Database
from db.models import utcnow
from storage import keys
from storage.base import Storage

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    dropped: list[uuid.UUID] = field(default_factory=list)
    objects_deleted: int = 0
    failed: list[uuid.UUID] = field(default_factory=list)


class ResumePointSweeper:
    def __init__(
        self,
        database: Database,
        storage: Storage,
        *,
        retention_s: float,
        interval_s: float = 3600.0,
        batch_size: int = 100,
    ):
        if retention_s <= 0:
            raise ValueError("retention_s must be positive (leave the sweeper out to keep all)")
        self.database = database
        self.storage = storage
        self.retention_s = retention_s
        self.interval_s = interval_s
        self.batch_size = batch_size
        self._next_run = 0.0

    def due(self) -> bool:
        return time.monotonic() >= self._next_run

    def maybe_run(self) -> SweepResult | None:
        """One pass when `interval_s` has passed since the last one (the relay's loop)."""
        if not self.due():
            return None
        self._next_run = time.monotonic() + self.interval_s
        return self.run_once()

    def run_once(self, *, now: datetime | None = None) -> SweepResult:
        now = now or utcnow()
        finished_before = now - timedelta(seconds=self.retention_s)
        result = SweepResult()
        with self.database.transaction() as s:
            candidates = upkeep.stale_resume_points(
                s, finished_before=finished_before, limit=self.batch_size
            )
        for job_id in candidates:
            try:
                deleted = self._drop(job_id, finished_before, now)
            except Exception:  # storage or database trouble: this job waits for the next pass
                log.exception("could not drop the resume point of job %s", job_id)
                result.failed.append(job_id)
                continue
            if deleted is not None:
                result.dropped.append(job_id)
                result.objects_deleted += deleted
        if result.dropped:
            log.info(
                "dropped the resume points of %d failed or canceled jobs (%d objects)",
                len(result.dropped),
                result.objects_deleted,
            )
        return result

    def _drop(self, job_id: uuid.UUID, finished_before: datetime, now: datetime) -> int | None:
        days = self.retention_s / 86400
        with self.database.transaction() as s:
            if not upkeep.drop_resume_point(
                s,
                job_id,
                finished_before=finished_before,
                reason=f"checkpoint and segments deleted {days:g} days after the job ended; "
                "a retry starts from clip 0",
                now=now,
            ):
                return None
            # checkpoints before segments: a checkpoint that lost files has lost its resume
            # point anyway, segments that lost some would fail a stitch-only resume
            deleted = self.storage.delete_prefix(keys.checkpoints_prefix(job_id))
            deleted += self.storage.delete_prefix(keys.segments_prefix(job_id))
            return deleted
