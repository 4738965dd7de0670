"""Job states and the one table of legal transitions between them."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    STITCHING = "stitching"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED}
)
LEASED: frozenset[JobStatus] = frozenset({JobStatus.RUNNING, JobStatus.STITCHING})
"""States in which a worker holds the job's lease."""

# Every status change goes through this table. `running -> queued` is a lost or released lease
# (or a retryable failure); `failed/canceled -> queued` is an explicit retry.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.STITCHING, JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELED}
    ),
    JobStatus.STITCHING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),
    JobStatus.CANCELED: frozenset({JobStatus.QUEUED}),
}


class IllegalTransition(Exception):
    """A status change that the state machine does not allow."""

    def __init__(
        self,
        job_id: object,
        current: JobStatus,
        target: JobStatus,
        action: str,
        hint: str | None = None,
    ):
        self.job_id = job_id
        self.current = current
        self.target = target
        self.action = action
        if hint is None:
            allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing (it is final)"
            hint = f"a {current.value} job can only move to {allowed}"
        super().__init__(f"cannot {action} job {job_id}: it is {current.value}; {hint}")


def check_transition(job_id: object, current: JobStatus, target: JobStatus, action: str) -> None:
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(job_id, current, target, action)
