"""How a job's failure is described: one message for its owner, details for operators.

`Failure.kind` says what a retry can do: `input` (the job cannot render as submitted: submit it
again with other inputs or parameters; a retry fails the same way), `render` (the model or the
encoder failed: a retry may help once an operator has looked), `infrastructure` (storage, the
network, the database or a lost worker: a retry resumes from the last checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FailureKind = Literal["input", "render", "infrastructure"]
KINDS: tuple[FailureKind, ...] = ("input", "render", "infrastructure")
MAX_MESSAGE_CHARS = 1000
MAX_DETAIL_CHARS = 4000


@dataclass(frozen=True)
class Failure:
    message: str
    """What went wrong and what to do, in words for the job's owner (no traceback, no paths)."""
    kind: FailureKind
    detail: str = ""
    """The exception and where it was raised, for operators (logs, the event's data)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"failure kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        object.__setattr__(self, "message", _clip(self.message, MAX_MESSAGE_CHARS))
        object.__setattr__(self, "detail", _clip(self.detail, MAX_DETAIL_CHARS))

    @property
    def can_retry(self) -> bool:
        return self.kind != "input"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
