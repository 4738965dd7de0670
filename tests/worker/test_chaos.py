"""Chaos on the real stack: an API process, render workers and the relay, over Postgres, Redis
and an S3 API (moto). Workers are killed (kill -9) and paused past their lease (SIGSTOP, then
SIGCONT when another has taken the job over), and the API is killed in the middle of a
submission while its database hangs. Every accepted job completes, the paused worker writes
nothing into the job it lost, and once the reconciler has run the bucket holds exactly the
documented layout: each job's inputs, output and manifest, nothing else.

(tests/worker/test_celery_e2e.py kills a worker at each dangerous point of one render; this
test runs several jobs through several kinds of failure at once.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from db import job_store
from db.models import utcnow
from dispatch.reconcile import StorageReconciler
from storage import keys
from tests import media
from tests.conftest import free_port, make_api_key
from tests.worker.lifecycle_helpers import job
from tests.worker.stack import REPO, status, wait_for

pytestmark = pytest.mark.slow

CLIPS, INFER_FRAMES = 8, 12  # long enough for every failure to land inside a render


class ApiProcess:
    """`longtake serve` in its own process (no relay: the test runs one), logging to a file."""

    def __init__(self, env: dict[str, str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._file = open(log, "a")  # noqa: SIM115 - closed in kill()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ops.cli", "serve", "--no-relay", "--port", str(self.port)],
            cwd=REPO,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdout=self._file,
            stderr=subprocess.STDOUT,
        )

        def ready() -> bool:
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 120, "the API to answer")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._file.close()


def submit(api: ApiProcess, key: str, seed: int, timeout: float = 60) -> httpx.Response:
    seconds = CLIPS * INFER_FRAMES / 25 - 0.1
    return httpx.post(
        f"{api.url}/v1/jobs",
        headers={"Authorization": f"Bearer {key}"},
        files={
            "image": ("portrait.png", media.png(128, 128), "image/png"),
            "audio": ("speech.wav", media.wav(seconds), "audio/wav"),
        },
        data={
            "prompt": "a person talking",
            "size": "64*64",
            "infer_frames": str(INFER_FRAMES),
            "seed": str(seed),
            "checkpoint_every": "2",
        },
        timeout=timeout,
    )


def job_ids_in_bucket(storage) -> set[uuid.UUID]:
    return {uuid.UUID(k.split("/")[1]) for k in storage.list("jobs/")}


def test_every_job_completes_and_the_bucket_holds_exactly_the_layout(services, pg_db, tmp_path):
    db, storage, start = services["db"], services["storage"], services["start"]
    api_env = {**services["env"], "LONGTAKE_RATE_LIMIT_PER_S": "0"}
    key = make_api_key(db, name="chaos")
    api = ApiProcess(api_env, tmp_path / "api.log")
    workers = []
    try:
        ids = []
        for seed in (1, 2, 3):
            r = submit(api, key, seed)
            assert r.status_code == 201, r.text
            ids.append(uuid.UUID(r.json()["id"]))

        # 1. a worker is paused (SIGSTOP) in the middle of a render, past its lease
        paused = start("paused")
        workers.append(paused)
        wait_for(lambda: "generated clip 1" in paused.text(), 300, "the first render")
        taken = next(j for j in ids if job(db, j).worker_id is not None)
        paused.process.send_signal(signal.SIGSTOP)
        # 2. another is killed (kill -9) during a clip of the next job it takes
        doomed = start("doomed", fault="during_clip:2")
        workers.append(doomed)
        assert doomed.wait(300) == -signal.SIGKILL, doomed.text()[-3000:]
        # 3. a healthy one takes over both jobs once their leases expired and were reaped
        healthy = start("healthy")
        workers.append(healthy)
        wait_for(lambda: job(db, taken).attempt >= 2, 300, "the paused job to be taken over")
        # 4. the paused worker wakes up: its lease is gone, it writes nothing more for `taken`
        paused.process.send_signal(signal.SIGCONT)

        # 5. the API is killed while a submission waits for its database: the inputs are
        #    stored, the job row never is (the database holds the job's insert: a lock that
        #    blocks writes to the outbox, as a long maintenance statement would)
        before = job_ids_in_bucket(storage)
        blocker = db.engine.connect()
        blocker.begin()
        blocker.execute(sa.text("LOCK TABLE outbox IN EXCLUSIVE MODE"))
        stalled = threading.Thread(target=lambda: _quietly(submit, api, key, 4, 120))
        stalled.start()
        wait_for(lambda: len(job_ids_in_bucket(storage) - before) == 1, 120, "stored inputs")
        orphan = (job_ids_in_bucket(storage) - before).pop()
        api.kill()
        blocker.rollback()
        blocker.close()
        stalled.join()
        api = ApiProcess(api_env, tmp_path / "api.log")  # the API restarts
        with db.transaction() as s:
            assert job_store.get_job(s, orphan) is None

        for job_id in ids:
            wait_for(lambda j=job_id: status(db, j) == "succeeded", 600, f"job {job_id}")
        wait_for(lambda: f"job {taken}: attempt 1 lost its lease" in paused.text(), 120,
                 "the paused worker to find its lease lost")  # fmt: skip
    finally:
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGCONT)
            worker.stop()
        api.kill()

    layout = {
        key
        for job_id in ids
        for key in (
            keys.output_key(job_id),
            keys.manifest_key(job_id),
            keys.input_key(job_id, "image", "png"),
            keys.input_key(job_id, "audio", "wav"),
        )
    }
    # before the reconciler: what no row accounts for is the killed submission's inputs alone
    # (the paused worker uploaded nothing after losing its lease)
    assert set(storage.list("jobs/")) - layout == set(storage.list(keys.job_prefix(orphan)))
    reconciler = StorageReconciler(db, storage, grace_s=60)
    reconciler.run_once(now=utcnow() + timedelta(hours=1))  # as a later pass: all is old
    assert set(storage.list("jobs/")) == layout
    assert storage.list("uploads/") == []


def _quietly(fn, *args) -> None:
    """The stalled submission's connection dies with the API: that is the point."""
    with contextlib.suppress(httpx.HTTPError):
        fn(*args)
