"""What a worker can render, and what a job needs: the claim takes only jobs a worker serves.

A job needs one precision (bf16, fp8: `jobs.precision`); a worker serves the precisions whose
models it has loaded (`Capabilities`). The claim filters on it, and each job's wake-up goes to
the topic of what it needs (`topic_for`), which the broker turns into a queue that only
capable workers consume: a worker is never woken for a job it cannot take, and never takes
one. Model presets and GPU counts are further requirements of the same kind; each would add a
column, a field here and a part to the topic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from db.models import Job

DEFAULT_PRECISION = "bf16"
RENDER_TOPIC = "render"
"""The topic (and queue) of jobs that need nothing beyond the default."""


def topic_for(precision: str) -> str:
    """The wake-up topic of a job that needs `precision`: "render" or "render.<precision>"."""
    return RENDER_TOPIC if precision == DEFAULT_PRECISION else f"{RENDER_TOPIC}.{precision}"


@dataclass(frozen=True)
class Capabilities:
    precisions: frozenset[str] = field(default_factory=lambda: frozenset({DEFAULT_PRECISION}))

    def __post_init__(self) -> None:
        if not self.precisions:
            raise ValueError("a worker must serve at least one precision")

    def serves(self, precision: str) -> bool:
        return precision in self.precisions

    def claimable(self) -> sa.ColumnElement[bool]:
        """The claim's filter: jobs this worker can render."""
        return Job.precision.in_(sorted(self.precisions))

    def topics(self) -> list[str]:
        """The wake-up topics (queues) this worker consumes."""
        return [topic_for(p) for p in sorted(self.precisions)]
