"""The real stack for the end-to-end tests: render workers as operators run them (`longtake
worker` in processes of their own, logging to files), the outbox relay and its reaper in a
thread, over Postgres, Redis and an S3 API (moto)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from db.database import Database
from dispatch.celery_app import CeleryConfig, make_celery_app
from dispatch.relay import CeleryDispatcher, OutboxRelay
from tests.conftest import REDIS_URL, TEST_BUCKET
from tests.worker.lifecycle_helpers import job

REPO = Path(__file__).resolve().parents[2]
LEASE_S = 6  # short, so a killed worker's job is requeued quickly; long enough for a busy CPU


class WorkerProcess:
    """`longtake worker` in its own process, logging to a file the test reads."""

    def __init__(self, env: dict[str, str], log: Path, fault: str | None = None):
        self.log = log
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        full_env.pop("LONGTAKE_FAULT", None)
        if fault:
            full_env["LONGTAKE_FAULT"] = fault
        self._file = open(log, "w")  # noqa: SIM115 - closed in wait()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ops.cli", "worker", f"--name=w{log.stem}@%h"],
            cwd=REPO,
            env=full_env,
            stdout=self._file,
            stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._file.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._file.close()


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Relay:
    """The outbox relay (and reaper) in a thread, as `longtake relay` runs it."""

    def __init__(self, database: Database, broker_url: str, prefix: str):
        app = make_celery_app(
            CeleryConfig(broker_url=broker_url, key_prefix=prefix, connect_timeout_s=1),
            task_modules=(),
        )
        self.dispatcher = CeleryDispatcher(app)
        self.relay = OutboxRelay(database, self.dispatcher, redispatch_after_s=0)
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=self.relay.run, args=(self.stop,), kwargs={"poll_s": 0.2, "max_backoff_s": 1}
        )
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def running_stack(
    pg_db, postgres_url, s3_config, s3_storage, redis_prefix, tmp_path
) -> Iterator[dict]:
    """The stack, and `start(name, fault=None, **env)` for workers; everything stopped after."""
    env = {
        "LONGTAKE_DATABASE_URL": postgres_url,
        "LONGTAKE_BROKER_URL": REDIS_URL,
        "LONGTAKE_BROKER_KEY_PREFIX": redis_prefix,
        "LONGTAKE_STORAGE_BACKEND": "s3",
        "LONGTAKE_STORAGE_BUCKET": TEST_BUCKET,
        "LONGTAKE_STORAGE_PREFIX": s3_config.prefix,
        "LONGTAKE_STORAGE_ENDPOINT_URL": s3_config.endpoint_url,
        "LONGTAKE_STORAGE_REGION": "us-east-1",
        "LONGTAKE_STORAGE_PATH_STYLE": "true",
        "LONGTAKE_LEASE_S": str(LEASE_S),
        # a worker paused inside a transaction (SIGSTOP) holds its job's row no longer
        "LONGTAKE_DATABASE_IDLE_TRANSACTION_TIMEOUT_S": str(LEASE_S),
        "LONGTAKE_MODEL_PRESET": "tiny",
        "LONGTAKE_MODEL_DEVICE": "cpu",
        "LONGTAKE_TORCH_THREADS": "1",
        "LONGTAKE_SCRATCH_DIR": str(tmp_path / "scratch"),
        "LONGTAKE_SOFT_SHUTDOWN_TIMEOUT_S": "30",
        # one process per worker: killing it (a fault) is the whole worker's crash
        "LONGTAKE_WORKER_RESPAWN": "false",
    }
    relay = Relay(pg_db, REDIS_URL, redis_prefix)
    workers: list[WorkerProcess] = []

    def start(name: str, fault: str | None = None, **overrides: str) -> WorkerProcess:
        worker = WorkerProcess({**env, **overrides}, tmp_path / f"{name}.log", fault)
        workers.append(worker)
        return worker

    yield {"db": pg_db, "storage": s3_storage, "start": start, "relay": relay, "env": env}
    for worker in workers:
        worker.stop()
    relay.close()


def status(database: Database, job_id: uuid.UUID) -> str:
    return job(database, job_id).status
