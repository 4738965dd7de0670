"""Concurrent claims: two sessions racing for one job get one winner; claim_next hands each
caller a different job. On Postgres the loser waits on or skips the row lock; on SQLite the
whole transaction is serialised."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from db import job_store, leases

LEASE_S = 60


def test_two_sessions_claiming_one_job_have_one_winner(db, create_job):
    job = create_job(db)
    first = db.sessions()
    first.begin()
    lease_a = leases.claim(first, job.id, "a", LEASE_S)  # holds the row (or the database) lock
    assert lease_a is not None

    started = threading.Event()

    def second_claim():
        with db.transaction() as s:
            started.set()
            return leases.claim(s, job.id, "b", LEASE_S)

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(second_claim)
        started.wait(5)
        time.sleep(0.3)
        # the second claim cannot finish while the first transaction is open
        assert not future.done()
        first.commit()
        first.close()
        assert future.result(timeout=30) is None

    with db.transaction() as s:
        row = job_store.get_job(s, job.id)
    assert (row.worker_id, row.attempt) == ("a", 1)


def test_claim_next_skips_locked_jobs(pg_db, create_job):
    one = create_job(pg_db)
    two = create_job(pg_db)
    first = pg_db.sessions()
    first.begin()
    lease_a = leases.claim_next(first, "a", LEASE_S)
    # a second worker is not blocked by the first's open transaction: it gets the other job
    with pg_db.transaction() as s:
        lease_b = leases.claim_next(s, "b", LEASE_S)
    first.commit()
    first.close()
    assert {lease_a.job_id, lease_b.job_id} == {one.id, two.id}


def test_many_workers_claim_each_job_exactly_once(db, create_job):
    jobs = {create_job(db).id for _ in range(12)}
    barrier = threading.Barrier(4)

    def worker(name: str) -> list:
        barrier.wait()
        got = []
        while True:
            with db.transaction() as s:
                lease = leases.claim_next(s, name, LEASE_S)
            if lease is None:
                return got
            got.append(lease.job_id)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(worker, ["w1", "w2", "w3", "w4"]))
    claimed = [j for r in results for j in r]
    assert sorted(claimed) == sorted(jobs)  # every job once, none twice


def test_claim_next_order_priority_then_age(db, create_job):
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    old_low = create_job(db, priority=0, now=t0)
    new_high = create_job(db, priority=5, now=t0 + timedelta(seconds=2))
    old_high = create_job(db, priority=5, now=t0 + timedelta(seconds=1))
    other_tenant = create_job(db, tenant="acme", priority=9, now=t0)
    order = []
    with db.transaction() as s:
        order.append(leases.claim_next(s, "w", LEASE_S, tenant="default").job_id)
        order.append(leases.claim_next(s, "w", LEASE_S, tenant="default").job_id)
        order.append(leases.claim_next(s, "w", LEASE_S, tenant="default").job_id)
        assert leases.claim_next(s, "w", LEASE_S, tenant="default") is None
        assert leases.claim_next(s, "w", LEASE_S).job_id == other_tenant.id
    assert order == [old_high.id, new_high.id, old_low.id]
