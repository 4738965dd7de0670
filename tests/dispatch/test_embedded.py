"""The embedded runner: the outbox drained in-process, each job handed to the handler once."""

from __future__ import annotations

import threading
import time

from db import job_store, leases, outbox
from dispatch.embedded import EmbeddedRunner
from tests.factories import lease_for


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_jobs_reach_the_handler_once_each(sqlite_db, create_job):
    seen = []
    done = threading.Event()

    def handler(job_id):
        # what the render lifecycle will do: claim, work, finish
        with sqlite_db.transaction() as s:
            lease = leases.claim(s, job_id, "embedded", 60)
        if lease is None:
            return
        with sqlite_db.transaction() as s:
            leases.mark_stitching(s, lease_for(job_id, "embedded", lease.attempt))
            leases.mark_succeeded(
                s, lease_for(job_id, "embedded", lease.attempt), f"jobs/{job_id}/output.mp4"
            )
        seen.append(job_id)
        if len(seen) == 3:
            done.set()

    runner = EmbeddedRunner(sqlite_db, handler, poll_s=5.0)
    runner.start()
    try:
        jobs = [create_job(sqlite_db).id for _ in range(3)]
        runner.wake()  # what the API does after a commit: no waiting for the 5 s poll
        assert done.wait(4)
        runner.ping()
    finally:
        runner.stop()
    assert sorted(seen) == sorted(jobs)
    with sqlite_db.transaction() as s:
        assert outbox.count_unsent(s) == 0
        assert {job_store.get_job(s, j).status for j in jobs} == {"succeeded"}


def test_a_failing_handler_does_not_stop_the_runner(sqlite_db, create_job):
    calls = []

    def handler(job_id):
        calls.append(job_id)
        if len(calls) == 1:
            raise RuntimeError("boom")

    runner = EmbeddedRunner(sqlite_db, handler, poll_s=0.05)
    runner.start()
    try:
        create_job(sqlite_db)
        assert wait_for(lambda: len(calls) == 1)
        create_job(sqlite_db)
        assert wait_for(lambda: len(calls) == 2)
    finally:
        runner.stop()


def test_without_a_handler_jobs_stay_queued(sqlite_db, create_job):
    runner = EmbeddedRunner(sqlite_db, None, poll_s=0.05)
    runner.start()
    job = create_job(sqlite_db)
    runner.wake()
    time.sleep(0.3)
    runner.stop()
    assert not runner.dispatching
    with sqlite_db.transaction() as s:
        assert job_store.get_job(s, job.id).status == "queued"
        assert outbox.count_unsent(s) == 1  # kept for a process that can run it
