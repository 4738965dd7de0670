"""What /metrics really exports: a job of every fate driven through the repository on SQLite,
then one scrape of the API. The rules and the dashboard are checked against that scrape."""

from __future__ import annotations

import shutil
import uuid
from collections import defaultdict
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from api.config import ApiConfig
from api.services import Services
from db import job_store, leases, upkeep
from db.database import Database
from db.models import Job, utcnow
from db.segments import Segment
from storage import keys
from storage.local import LocalStorage
from tests.factories import failure, job_params, lease_for


def create_job(database: Database, **overrides) -> Job:
    job_id = uuid.uuid4()
    fields = dict(
        id=job_id,
        tenant="default",
        params=job_params(size="64*64", width=64, height=64),
        image_key=f"jobs/{job_id}/inputs/image.png",
        audio_key=f"jobs/{job_id}/inputs/audio.wav",
        clips_total=10,
        max_attempts=3,
    )
    with database.transaction() as s:
        return job_store.create_job(s, job_store.NewJob(**{**fields, **overrides}))


def _every_fate(database: Database) -> None:
    """Jobs that succeed, fail (after a retry on a storage error) and are retried, lose their
    worker, are canceled while running, and are released: every kind of job event."""
    now = utcnow()
    done, failing, lost, canceled, released = (
        create_job(database, clips_total=2),
        create_job(database, max_attempts=2),
        create_job(database),
        create_job(database),
        create_job(database),
    )
    with database.transaction() as s:
        lease = leases.claim(s, done.id, "gpu-1", 60)
        leases.update_progress(
            s,
            lease_for(done.id, "gpu-1", lease.attempt),
            clips_done=2,
            fps=20.0,
            clip_s=2.4,
        )
        seg = Segment(0, keys.segment_key(done.id, 0), 0, 2, 96, 4096, "a" * 64)
        leases.record_segment(s, lease_for(done.id, "gpu-1", lease.attempt), seg)
        leases.record_checkpoint(
            s, lease_for(done.id, "gpu-1", lease.attempt), 2, duration_s=0.5, bytes=10
        )
        leases.mark_stitching(s, lease_for(done.id, "gpu-1", lease.attempt))
        leases.mark_succeeded(
            s,
            lease_for(done.id, "gpu-1", lease.attempt),
            keys.output_key(done.id),
            output={"bytes": 9000},
        )
    with database.transaction() as s:
        lease = leases.claim(s, failing.id, "gpu-1", 60)
        leases.mark_failed(
            s,
            lease_for(failing.id, "gpu-1", lease.attempt),
            failure("could not put x", "infrastructure"),
            retryable=True,
        )
        lease = leases.claim(s, failing.id, "gpu-1", 60)
        leases.mark_failed(
            s, lease_for(failing.id, "gpu-1", lease.attempt), failure("RuntimeError: y")
        )
        job_store.retry(s, failing.id, attempts=1)
    with database.transaction() as s:
        leases.claim(s, lost.id, "gpu-2", 60, now=now - timedelta(seconds=120))
    with database.transaction() as s:
        upkeep.reap_expired(s, now=now)
    with database.transaction() as s:
        lease = leases.claim(s, canceled.id, "gpu-3", 60)
        job_store.request_cancel(s, canceled.id)
        leases.mark_canceled(s, lease_for(canceled.id, "gpu-3", lease.attempt))
    with database.transaction() as s:
        lease = leases.claim(s, released.id, "gpu-4", 60)
        leases.release(s, lease_for(released.id, "gpu-4", lease.attempt))


@pytest.fixture(scope="module")
def exported(sqlite_template, tmp_path_factory) -> dict[str, dict[str, set[str]]]:
    """sample name -> label -> the values the scrape showed."""
    directory = tmp_path_factory.mktemp("metrics")
    shutil.copy(sqlite_template, directory / "db.sqlite3")
    database = Database(f"sqlite:///{directory / 'db.sqlite3'}")
    _every_fate(database)
    services = Services(
        config=ApiConfig(), database=database, storage=LocalStorage(directory / "objects")
    )
    with TestClient(create_app(services)) as client:
        assert client.get("/healthz").status_code == 200
        text = client.get("/metrics").text
    database.dispose()

    found: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = found[sample.name]
            for label, value in sample.labels.items():
                labels[label].add(value)
    return {name: dict(labels) for name, labels in found.items()}
