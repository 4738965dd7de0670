"""The engine contract: what a caller (the worker, a benchmark, a script) may rely on.

An `Engine` has its models loaded and serves one `RenderStream` at a time:

    engine: Engine = Generator.from_preset(...)      # one device
    engine: Engine = pipeline.tpp.Engine(config)     # several devices, one process per rank
    stream = engine.open(request)                    # or open(request, resume_from=directory)
    for clip in stream:                              # pipeline.Clip, frames uint8 [T, H, W, 3]
        ...
        state = stream.state_dict(pin_memory=True)   # between clips: the state on the host
        stream.checkpoint(directory)                 # or: the stream writes it itself
    engine.shutdown()

A checkpoint directory written by `pipeline.state.write_checkpoint(stream.state_dict(), d)` or
by `stream.checkpoint(d)` resumes with `engine.open(request, resume_from=d)` on an engine of the
same model and layout; the frames that follow are those of an uninterrupted stream.
`writes_own_checkpoints` says which of the two a caller should use: an engine whose ranks each
write their own shard (pipeline.tpp) does it faster than a caller gathering the state first.

An engine runs its DiT at one `precision` (pipeline.params.PRECISIONS), chosen when it is built;
every state and checkpoint records it, and `open(..., resume_from=...)` refuses a checkpoint of
another precision with `PrecisionMismatch` (a ValueError, defined with the precisions in
pipeline.params).

An engine may also keep presenters across streams (`PresenterEngine`: the one-device
generator): what a stream's open computes from its portrait, prompt, size and precision alone
is cached per namespace (pipeline/presenters.py), and `open(request, namespace=tenant)` of a
presenter seen before takes it from there, with the same frames.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from pipeline.params import Precision, PrecisionMismatch

if TYPE_CHECKING:  # importing the contract loads no torch
    from pipeline.presenters import PresenterCache
    from pipeline.request import Clip, RenderRequest
    from pipeline.state import StateDict

__all__ = ["Engine", "PrecisionMismatch", "PresenterEngine", "RenderStream"]


@runtime_checkable
class RenderStream(Protocol):
    """One render: clips in order, its state capturable between clips."""

    @property
    def num_clips(self) -> int: ...

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    @property
    def fps(self) -> int: ...

    @property
    def next_clip(self) -> int:
        """The index of the clip the next iteration yields (= clips done, after a resume too)."""
        ...

    def __iter__(self) -> Iterator[Clip]: ...

    def __next__(self) -> Clip: ...

    def state_dict(self, pin_memory: bool = False) -> StateDict:
        """The state at this clip boundary, on the host (`pipeline.state` layout).

        pin_memory: into page-locked buffers the stream keeps and reuses (a fast device-to-host
        copy); the returned tensors are those buffers, valid until the next such call."""
        ...

    def checkpoint(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write the state at this clip boundary into `directory`, manifest.json last; returns
        the files written, manifest last."""
        ...

    def close(self) -> None:
        """Free the stream's caches; it can no longer be used. Idempotent."""
        ...


@runtime_checkable
class Engine(Protocol):
    """Models loaded once, serving render streams one after another."""

    @property
    def precision(self) -> Precision:
        """How the DiT's linear layers run: "bf16" or "fp8" (pipeline.params.PRECISIONS)."""
        ...

    @property
    def writes_own_checkpoints(self) -> bool:
        """True: callers should checkpoint with `stream.checkpoint(directory)`; False: with
        `pipeline.state.write_checkpoint(stream.state_dict(...), directory)`."""
        ...

    def open(
        self, request: RenderRequest, *, resume_from: str | os.PathLike[str] | None = None
    ) -> RenderStream:
        """Start a stream for `request` (closing the previous one), or continue the stream a
        checkpoint directory holds. Raises PrecisionMismatch if the checkpoint was rendered at
        another precision, ValueError if it belongs to another request, model or layout."""
        ...

    def shutdown(self) -> None:
        """Release what the engine holds beyond its Python objects (rank processes, devices).
        Idempotent."""
        ...


@runtime_checkable
class PresenterEngine(Engine, Protocol):
    """An engine whose streams can take their presenter from a cache (pipeline/presenters.py)."""

    presenter_cache: PresenterCache | None
    """The cache its streams use (None: none); its owner may share one between engines."""

    def open(
        self,
        request: RenderRequest,
        *,
        resume_from: str | os.PathLike[str] | None = None,
        namespace: str | None = None,
    ) -> RenderStream:
        """As `Engine.open`; with a namespace (the caller's tenant) and a cache, a fresh
        stream's presenter comes from the cache, or is computed and kept there. Another
        namespace's entries are never used."""
        ...
