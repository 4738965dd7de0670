"""The metrics the alert rules need beyond the job counts: worker heartbeats, leases nobody
reaped, and storage errors on both sides (workers' failed attempts, the API's 503 answers)."""

from __future__ import annotations

import re
from datetime import timedelta

from fastapi.testclient import TestClient

from api import create_app
from api.config import ApiConfig
from api.metrics import Metrics
from api.services import Services
from db import leases, upkeep
from db.failures import Failure
from db.models import utcnow
from storage import keys
from storage.base import StorageError
from storage.local import LocalStorage
from tests.conftest import make_api_key
from tests.factories import lease_for
from worker.errors import describe


def sample(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{labels} not in the metrics"
    return float(match.group(1))


def scrape(metrics: Metrics) -> str:
    metrics.refresh()
    return metrics.render().decode()


def failure_of(exc: Exception) -> Failure:
    """The failure a worker records for an attempt that raised `exc` (as worker.lifecycle)."""
    try:
        raise exc
    except Exception as raised:
        return describe(raised)


def test_heartbeat_age_and_leases_that_nobody_reaped(db, create_job):
    metrics = Metrics(db)
    text = scrape(metrics)
    assert sample(text, "longtake_heartbeat_oldest_age_seconds") == 0
    assert sample(text, "longtake_progress_oldest_age_seconds") == 0
    assert sample(text, "longtake_leases_expired") == 0

    now = utcnow()
    fresh, stale, _queued = create_job(db), create_job(db), create_job(db)
    with db.transaction() as s:
        leases.claim(s, fresh.id, "gpu-1", 120, now=now - timedelta(seconds=5))
        lease = leases.claim(s, stale.id, "gpu-2", 120, now=now - timedelta(seconds=400))
        # the stale worker's last heartbeat was 300 s ago; its lease ran out 180 s ago
        leases.heartbeat(
            s, lease_for(stale.id, "gpu-2", lease.attempt), 120, now=now - timedelta(seconds=300)
        )
    text = scrape(metrics)
    assert 300 <= sample(text, "longtake_heartbeat_oldest_age_seconds") < 330
    assert 400 <= sample(text, "longtake_progress_oldest_age_seconds") < 430  # since its claim
    assert sample(text, "longtake_leases_expired") == 1
    assert sample(text, "longtake_queue_depth") == 1  # `_queued` is still waiting

    with db.transaction() as s:
        assert [r.job_id for r in upkeep.reap_expired(s)] == [stale.id]
    text = scrape(metrics)
    assert sample(text, "longtake_leases_expired") == 0
    assert 0 < sample(text, "longtake_heartbeat_oldest_age_seconds") < 60  # `fresh` alone
    assert sample(text, "longtake_job_events_total", '{event="lease_expired"}') == 1
    assert sample(text, "longtake_queue_depth") == 2  # `_queued` and the requeued `stale`


def test_progress_age_is_the_running_job_that_moved_least_recently(db, create_job):
    """Heartbeats keep a hung render's lease alive; its progress age still grows."""
    metrics = Metrics(db)
    now = utcnow()
    hung, busy = create_job(db), create_job(db)
    with db.transaction() as s:
        hung_lease = leases.claim(s, hung.id, "gpu-1", 120, now=now - timedelta(seconds=600))
        leases.update_progress(s, lease_for(hung.id, "gpu-1", hung_lease.attempt), clips_done=1,
            now=now - timedelta(seconds=500),
        )  # fmt: skip
        busy_lease = leases.claim(s, busy.id, "gpu-2", 120, now=now - timedelta(seconds=30))
        # the hung worker's heartbeat thread still runs
        leases.heartbeat(s, lease_for(hung.id, "gpu-1", hung_lease.attempt), 120, now=now)
        leases.update_progress(
            s,
            lease_for(busy.id, "gpu-2", busy_lease.attempt),
            clips_done=3,
            now=now,
        )
    text = scrape(metrics)
    assert 500 <= sample(text, "longtake_progress_oldest_age_seconds") < 530
    assert 30 <= sample(text, "longtake_heartbeat_oldest_age_seconds") < 60  # busy's claim
    assert sample(text, "longtake_leases_expired") == 0

    with db.transaction() as s:
        leases.mark_stitching(
            s, lease_for(hung.id, "gpu-1", hung_lease.attempt)
        )  # stitching is not rendering
    assert 0 <= sample(scrape(metrics), "longtake_progress_oldest_age_seconds") < 30


def test_attempts_failed_by_storage_count_as_worker_storage_errors(db, create_job):
    metrics = Metrics(db)
    text = scrape(metrics)
    assert sample(text, "longtake_storage_errors_total", '{source="worker"}') == 0
    assert sample(text, "longtake_storage_errors_total", '{source="api"}') == 0

    unreachable = StorageError("could not put 'jobs/x/segments/00000.mp4' in bucket b: timed out")
    cases = [
        (unreachable, True),  # retried: a retry_scheduled event
        (unreachable, False),  # out of attempts: a failed event
        (RuntimeError("CUDA out of memory"), False),  # not storage
        (ValueError("StorageError: a message that only mentions it"), False),
    ]
    for exc, retryable in cases:
        job = create_job(db, max_attempts=3 if retryable else 1)
        with db.transaction() as s:
            lease = leases.claim(s, job.id, "gpu-1", 60)
            leases.mark_failed(
                s, lease_for(job.id, "gpu-1", lease.attempt), failure_of(exc), retryable=retryable
            )
    text = scrape(metrics)
    assert sample(text, "longtake_job_events_total", '{event="retry_scheduled"}') == 1
    assert sample(text, "longtake_job_events_total", '{event="failed"}') == 3
    assert sample(text, "longtake_storage_errors_total", '{source="worker"}') == 2
    # counted once: a second scrape reads no event twice
    assert sample(scrape(metrics), "longtake_storage_errors_total", '{source="worker"}') == 2


def test_api_answers_that_storage_is_unavailable_are_counted(sqlite_db, create_job, tmp_path):
    # local storage without a signer cannot make a result URL: a StorageError, answered 503
    services = Services(
        config=ApiConfig(), database=sqlite_db, storage=LocalStorage(tmp_path / "objects")
    )
    job = create_job(sqlite_db, clips_total=1)
    with sqlite_db.transaction() as s:
        lease = leases.claim(s, job.id, "gpu-1", 60)
        leases.mark_stitching(s, lease_for(job.id, "gpu-1", lease.attempt))
        leases.mark_succeeded(s, lease_for(job.id, "gpu-1", lease.attempt), keys.output_key(job.id))
    headers = {"Authorization": f"Bearer {make_api_key(sqlite_db)}"}
    with TestClient(create_app(services), headers=headers) as client:
        r = client.get(f"/v1/jobs/{job.id}/result")
        assert (r.status_code, r.json()["error"]["code"]) == (503, "storage_unavailable")
        assert client.get(f"/v1/jobs/{job.id}").status_code == 200  # not every answer counts
        text = client.get("/metrics").text
    assert sample(text, "longtake_storage_errors_total", '{source="api"}') == 1
    assert sample(text, "longtake_storage_errors_total", '{source="worker"}') == 0
