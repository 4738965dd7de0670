"""Two-tier checkpoints with the tiny model on the CPU: the node's disk every interval, the
bucket by budget. A restart on the same node resumes from its disk without a download, a job
whose node is gone resumes from the bucket, a damaged local checkpoint is never used, a full
disk skips the local tier and the job still completes, a shutdown promotes its newest local
checkpoint to the bucket, and a requeued job waits for its node's workers for a while.

Every resumed video is compared frame for frame with one rendered without interruption."""

from __future__ import annotations

import json
import shutil
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from db import leases, outbox, upkeep
from db.capabilities import Capabilities
from db.models import utcnow
from storage import keys
from storage.local import LocalStorage
from tests.worker.lifecycle_helpers import (
    ClipLog,
    config,
    events,
    job,
    make_job,
    output_hashes,
    shut_down_during_clip_2,
)
from worker.lifecycle import ClipDone, Lifecycle, Outcome
from worker.tiers import SEAL, LocalTier, RemotePolicy, TierSettings

pytestmark = pytest.mark.slow

NEVER = dict(upload_bytes_per_s=1.0, upload_max_interval_s=0)  # the budget never allows it


class CountingStorage(LocalStorage):
    """Local storage that counts the checkpoint files read back from it."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.checkpoint_reads: list[str] = []

    def get_file(self, key, path):
        if "/checkpoints/" in key:
            self.checkpoint_reads.append(key)
        super().get_file(key, path)


def tiered(tmp_path: Path, node: str = "node-a", **tiers) -> object:
    return config(tmp_path, tiers=TierSettings(node=node, **tiers))


def first_attempt_until_clip_3(sqlite_db, storage, tmp_path, clip_log, **tiers):
    """The standard job's first attempt, stopped (as SIGTERM does) after clip 2: it checkpoints
    at clip 3 with the open interval's frames."""
    job_id = make_job(sqlite_db, storage)
    first = Lifecycle(tiered(tmp_path, **tiers), sqlite_db, storage, on_clip=clip_log)
    assert shut_down_during_clip_2(first, job_id, clip_log) is Outcome.RELEASED
    return job_id


def test_a_restart_on_the_same_node_resumes_from_its_disk_without_a_download(
    sqlite_db, tmp_path, reference
):
    storage, clip_log = CountingStorage(tmp_path / "objects"), ClipLog()
    job_id = first_attempt_until_clip_3(sqlite_db, storage, tmp_path, clip_log, **NEVER)
    row = job(sqlite_db, job_id)
    # the budget kept every state in the local tier, and the shutdown found no time measured
    # for an upload and promoted the newest: the bucket has clip 3 too
    assert (row.local_checkpoint_clip, row.local_checkpoint_node) == (3, "node-a")
    storage.checkpoint_reads.clear()
    second = Lifecycle(tiered(tmp_path, **NEVER), sqlite_db, storage, on_clip=clip_log)
    assert second.run(job_id) is Outcome.SUCCEEDED
    assert second.last_stats.resumed_from_tier == "local"
    assert storage.checkpoint_reads == []  # not one checkpoint file downloaded
    assert clip_log.generated(job_id, 2) == [3, 4]
    assert output_hashes(storage, job_id, tmp_path) == reference
    assert not (tmp_path / "scratch" / "checkpoints" / str(job_id)).exists()  # cleaned up


def test_a_job_whose_node_is_gone_resumes_from_the_bucket(
    sqlite_db, local_storage, tmp_path, reference
):
    clip_log = ClipLog()
    job_id = first_attempt_until_clip_3(sqlite_db, local_storage, tmp_path, clip_log)
    assert job(sqlite_db, job_id).remote_checkpoint_clip == 3
    shutil.rmtree(tmp_path / "scratch" / "checkpoints")  # node-a and its disk are gone
    other = Lifecycle(tiered(tmp_path, node="node-b"), sqlite_db, local_storage, on_clip=clip_log)
    assert other.run(job_id) is Outcome.SUCCEEDED
    assert other.last_stats.resumed_from_tier == "remote"
    assert clip_log.generated(job_id, 2) == [3, 4]
    assert output_hashes(local_storage, job_id, tmp_path) == reference


def damage(directory: Path, name: str, at: int) -> None:
    """Flip every bit of one byte of a file of a checkpoint, its size unchanged."""
    path = directory / name
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "where",
    [
        pytest.param("shard", id="a-shard's-last-byte"),  # the open succeeds on wrong data
        pytest.param("manifest", id="the-manifest's-first-byte"),  # the open trips on it
    ],
)
def test_a_damaged_local_checkpoint_is_never_used(
    sqlite_db, local_storage, tmp_path, reference, where
):
    """Its CRCs are read beside the open; the damage is found before any clip is rendered from
    it, and the same attempt resumes from the bucket."""
    clip_log = ClipLog()
    job_id = first_attempt_until_clip_3(sqlite_db, local_storage, tmp_path, clip_log)
    local = LocalTier(tmp_path / "scratch" / "checkpoints").directory(job_id, 3)
    seal = json.loads((local / SEAL).read_text())
    if where == "shard":
        damage(local, sorted(n for n in seal["files"] if n.endswith(".safetensors"))[0], -1)
    else:
        damage(local, "manifest.json", 0)
    assert LocalTier(local.parent.parent).valid(local, verify=False)  # sizes as sealed
    second = Lifecycle(tiered(tmp_path), sqlite_db, local_storage, on_clip=clip_log)
    assert second.run(job_id) is Outcome.SUCCEEDED
    assert second.last_stats.resumed_from_tier == "remote"  # the bucket's copy instead
    assert clip_log.generated(job_id, 2) == [3, 4]  # nothing rendered from the damaged one
    assert output_hashes(local_storage, job_id, tmp_path) == reference


def test_a_full_disk_skips_the_local_tier_and_the_job_completes(
    sqlite_db, local_storage, tmp_path, reference
):
    clip_log = ClipLog()
    job_id = make_job(sqlite_db, local_storage)
    full = tiered(tmp_path, local_reserve_bytes=1 << 62)  # no disk has that much free
    assert Lifecycle(full, sqlite_db, local_storage, on_clip=clip_log).run(job_id) is (
        Outcome.SUCCEEDED
    )
    skipped = [r for e, r in events(sqlite_db, job_id) if e == "local_checkpoint_skipped"]
    assert skipped and "no room on node-a" in skipped[0]
    assert job(sqlite_db, job_id).local_checkpoint_clip is None
    assert output_hashes(local_storage, job_id, tmp_path) == reference


def test_a_shutdown_promotes_the_newest_local_checkpoint(sqlite_db, local_storage, tmp_path):
    """Between boundaries the budget keeps checkpoints local; on SIGTERM the newest goes to the
    bucket (the node may not come back)."""
    job_id = make_job(sqlite_db, local_storage)
    clip_log = ClipLog()
    lifecycle = Lifecycle(tiered(tmp_path, **NEVER), sqlite_db, local_storage, on_clip=clip_log)

    def stop_after_the_boundary(done: ClipDone) -> None:
        if (done.job_id, done.clip) == (job_id, 2):  # clip 2 is the first of interval 1
            lifecycle.request_shutdown()

    clip_log.hooks.append(stop_after_the_boundary)
    assert lifecycle.run(job_id) is Outcome.RELEASED
    row = job(sqlite_db, job_id)
    assert row.remote_checkpoint_clip == row.local_checkpoint_clip == 3
    assert local_storage.exists(keys.checkpoint_manifest_key(job_id, 3))
    history = [r for e, r in events(sqlite_db, job_id) if e == "checkpoint"]
    assert history == [
        "checkpoint at clip 2 on node-a",  # the budget: not to the bucket
        "checkpoint at clip 3 on node-a",  # the shutdown's, with the open interval
        "checkpoint at clip 3 in the bucket",
    ]


def test_a_requeued_job_waits_for_its_nodes_workers_then_for_anyone(db, create_job):
    job_row = create_job(db)
    with db.transaction() as s:
        lease = leases.claim(s, job_row.id, "a1", 60)
        leases.record_checkpoint(s, lease, 4, tier="local", node="node-a")
        leases.record_checkpoint(s, lease, 2)
        leases.release(s, lease, prefer_local_s=120)
    now = utcnow()
    node_a, node_b = (Capabilities(node=n) for n in ("node-a", "node-b"))
    with db.transaction() as s:
        assert leases.claim_next(s, "b1", 60, serves=node_b, now=now) is None
        assert leases.claim(s, job_row.id, "b1", 60, serves=node_b, now=now) is None

        # the wake-up for node-a's workers is due now; everyone's when the wait is over
        def released(at):
            return [
                m.topic
                for m in outbox.lock_unsent(s, now=at)
                if m.job_id == job_row.id and m.reason == "released"
            ]

        later = now + timedelta(seconds=121)
        due_now, due_later = released(now), released(later)
    assert due_now == ["render@node-a"]
    assert sorted(due_later) == ["render", "render@node-a"]
    with db.transaction() as s:  # after the wait anyone may take it
        lease = leases.claim_next(s, "b1", 60, serves=node_b, now=later)
    assert lease is not None and lease.checkpoints.local_node == "node-a"

    # a reaped job (its worker died) waits for its node the same way
    other = create_job(db)
    with db.transaction() as s:
        dead = leases.claim(s, other.id, "a2", 1, now=now - timedelta(seconds=10))
        leases.record_checkpoint(s, dead, 2, tier="local", node="node-a", now=now)
        upkeep.reap_expired(s, prefer_local_s=120, now=now)
    with db.transaction() as s:
        assert leases.claim_next(s, "b2", 60, serves=node_b, now=now) is None
        assert leases.claim_next(s, "a3", 60, serves=node_a, now=now).job_id == other.id


def test_the_budget_decides_when_a_checkpoint_goes_to_the_bucket():
    clock = [0.0]
    settings = TierSettings(node="n", upload_bytes_per_s=100.0, upload_max_interval_s=60)
    policy = RemotePolicy(settings, clock=lambda: clock[0])
    clock[0] = 5.0
    assert not policy.due(1000)  # 1000 bytes need 10 s of budget
    clock[0] = 10.0
    assert policy.due(1000)
    policy.uploaded()
    clock[0] = 70.0
    assert policy.due(10**9)  # far over budget, but an hour... the longest interval is up
    assert RemotePolicy(TierSettings(node="n", local=False)).due(10**12)  # no local tier


def test_a_seal_checks_every_chunk_of_every_file(tmp_path, monkeypatch):
    from worker import tiers

    monkeypatch.setattr(tiers, "CRC_CHUNK", 1024)  # many chunks from small files
    local = LocalTier(tmp_path)
    d = tmp_path / "job" / "000004"
    d.mkdir(parents=True)
    (d / "step-0.safetensors").write_bytes(bytes(range(256)) * 40)  # 10 chunks
    (d / "manifest.json").write_text("{}")
    assert local.seal(d) == 10240 + 2
    seal = json.loads((d / SEAL).read_text())
    assert len(seal["files"]["step-0.safetensors"]["crc32"]) == 10
    assert local.valid(d, verify=True)

    data = bytearray((d / "step-0.safetensors").read_bytes())
    data[5 * 1024 + 17] ^= 0x01  # one bit, in the middle chunk
    (d / "step-0.safetensors").write_bytes(bytes(data))
    assert local.valid(d, verify=False)  # sizes alone cannot tell
    assert not local.valid(d, verify=True)

    local.seal(d)
    monkeypatch.setattr(tiers, "CRC_CHUNK", 4096)  # sealed with another chunk size
    assert not local.valid(d, verify=True)


def test_each_chunks_crc_is_the_crc_of_its_own_bytes(tmp_path, monkeypatch):
    """The summing threads reuse their chunk buffers: a short last chunk, read into a buffer
    that held a whole chunk before, is summed over its own bytes only."""
    import random
    import zlib

    from worker import tiers

    monkeypatch.setattr(tiers, "CRC_CHUNK", 1000)
    monkeypatch.setattr(tiers, "CRC_THREADS", 2)
    rng = random.Random(3)
    files = {
        tmp_path / name: rng.randbytes(size)
        for name, size in (("a", 5000), ("b", 2500), ("c", 1), ("d", 999), ("e", 0))
    }
    for path, data in files.items():
        path.write_bytes(data)
    got = tiers._chunk_crcs(list(files))
    for path, data in files.items():
        want = [zlib.crc32(data[at : at + 1000]) for at in range(0, max(len(data), 1), 1000)]
        assert got[path] == want, path.name


def test_the_local_checkpoint_is_checked_beside_the_open(
    sqlite_db, local_storage, tmp_path, reference, monkeypatch
):
    """Reading the CRCs of a 14B state takes seconds: they are read while the stream opens
    (the restore included), not before it; the first clip waits for them."""
    from pipeline.generator import Generator

    clip_log = ClipLog()
    job_id = first_attempt_until_clip_3(sqlite_db, local_storage, tmp_path, clip_log)
    opening, seen = threading.Event(), {}
    open_stream, check = Generator.open, LocalTier.valid

    def open_noting(self, *args, **kwargs):
        opening.set()
        return open_stream(self, *args, **kwargs)

    def check_once_opening(self, directory, *, verify):
        if verify:  # the worker's CRC check of the resumed checkpoint
            # the open sets the event; the timeout only ends the deadlock a check made before
            # the open would be (the open would wait for this check forever)
            seen["open_began_first"] = opening.wait(timeout=600)
        return check(self, directory, verify=verify)

    monkeypatch.setattr(Generator, "open", open_noting)
    monkeypatch.setattr(LocalTier, "valid", check_once_opening)
    second = Lifecycle(tiered(tmp_path), sqlite_db, local_storage, on_clip=clip_log)
    assert second.run(job_id) is Outcome.SUCCEEDED
    assert second.last_stats.resumed_from_tier == "local"
    assert seen == {"open_began_first": True}
    assert output_hashes(local_storage, job_id, tmp_path) == reference
