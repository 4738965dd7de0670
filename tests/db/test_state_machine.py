"""Every legal and illegal transition, through the transition table and the repository."""

from __future__ import annotations

import itertools

import pytest

from db import job_store, leases
from db.states import TRANSITIONS, IllegalTransition, JobStatus, check_transition
from tests.factories import failure, lease_for

Q, R, ST = JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.STITCHING
OK, FAIL, CXL = JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED

LEGAL = {
    (Q, R), (Q, CXL),
    (R, ST), (R, Q), (R, FAIL), (R, CXL),
    (ST, OK), (ST, Q), (ST, FAIL), (ST, CXL),
    (FAIL, Q), (CXL, Q),
}  # fmt: skip


@pytest.mark.parametrize("current,target", list(itertools.product(JobStatus, JobStatus)))
def test_transition_table(current, target):
    assert (target in TRANSITIONS[current]) == ((current, target) in LEGAL)
    if (current, target) in LEGAL:
        check_transition("j", current, target, "move")
    else:
        with pytest.raises(IllegalTransition, match=f"it is {current.value}"):
            check_transition("j", current, target, "move")


WORKER = "worker-a"
LEASE_S = 60


def job_in(db, create_job, status: JobStatus):
    """A job brought to `status` through legal calls; returns (job_id, attempt of WORKER)."""
    job = create_job(db)
    if status is Q:
        return job.id, 0
    with db.transaction() as s:
        lease = leases.claim(s, job.id, WORKER, LEASE_S)
    if status is R:
        return job.id, lease.attempt
    with db.transaction() as s:
        if status is ST:
            leases.mark_stitching(s, lease_for(job.id, WORKER, 1))
        elif status is OK:
            leases.mark_stitching(s, lease_for(job.id, WORKER, 1))
            leases.mark_succeeded(s, lease_for(job.id, WORKER, 1), f"jobs/{job.id}/output.mp4")
        elif status is FAIL:
            leases.mark_failed(s, lease_for(job.id, WORKER, 1), failure("boom"))
        elif status is CXL:
            leases.mark_canceled(s, lease_for(job.id, WORKER, 1))
    return job.id, 1


ACTIONS = {
    "claim": lambda s, j, a: leases.claim(s, j, "worker-b", LEASE_S),
    "mark_stitching": lambda s, j, a: leases.mark_stitching(s, lease_for(j, WORKER, a)),
    "mark_succeeded": lambda s, j, a: leases.mark_succeeded(s, lease_for(j, WORKER, a), "out.mp4"),
    "mark_failed": lambda s, j, a: leases.mark_failed(s, lease_for(j, WORKER, a), failure("boom")),
    "mark_canceled": lambda s, j, a: leases.mark_canceled(s, lease_for(j, WORKER, a)),
    "release": lambda s, j, a: leases.release(s, lease_for(j, WORKER, a)),
    "request_cancel": lambda s, j, a: job_store.request_cancel(s, j),
    "retry": lambda s, j, a: job_store.retry(s, j, attempts=3),
}

L, X, N = leases.LeaseLost, IllegalTransition, None  # N: claim declines (returns None)
# Expected status after the action, or the exception it raises.
MATRIX = {
    #                  queued  running stitching succeeded failed canceled
    "claim":          (R,      N,      N,        N,        N,     N),
    "mark_stitching": (L,      ST,     X,        L,        L,     L),
    "mark_succeeded": (L,      X,      OK,       L,        L,     L),
    "mark_failed":    (L,      FAIL,   FAIL,     L,        L,     L),
    "mark_canceled":  (L,      CXL,    CXL,      L,        L,     L),
    "release":        (L,      Q,      Q,        L,        L,     L),
    "request_cancel": (CXL,    R,      ST,       X,        X,     CXL),
    "retry":          (X,      X,      X,        X,        Q,     Q),
}  # fmt: skip
CASES = [
    (action, state, expected)
    for action, row in MATRIX.items()
    for state, expected in zip(JobStatus, row, strict=True)
]


def snapshot(db, job_id):
    with db.transaction() as s:
        job = job_store.get_job(s, job_id)
        return job.status, job.attempt, job.worker_id, len(job_store.list_events(s, job_id))


@pytest.mark.parametrize("action,state,expected", CASES, ids=[f"{a}-{s}" for a, s, _ in CASES])
def test_action_from_state(db, create_job, action, state, expected):
    job_id, attempt = job_in(db, create_job, state)
    before = snapshot(db, job_id)

    if isinstance(expected, type) and issubclass(expected, Exception):
        with pytest.raises(expected), db.transaction() as s:
            ACTIONS[action](s, job_id, attempt)
        assert snapshot(db, job_id) == before  # nothing changed, no event
        return

    with db.transaction() as s:
        result = ACTIONS[action](s, job_id, attempt)
    status, _, _, n_events = snapshot(db, job_id)
    if expected is None:
        assert result is None
        assert snapshot(db, job_id) == before
        return
    assert status == expected.value
    with db.transaction() as s:
        events = job_store.list_events(s, job_id)
        job = job_store.get_job(s, job_id)
    if status == before[0]:
        if action == "request_cancel" and state in (R, ST):
            assert job.cancel_requested
            assert events[-1].event == "cancel_requested"
        else:  # canceling a canceled job changes nothing
            assert n_events == before[3]
    else:
        assert n_events == before[3] + 1
        assert (events[-1].from_status, events[-1].to_status) == (state.value, expected.value)


def test_illegal_transition_message_says_what_is_allowed(db, create_job):
    job_id, _ = job_in(db, create_job, OK)
    with pytest.raises(IllegalTransition) as err, db.transaction() as s:
        job_store.request_cancel(s, job_id)
    assert "cannot cancel job" in str(err.value)
    assert "it is succeeded" in str(err.value)
    assert "final" in str(err.value)

    job_id, _ = job_in(db, create_job, R)
    expected = "only failed or canceled jobs can be retried"
    with pytest.raises(IllegalTransition, match=expected), db.transaction() as s:
        job_store.retry(s, job_id, attempts=3)


def test_full_history_is_recorded(db, create_job):
    job_id, _ = job_in(db, create_job, OK)
    with db.transaction() as s:
        events = [(e.event, e.from_status, e.to_status) for e in job_store.list_events(s, job_id)]
        job = job_store.get_job(s, job_id)
    assert events == [
        ("created", None, "queued"),
        ("claimed", "queued", "running"),
        ("stitching", "running", "stitching"),
        ("succeeded", "stitching", "succeeded"),
    ]
    assert job.output_key == f"jobs/{job_id}/output.mp4"
    assert job.finished_at is not None and job.worker_id is None and job.lease_expires_at is None


def test_unknown_job(db):
    import uuid

    missing = uuid.uuid4()
    with db.transaction() as s:
        assert leases.claim(s, missing, WORKER, LEASE_S) is None
        assert job_store.get_job(s, missing) is None
        with pytest.raises(job_store.JobNotFound):
            job_store.request_cancel(s, missing)
        with pytest.raises(job_store.JobNotFound):
            job_store.retry(s, missing, attempts=1)


def test_tenant_scoping(db, create_job):
    job = create_job(db, tenant="acme")
    with db.transaction() as s:
        assert job_store.get_job(s, job.id, tenant="other") is None
        assert job_store.get_job(s, job.id, tenant="acme") is not None
        with pytest.raises(job_store.JobNotFound):
            job_store.request_cancel(s, job.id, tenant="other")
