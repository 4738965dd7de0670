"""A job is only ever claimed by a worker that serves what it needs (its precision), whichever
way the claim comes: the woken job, the best queued job, or the fair-share pick."""

from __future__ import annotations

import pytest

from db import leases, outbox
from db.capabilities import Capabilities, topic_for

BF16 = Capabilities(frozenset({"bf16"}))
FP8 = Capabilities(frozenset({"fp8"}))
BOTH = Capabilities(frozenset({"bf16", "fp8"}))


def claim_next(db, serves, **kwargs):
    with db.transaction() as s:
        return leases.claim_next(s, "w", 60, serves=serves, **kwargs)


def test_the_best_queued_job_is_the_best_one_the_worker_serves(db, create_job):
    fp8_high = create_job(db, precision="fp8", priority=10)
    bf16_low = create_job(db, priority=0)
    lease = claim_next(db, BF16)
    assert lease is not None and lease.job_id == bf16_low.id  # not the higher-priority fp8 one
    assert claim_next(db, BF16) is None  # nothing left for it
    assert claim_next(db, FP8).job_id == fp8_high.id


def test_an_fp8_attention_job_goes_only_to_a_worker_that_serves_that_precision(db, create_job):
    # the same FP8 weights, other caches and kernels: fp8 is not enough to render it
    job = create_job(db, precision="fp8-attention")
    assert claim_next(db, BOTH) is None
    with db.transaction() as s:
        topics = {m.job_id: m.topic for m in outbox.lock_unsent(s)}
    assert topics[job.id] == "render.fp8-attention"
    assert claim_next(db, Capabilities(frozenset({"fp8-attention"}))).job_id == job.id


def test_fair_share_picks_only_among_jobs_the_worker_serves(db, create_job):
    """Tenant a has only fp8 work queued, tenant b bf16: a bf16 worker takes b's job even
    though a has run fewer jobs."""
    create_job(db, tenant="a", precision="fp8")
    b_job = create_job(db, tenant="b")
    running_b = create_job(db, tenant="b")
    with db.transaction() as s:
        assert leases.claim(s, running_b.id, "w0", 60).job_id == running_b.id
    assert claim_next(db, BF16).job_id == b_job.id


def test_a_wake_up_for_a_job_the_worker_cannot_serve_is_dropped(db, create_job):
    job = create_job(db, precision="fp8")
    with db.transaction() as s:
        assert leases.claim_for_wakeup(s, job.id, "w", 60, serves=BF16) is None
        assert leases.claim(s, job.id, "w", 60, serves=BF16) is None
    with db.transaction() as s:
        lease = leases.claim_for_wakeup(s, job.id, "w", 60, serves=BOTH)
    assert lease is not None and lease.job_id == job.id


def test_wake_ups_go_to_the_topic_of_what_the_job_needs(db, create_job):
    plain, fast = create_job(db), create_job(db, precision="fp8")
    with db.transaction() as s:
        topics = {m.job_id: m.topic for m in outbox.lock_unsent(s)}
    assert topics == {plain.id: "render", fast.id: "render.fp8"}
    assert BOTH.topics() == ["render", "render.fp8"] and topic_for("bf16") == "render"
    with pytest.raises(ValueError):
        Capabilities(frozenset())
