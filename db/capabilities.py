"""What a worker can render, and what a job needs: the claim takes only jobs a worker serves.

A requeued job whose newest checkpoint is on a node's own disk is also, for a grace period
(`jobs.preferred_until`), a job for that node's workers only: they resume it without a
download. Its wake-up goes to the node's topic ("render@<node>") at once, and to everyone's
when the grace period ends.

A job needs one precision (bf16, fp8, fp8-attention: `jobs.precision`); a worker serves the
precisions whose models it has loaded (`Capabilities`). The claim filters on it, and each job's
wake-up goes to the topic of what it needs (`topic_for`), which the broker turns into a queue
that only capable workers consume: a worker is never woken for a job it cannot take, and never
takes one. Model presets and GPU counts are further requirements of the same kind; each would
add a column, a field here and a part to the topic."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa

from db.models import Job

DEFAULT_PRECISION = "bf16"
RENDER_TOPIC = "render"
"""The topic (and queue) of jobs that need nothing beyond the default."""


def topic_for(precision: str, node: str | None = None) -> str:
    """The wake-up topic of a job that needs `precision`: "render" or "render.<precision>";
    with a node, that topic for the node's workers alone ("render@<node>")."""
    topic = RENDER_TOPIC if precision == DEFAULT_PRECISION else f"{RENDER_TOPIC}.{precision}"
    return topic if node is None else f"{topic}@{node}"


@dataclass(frozen=True)
class Capabilities:
    precisions: frozenset[str] = field(default_factory=lambda: frozenset({DEFAULT_PRECISION}))
    node: str | None = None
    """The node the worker runs on (its local checkpoints are there)."""

    def __post_init__(self) -> None:
        if not self.precisions:
            raise ValueError("a worker must serve at least one precision")

    def serves(self, job: Job, now: datetime) -> bool:
        """Whether this worker may take `job` now."""
        return job.precision in self.precisions and not self._reserved_elsewhere(
            job.local_checkpoint_node, job.preferred_until, now
        )

    def _reserved_elsewhere(self, node: str | None, until: datetime | None, now: datetime) -> bool:
        return until is not None and until > now and node is not None and node != self.node

    def claimable(self, now: datetime) -> sa.ColumnElement[bool]:
        """The claim's filter: jobs this worker can render and may take now."""
        open_to_all = sa.or_(Job.preferred_until.is_(None), Job.preferred_until <= now)
        mine = Job.local_checkpoint_node == self.node if self.node is not None else sa.false()
        return sa.and_(Job.precision.in_(sorted(self.precisions)), sa.or_(open_to_all, mine))

    def topics(self) -> list[str]:
        """The wake-up topics (queues) this worker consumes: its precisions', everyone's and
        its node's."""
        topics = [topic_for(p) for p in sorted(self.precisions)]
        if self.node is not None:
            topics += [topic_for(p, self.node) for p in sorted(self.precisions)]
        return topics
