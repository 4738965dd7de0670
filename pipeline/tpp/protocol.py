"""What the engine and its rank processes say to each other.

Each rank has one duplex pipe to the caller. Messages are small dataclasses, pickled; tensors
inside them (a restored state, a captured state, the frame ring) travel as shared-memory handles
(torch.multiprocessing), never as bytes. Block latents go rank to rank over torch.distributed,
not through the caller.

caller -> rank: Open, Release, Capture, WriteShards, Stop, Shutdown
rank -> caller: Ready, Opened, FramesReady, Captured, Written, Stopped, Failed
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.tpp.partition import Partition

# ---- the frame ring ----------------------------------------------------------------------


class FrameRing:
    """Decoded frames on their way to the caller: shared memory, written by the decoding rank,
    copied out by the caller. `slots` blocks of uint8 [12, H, W, 3]; block n goes to slot
    n % slots once the caller has released block n - slots.

    head[0]: blocks the caller has released (all below it); head[1]: 1 once the caller stops
    reading (the writer then drops frames instead of waiting)."""

    def __init__(self, slots: int, frames: int, height: int, width: int):
        self.slots = slots
        self.data = torch.zeros(slots, frames, height, width, 3, dtype=torch.uint8).share_memory_()
        self.head = torch.zeros(2, dtype=torch.int64).share_memory_()

    # writer side
    def wait_for_slot(self, block: int, first_block: int) -> bool:
        """Wait until block `block` may be written; False if the caller stopped reading."""
        while True:
            if int(self.head[1]):
                return False
            released = max(int(self.head[0]), first_block)
            if block - released < self.slots:
                return True
            time.sleep(0.0005)

    def slot(self, block: int) -> torch.Tensor:
        return self.data[block % self.slots]

    # reader side
    def read(self, block: int) -> np.ndarray:
        return self.data[block % self.slots].numpy()

    def release(self, upto: int) -> None:
        """Blocks below `upto` have been read."""
        self.head[0] = upto

    def close(self) -> None:
        self.head[1] = 1


# ---- caller -> rank ----------------------------------------------------------------------


@dataclass
class StreamSpec:
    """Everything a rank needs to open its part of a stream."""

    fingerprint: dict[str, Any]
    width: int
    height: int
    infer_frames: int
    num_clips: int
    steps: int
    seed: int
    partition: Partition
    snapshots: int
    """Clip-boundary snapshots a DiT rank keeps (0: it waits at each boundary for the caller)."""
    start_clip: int = 0
    row_major: bool = False
    """The residual stream's layout (`WanS2VTransformer.row_major_stream`)."""
    restore_dir: str | None = None
    restore_tensors: dict[str, torch.Tensor] | None = None
    decoder_meta: dict[str, Any] | None = None
    prompt: str | None = None
    """The encoder rank only."""
    samples: np.ndarray | None = None
    """The encoder rank only: the speech, 16 kHz mono float32."""
    reference_frame: np.ndarray | None = None
    """The decoding rank only (portrait for the motion latents)."""
    ring: FrameRing | None = None
    """The decoding rank only."""
    profile_from_block: int | None = None
    """Measure per-rank timings from this block on (None: no timing)."""


@dataclass
class Open:
    spec: StreamSpec


@dataclass
class Release:
    """The caller is done with clip boundary `boundary` (it will not ask for its state)."""

    boundary: int


@dataclass
class Capture:
    """Send the state at `boundary` (the caller has every clip before it)."""

    boundary: int
    pinned: bool = False


@dataclass
class WriteShards:
    """Write this rank's share of the state at `boundary` into `directory`."""

    boundary: int
    directory: str


@dataclass
class Stop:
    """End the stream (at once if it is still running) and free its memory."""


@dataclass
class Shutdown:
    pass


# ---- rank -> caller ----------------------------------------------------------------------


@dataclass
class Ready:
    rank: int
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Opened:
    rank: int
    seconds: float


@dataclass
class FramesReady:
    block: int


@dataclass
class Captured:
    rank: int
    boundary: int
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    seconds: float


@dataclass
class Written:
    rank: int
    boundary: int
    files: list[dict[str, Any]]
    meta: dict[str, Any]
    capture_s: float
    write_s: float


@dataclass
class Stopped:
    rank: int
    blocks: int
    stats: dict[str, Any]


@dataclass
class Failed:
    rank: int
    error: str
    traceback: str
