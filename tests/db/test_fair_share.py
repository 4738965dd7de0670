"""claim_next: priority first, then the tenant with the fewest running jobs, then age."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from db import batches, job_store, leases
from tests.factories import job_params

T0 = datetime(2030, 1, 1, tzinfo=UTC)
LEASE_S = 60


def bulk(db, tenant: str, n: int, *, priority: int = 0, now: datetime = T0) -> list[uuid.UUID]:
    jobs = [
        job_store.NewJob(
            id=uuid.uuid4(),
            tenant=tenant,
            params=job_params(),
            image_key="uploads/i.png",
            audio_key="uploads/a.wav",
            clips_total=4,
            max_attempts=3,
            priority=priority,
        )
        for _ in range(n)
    ]
    with db.transaction() as s:
        batches.create_batch(s, batches.NewBatch(uuid.uuid4(), tenant, jobs), now=now)
    return [j.id for j in jobs]


def claim_next(db, worker: str, now: datetime) -> leases.Lease | None:
    with db.transaction() as s:
        return leases.claim_next(s, worker, LEASE_S, now=now)


def test_a_bulk_tenant_does_not_starve_a_single_job(db, create_job):
    bulk_ids = set(bulk(db, "bulk", 1000))
    single = create_job(db, tenant="small", now=T0 + timedelta(minutes=5))  # submitted later

    first = claim_next(db, "gpu-1", T0 + timedelta(minutes=6))
    second = claim_next(db, "gpu-2", T0 + timedelta(minutes=6))
    assert first.job_id in bulk_ids  # both tenants idle: the oldest job goes first
    assert second.job_id == single.id  # bulk now runs one, small none: small's turn

    # with the small tenant served, the bulk tenant gets every free worker
    rest = [claim_next(db, f"gpu-{i}", T0 + timedelta(minutes=7)).job_id for i in range(3, 8)]
    assert set(rest) <= bulk_ids and len(set(rest)) == 5


def test_tenants_alternate_by_running_jobs(db):
    a = bulk(db, "a", 6, now=T0)
    b = bulk(db, "b", 6, now=T0 + timedelta(seconds=1))
    order = [claim_next(db, f"w{i}", T0 + timedelta(minutes=1)).job_id for i in range(6)]
    tenants = ["a" if job in a else "b" if job in b else "?" for job in order]
    assert tenants == ["a", "b", "a", "b", "a", "b"]
    # each tenant's own jobs still go in their order (a batch shares one time: then by id)
    assert [j for j in order if j in a] == sorted(a)[:3]


def test_priority_comes_before_fair_share(db, create_job):
    bulk(db, "bulk", 20, priority=5)
    low = create_job(db, tenant="small", priority=0)
    claimed = [claim_next(db, f"w{i}", T0 + timedelta(minutes=1)).job_id for i in range(20)]
    assert low.id not in claimed  # every priority-5 job first, however busy its tenant
    assert claim_next(db, "w", T0 + timedelta(minutes=1)).job_id == low.id
    assert claim_next(db, "w", T0 + timedelta(minutes=1)) is None


def test_a_wakeup_takes_the_best_job_not_the_one_it_names(db, create_job):
    low = create_job(db, tenant="a", priority=0, now=T0)
    high = create_job(db, tenant="b", priority=9, now=T0 + timedelta(seconds=5))
    with db.transaction() as s:
        first = leases.claim_for_wakeup(s, low.id, "w1", LEASE_S, now=T0 + timedelta(minutes=1))
        second = leases.claim_for_wakeup(s, high.id, "w2", LEASE_S, now=T0 + timedelta(minutes=1))
        # both ran; the late message finds nothing queued and the named job leased: dropped
        third = leases.claim_for_wakeup(s, high.id, "w3", LEASE_S, now=T0 + timedelta(minutes=1))
    assert (first.job_id, second.job_id, third) == (high.id, low.id, None)
    with db.transaction() as s:  # a lease that expired unreaped is taken over, as by claim()
        lease = leases.claim_for_wakeup(s, low.id, "w4", LEASE_S, now=T0 + timedelta(hours=1))
    assert (lease.job_id, lease.attempt) == (low.id, 2)
