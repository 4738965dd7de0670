"""The bucket holds exactly the documented layout: remove what no row accounts for.

Each of a job's objects is expected while its row says so (storage/keys.py has the layout):

    no row                   nothing (an API killed in the middle of a submission stored
                             the inputs and never wrote the row)
    queued, running,         everything: a worker may be writing (left alone)
    stitching
    succeeded                inputs, output.mp4, output.manifest.json, and the segments
                             when the deployment keeps them; no checkpoint (a worker killed
                             between recording the success and its clean-up leaves them)
    failed, canceled         inputs, the recorded segments and the bucket's recorded checkpoint
                             (the resume point; the sweeper expires it later); nothing else
                             (a worker that lost its lease may have written more)

Under `uploads/`, an object is expected while an upload row names it. Anything else is garbage
and is deleted, but only once it is older than a grace period, so that writes in flight (a
submission between storing its inputs and committing its row, a clean-up still running) are
never raced. The pass is idempotent: run it as often as you like, anywhere.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from db import upkeep
from db.database import Database
from db.models import utcnow
from db.states import JobStatus
from storage import keys
from storage.base import Storage, StoredObject

log = logging.getLogger(__name__)

_BATCH = 500  # ids per database query
_ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.STITCHING)


@dataclass
class ReconcileResult:
    deleted: list[str] = field(default_factory=list)
    kept_young: int = 0
    """Garbage not yet older than the grace period (deleted by a later pass)."""


def expected(
    job: upkeep.StoredJob | None, key: str, job_id: uuid.UUID, keep_segments: bool
) -> bool:
    """Whether `key`, one of job `job_id`'s objects, belongs in the layout for its row."""
    if job is None:
        return False
    if job.status in _ACTIVE:
        return True
    prefix = keys.job_prefix(job_id)
    if key.startswith(f"{prefix}inputs/"):
        return True
    if job.status is JobStatus.SUCCEEDED:
        if key in (keys.output_key(job_id), keys.manifest_key(job_id)):
            return True
        return keep_segments and key.startswith(keys.segments_prefix(job_id))
    # failed or canceled: the resume point
    if key in job.segment_keys:
        return True
    clip = job.remote_checkpoint_clip
    return clip is not None and clip > 0 and key.startswith(keys.checkpoint_prefix(job_id, clip))


class StorageReconciler:
    def __init__(
        self,
        database: Database,
        storage: Storage,
        *,
        grace_s: float,
        keep_segments: bool = False,
        interval_s: float = 3600.0,
    ):
        if grace_s <= 0:
            raise ValueError("grace_s must be positive: objects being written must be left alone")
        self.database = database
        self.storage = storage
        self.grace_s = grace_s
        self.keep_segments = keep_segments
        self.interval_s = interval_s
        self._next_run = 0.0

    def maybe_run(self) -> ReconcileResult | None:
        """One pass when `interval_s` has passed since the last one (the relay's loop)."""
        if time.monotonic() < self._next_run:
            return None
        self._next_run = time.monotonic() + self.interval_s
        try:
            return self.run_once()
        except Exception:  # storage or database trouble: the next pass tries again
            log.exception("storage reconcile pass failed")
            return None

    def run_once(self, *, now: datetime | None = None) -> ReconcileResult:
        cutoff = (now or utcnow()) - timedelta(seconds=self.grace_s)
        result = ReconcileResult()
        garbage: list[StoredObject] = []

        by_job: dict[uuid.UUID, list[StoredObject]] = defaultdict(list)
        for obj in self.storage.list_objects("jobs/"):
            job_id = _job_of(obj.key)
            if job_id is None:
                garbage.append(obj)  # not a job's key at all
            else:
                by_job[job_id].append(obj)
        ids = list(by_job)
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start : start + _BATCH]
            with self.database.transaction() as s:
                rows = upkeep.stored_jobs(s, chunk)
            for job_id in chunk:
                row = rows.get(job_id)
                garbage.extend(
                    obj
                    for obj in by_job[job_id]
                    if not expected(row, obj.key, job_id, self.keep_segments)
                )

        uploads = self.storage.list_objects("uploads/")
        for start in range(0, len(uploads), _BATCH):
            chunk = uploads[start : start + _BATCH]
            with self.database.transaction() as s:
                known = upkeep.known_upload_keys(s, [o.key for o in chunk])
            garbage.extend(o for o in chunk if o.key not in known)

        for obj in garbage:
            if obj.modified > cutoff:
                result.kept_young += 1
                continue
            self.storage.delete(obj.key)
            result.deleted.append(obj.key)
        if result.deleted:
            log.info("removed %d objects that no job or upload accounts for", len(result.deleted))
        return result


def _job_of(key: str) -> uuid.UUID | None:
    """The job id of a `jobs/<id>/...` key (None for anything else under jobs/)."""
    parts = key.split("/")
    if len(parts) < 3:
        return None
    try:
        return uuid.UUID(parts[1])
    except ValueError:
        return None
