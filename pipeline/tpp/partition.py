"""Which part of the denoising work each DiT rank owns.

A block is denoised by S steps of L transformer layers each: the work is the sequence of
(step, layer) positions (0, 0), (0, 1), ... (S-1, L-1), run in that order. A partition cuts it
into one contiguous piece per DiT rank; rank r receives a block where rank r-1 stopped and hands
it on. A piece is a list of `Unit`s, one per step it touches; a rank holds the KV caches of its
units only.

- `split_steps`: whole steps, S // D each, the first S % D ranks one more (with the VAE on the
  last DiT rank, it gets the lighter share).
- `split_layers`: balanced cuts at layer granularity: every rank gets the same amount of work,
  counting the VAE decode on the last DiT rank as `tail_cost` layers. With S = 4, 4 GPUs and
  the VAE overlapped on the last one, whole steps leave the last GPU a whole decode behind the
  others; cutting inside a step gives that time back.

Where a cut falls inside a step, the hidden tokens travel with the block's latents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

Split = Literal["steps", "layers"]


@dataclass(frozen=True, order=True)
class Unit:
    """Layers [start, stop) of denoising step `step`."""

    step: int
    start: int
    stop: int

    @property
    def layers(self) -> range:
        return range(self.start, self.stop)

    def __len__(self) -> int:
        return self.stop - self.start


Partition = tuple[tuple[Unit, ...], ...]
"""One tuple of units per DiT rank, in pipeline order."""


def _units(begin: int, end: int, num_layers: int) -> tuple[Unit, ...]:
    """Units covering flat positions [begin, end) of the (step, layer) sequence."""
    out = []
    at = begin
    while at < end:
        step, layer = divmod(at, num_layers)
        stop = min(num_layers, layer + (end - at))
        out.append(Unit(step, layer, stop))
        at += stop - layer
    return tuple(out)


def split_steps(steps: int, num_layers: int, ranks: int) -> Partition:
    """Whole steps per rank, contiguous; the first `steps % ranks` ranks get one more."""
    _check(steps, num_layers, ranks)
    base, extra = divmod(steps, ranks)
    out, step = [], 0
    for r in range(ranks):
        n = base + (1 if r < extra else 0)
        out.append(tuple(Unit(s, 0, num_layers) for s in range(step, step + n)))
        step += n
    return tuple(out)


def split_layers(steps: int, num_layers: int, ranks: int, tail_cost: float = 0.0) -> Partition:
    """Contiguous layer ranges of equal work; the last rank also pays `tail_cost` layers (the
    decode it overlaps). Cuts are rounded to whole layers; every rank but the last gets at
    least one layer when there are enough."""
    _check(steps, num_layers, ranks)
    total = steps * num_layers
    share = (total + max(0.0, tail_cost)) / ranks
    cuts = [0]
    for r in range(1, ranks):
        cut = min(total, max(cuts[-1], round(share * r)))
        cuts.append(cut)
    cuts.append(total)
    return tuple(_units(cuts[r], cuts[r + 1], num_layers) for r in range(ranks))


def make_partition(
    split: Split, steps: int, num_layers: int, ranks: int, tail_cost: float = 0.0
) -> Partition:
    if split == "steps":
        return split_steps(steps, num_layers, ranks)
    if split == "layers":
        return split_layers(steps, num_layers, ranks, tail_cost)
    raise ValueError(f"unknown split {split!r}; use 'steps' or 'layers'")


def check_partition(partition: Partition, steps: int, num_layers: int) -> None:
    """Raise ValueError unless the pieces cover every (step, layer) once, in order."""
    flat = [u for piece in partition for u in piece]
    at = 0
    for u in flat:
        if not (0 <= u.step < steps and 0 <= u.start < u.stop <= num_layers):
            raise ValueError(f"partition unit {u} is outside {steps} steps x {num_layers} layers")
        if u.step * num_layers + u.start != at:
            raise ValueError("partition pieces must cover the steps' layers contiguously, in order")
        at = u.step * num_layers + u.stop
    if at != steps * num_layers:
        raise ValueError("partition does not cover every step's layers")


def layer_span(piece: tuple[Unit, ...]) -> range:
    """The model layers a piece touches (the sink keys it needs): min start .. max stop."""
    if not piece:
        return range(0)
    return range(min(u.start for u in piece), max(u.stop for u in piece))


def sink_layers(partition: Partition, rank: int) -> range:
    """The sink layers `rank` saves in a state that keeps the sink's caches (format 1): those
    no lower rank holds. Every DiT rank holds an identical sink for the layers it runs, so
    each layer is saved once."""
    covered = 0
    for r, piece in enumerate(partition):
        span = layer_span(piece)
        mine = range(max(covered, span.start), max(covered, span.stop)) if span else range(0)
        if r == rank:
            return mine
        if span:
            covered = max(covered, span.stop)
    raise IndexError(rank)


def to_json(partition: Partition) -> str:
    return json.dumps([[[u.step, u.start, u.stop] for u in piece] for piece in partition])


def from_json(text: str | list) -> Partition:
    data = json.loads(text) if isinstance(text, str) else text
    return tuple(tuple(Unit(*map(int, u)) for u in piece) for piece in data)


def _check(steps: int, num_layers: int, ranks: int) -> None:
    if steps < 1 or num_layers < 1 or ranks < 1:
        raise ValueError("steps, layers and ranks must be at least 1")
