"""Presenter affinity: among queued jobs of equal standing (priority, then fair share between
tenants), a worker takes one whose presenter it holds; priority and fair share still come
first. The claim stays a few index probes on Postgres."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from db import batches, job_store, leases
from db.leases import _fair_share_query
from db.models import UTCDateTime
from tests.factories import job_params, presenter

T0 = datetime(2030, 1, 1, tzinfo=UTC)
LATER = T0 + timedelta(minutes=10)
LEASE_S = 60


def claim(db, worker: str = "w", cached: frozenset[str] = frozenset()) -> leases.Lease | None:
    with db.transaction() as s:
        return leases.claim_next(s, worker, LEASE_S, cached=cached, now=LATER)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_among_equals_the_job_of_a_held_presenter_goes_first(db, create_job):
    old = create_job(db, tenant="a", now=at(0), presenter_key=presenter("a", b"anna"))
    new = create_job(db, tenant="a", now=at(5), presenter_key=presenter("a", b"ben"))
    assert claim(db, "w1", frozenset({presenter("a", b"ben")})).job_id == new.id
    assert claim(db, "w2", frozenset({presenter("a", b"ben")})).job_id == old.id


def test_without_held_presenters_the_order_is_unchanged(db, create_job):
    old = create_job(db, tenant="a", now=at(0), presenter_key=presenter("a", b"anna"))
    create_job(db, tenant="a", now=at(5), presenter_key=presenter("a", b"ben"))
    assert claim(db).job_id == old.id
    other_tenant = frozenset({presenter("b", b"ben")})  # b's key: a's same files are not b's
    assert claim(db, "w2", other_tenant).job_id != old.id  # the only one left


def test_a_higher_priority_job_without_the_presenter_still_wins(db, create_job):
    high = create_job(db, tenant="a", priority=5, now=at(5), presenter_key=presenter("a", b"x"))
    held = create_job(db, tenant="a", priority=0, now=at(0), presenter_key=presenter("a", b"ben"))
    other = create_job(db, tenant="b", priority=0, now=at(0), presenter_key=presenter("b", b"y"))
    keys = frozenset({presenter("a", b"ben")})
    assert claim(db, "w1", keys).job_id == high.id
    # a now runs one job, b none: fair share puts b's job before a's held one
    assert claim(db, "w2", keys).job_id == other.id
    assert claim(db, "w3", keys).job_id == held.id


def test_fair_share_across_tenants_wins_over_the_presenter(db, create_job):
    create_job(db, tenant="a", now=at(0), presenter_key=presenter("a", b"anna"))
    held = create_job(db, tenant="a", now=at(1), presenter_key=presenter("a", b"ben"))
    other = create_job(db, tenant="b", now=at(2), presenter_key=presenter("b", b"carl"))
    keys = frozenset({presenter("a", b"ben")})
    assert claim(db, "w1").job_id not in (held.id, other.id)  # a's oldest: a runs one now
    assert claim(db, "w2", keys).job_id == other.id  # b runs none: b first, held or not
    assert claim(db, "w3", keys).job_id == held.id


def test_a_held_presenter_deep_in_a_bulk_tenant_is_found(db, create_job):
    """The held job is the newest of hundreds of equals: the claim finds it by its key."""
    bulk = [
        job_store.NewJob(
            id=uuid.uuid4(),
            tenant="bulk",
            params=job_params(),
            image_key="uploads/i.png",
            audio_key="uploads/a.wav",
            clips_total=4,
            max_attempts=3,
            presenter_key=presenter("bulk", b"anna"),
        )
        for _ in range(300)
    ]
    with db.transaction() as s:
        batches.create_batch(s, batches.NewBatch(uuid.uuid4(), "bulk", bulk), now=at(0))
    held = create_job(db, tenant="bulk", now=at(60), presenter_key=presenter("bulk", b"ben"))
    assert claim(db, "w1", frozenset({presenter("bulk", b"ben")})).job_id == held.id
    # a key with no queued job, and one of a presenter whose jobs are all taken, change nothing
    keys = frozenset({presenter("bulk", b"nobody"), presenter("bulk", b"ben")})
    assert claim(db, "w2", keys).job_id in {j.id for j in bulk}


def test_the_claim_probes_indexes_on_postgres(pg_db, create_job):
    """With many queued jobs, the plan reaches them through the indexes (no scan of jobs)."""
    for tenant in ("a", "b", "c"):
        jobs = [
            job_store.NewJob(
                id=uuid.uuid4(),
                tenant=tenant,
                params=job_params(),
                image_key="uploads/i.png",
                audio_key="uploads/a.wav",
                clips_total=4,
                max_attempts=3,
                presenter_key=presenter(tenant, f"p{i % 50}".encode()),
            )
            for i in range(2000)
        ]
        with pg_db.transaction() as s:
            batches.create_batch(s, batches.NewBatch(uuid.uuid4(), tenant, jobs), now=at(0))
    keys = sorted(presenter(t, f"p{i}".encode()) for t in "ab" for i in range(3))
    params = {"precisions": ["bf16"], "now": LATER, "node": "n1"}
    params.update({f"held_{i}": k for i, k in enumerate(keys)})
    with pg_db.transaction() as s:
        s.execute(sa.text("ANALYZE jobs"))
        explain = sa.text("EXPLAIN " + _fair_share_query(len(keys)).element.text).bindparams(
            sa.bindparam("precisions", expanding=True), sa.bindparam("now", type_=UTCDateTime())
        )
        plan = "\n".join(row[0] for row in s.execute(explain, params))
    assert "ix_jobs_presenter" in plan and "ix_jobs_fair" in plan
    assert "Seq Scan on jobs" not in plan, plan
