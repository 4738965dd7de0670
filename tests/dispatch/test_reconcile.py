"""The storage reconciler: after a pass the bucket holds exactly the documented layout for
each job's row, and nothing younger than the grace period is touched."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from db import job_store, leases, uploads
from db.models import utcnow
from db.segments import Segment
from dispatch.reconcile import StorageReconciler
from storage import keys
from tests.factories import failure

GRACE_S = 3600


def later():
    """A pass run long after everything here was written: nothing is young any more."""
    return utcnow() + timedelta(seconds=2 * GRACE_S)


def put(storage, *names: str) -> None:
    for name in names:
        storage.put_bytes(name, b"x")


def objects_of(job_id: uuid.UUID) -> dict[str, str]:
    p = keys.job_prefix(job_id)
    return {
        "image": f"{p}inputs/image.png",
        "audio": f"{p}inputs/audio.wav",
        "seg0": keys.segment_key(job_id, 0),
        "seg1": keys.segment_key(job_id, 1),
        "ckpt2": keys.checkpoint_manifest_key(job_id, 2),
        "ckpt2_shard": keys.checkpoint_key(job_id, 2, "step-0.safetensors"),
        "ckpt4": keys.checkpoint_manifest_key(job_id, 4),
        "output": keys.output_key(job_id),
        "manifest": keys.manifest_key(job_id),
    }


def lease_of(db, job):
    with db.transaction() as s:
        return leases.claim(s, job.id, "w1", 60)


def record_interval(db, lease, index: int, clip: int) -> None:
    seg = Segment(index, keys.segment_key(lease.job_id, index), index * 2, 2, 96, 1, "a" * 64)
    with db.transaction() as s:
        leases.record_segment(s, lease, seg)
        leases.record_checkpoint(s, lease, clip)


@pytest.mark.parametrize("keep_segments", [False, True])
def test_each_job_keeps_exactly_what_its_row_accounts_for(db, storage, create_job, keep_segments):
    # a job whose worker was killed after recording the success, before its clean-up
    done = create_job(db)
    lease = lease_of(db, done)
    record_interval(db, lease, 0, 2)
    with db.transaction() as s:
        leases.mark_stitching(s, lease)
        leases.mark_succeeded(s, lease, keys.output_key(done.id))
    # a failed job: its resume point is segment 0 and the checkpoint at clip 2; a worker that
    # had lost its lease wrote segment 1 and a checkpoint at clip 4 after it
    failed = create_job(db)
    lease = lease_of(db, failed)
    record_interval(db, lease, 0, 2)
    with db.transaction() as s:  # a newer checkpoint on a node's disk: the bucket keeps clip 2
        leases.record_checkpoint(s, lease, 4, tier="local", node="node-a")
        leases.mark_failed(s, lease, failure("boom"))
    running = create_job(db)
    lease_of(db, running)
    orphan = uuid.uuid4()  # an API killed between storing the inputs and writing the row
    for job_id in (done.id, failed.id, running.id, orphan):
        put(storage, *objects_of(job_id).values())
    put(storage, "jobs/not-a-job-id/x.bin")

    reconciler = StorageReconciler(db, storage, grace_s=GRACE_S, keep_segments=keep_segments)
    result = reconciler.run_once(now=later())

    o = objects_of(done.id)
    segs = {o["seg0"], o["seg1"]} if keep_segments else set()
    expected_done = {o["image"], o["audio"], o["output"], o["manifest"], *segs}
    f = objects_of(failed.id)
    expected_failed = {f["image"], f["audio"], f["seg0"], f["ckpt2"], f["ckpt2_shard"]}
    assert set(storage.list(keys.job_prefix(done.id))) == expected_done
    assert set(storage.list(keys.job_prefix(failed.id))) == expected_failed
    assert set(storage.list(keys.job_prefix(running.id))) == set(objects_of(running.id).values())
    assert storage.list(keys.job_prefix(orphan)) == []
    assert not storage.exists("jobs/not-a-job-id/x.bin")
    # a second pass finds nothing more: the layout is reached in one pass
    assert reconciler.run_once(now=later()).deleted == []
    assert len(result.deleted) == len(set(result.deleted))


def test_uploads_without_a_row_go_and_young_garbage_stays(db, storage):
    with db.transaction() as s:
        uploads.add_upload(
            s,
            uploads.NewUpload(
                id="upl_0123456789abcdef01234567",
                tenant="default",
                kind="audio",
                sha256="b" * 64,
                key="uploads/upl_0123456789abcdef01234567.wav",
                bytes=1,
                info={},
            ),
        )
    put(storage, "uploads/upl_0123456789abcdef01234567.wav", "uploads/upl_ffffffffffffffff.wav")
    orphan = uuid.uuid4()
    put(storage, *objects_of(orphan).values())
    reconciler = StorageReconciler(db, storage, grace_s=GRACE_S)

    now = reconciler.run_once()  # everything was written just now: within the grace period
    assert now.deleted == [] and now.kept_young == len(objects_of(orphan)) + 1

    reconciler.run_once(now=later())
    assert storage.list("uploads/") == ["uploads/upl_0123456789abcdef01234567.wav"]
    assert storage.list(keys.job_prefix(orphan)) == []


def test_a_retried_job_keeps_what_a_resume_needs(db, storage, create_job):
    """Queued again after a failure: active, so nothing of it is touched."""
    job = create_job(db)
    lease = lease_of(db, job)
    record_interval(db, lease, 0, 2)
    with db.transaction() as s:
        leases.mark_failed(s, lease, failure("boom"))
        job_store.retry(s, job.id, attempts=1)
    put(storage, *objects_of(job.id).values())
    StorageReconciler(db, storage, grace_s=GRACE_S).run_once(now=later())
    assert set(storage.list(keys.job_prefix(job.id))) == set(objects_of(job.id).values())
