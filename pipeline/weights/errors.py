"""Errors raised while checking or loading released weights.

Every message names the file and, where it applies, the tensors concerned, so that a user can
tell a truncated download from a wrong file from a version mismatch without reading code.
"""

from __future__ import annotations

from collections.abc import Iterable

# How many names an error lists before it summarises the rest as a count.
NAMES_SHOWN = 8


def name_list(names: Iterable[str], limit: int = NAMES_SHOWN) -> str:
    """`a, b, c` or `a, b, c ... and 12 more`, sorted, for error messages."""
    ordered = sorted(names)
    shown = ", ".join(ordered[:limit])
    if len(ordered) > limit:
        shown += f" ... and {len(ordered) - limit} more"
    return shown


class CheckpointError(Exception):
    """A weights file is missing, unreadable or does not match the expected layout."""


class MissingFileError(CheckpointError):
    """A file the layout requires is not there."""


class CorruptFileError(CheckpointError):
    """A file exists but cannot be parsed, or is shorter than its own header says."""


class KeyMismatchError(CheckpointError):
    """A checkpoint lacks tensors the model needs, or holds tensors the model does not have."""

    def __init__(
        self, source: str, missing: Iterable[str] = (), unexpected: Iterable[str] = ()
    ) -> None:
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {name_list(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {name_list(self.unexpected)}")
        super().__init__(f"{source}: tensor names do not match the model ({'; '.join(parts)})")


class ShapeMismatchError(CheckpointError):
    """A tensor exists under the right name but with the wrong shape."""
