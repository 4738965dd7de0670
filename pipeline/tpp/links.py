"""Block packets between neighbouring ranks, over torch.distributed send/recv.

A packet is a header, int64 [block, kind, flags], then (kind DATA) the block's latents
[16, 3, h, w] float32, the hidden tokens [1, block_tokens, dim] (model dtype) when the cut is
inside a step, and the block's audio features [layers, C, 12] float32 for DiT ranks. A STOP
header ends the stream early: it travels the same path as the blocks, so a rank waiting for
the next block is never left waiting on a peer that stopped.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pipeline.stream import to_device

DATA, STOP = 0, 1
HAS_HIDDEN, HAS_FEATURES = 1, 2


@dataclass
class Packet:
    block: int
    latents: torch.Tensor
    hidden: torch.Tensor | None = None
    features: torch.Tensor | None = None


@dataclass(frozen=True)
class Shapes:
    latents: tuple[int, ...]
    hidden: tuple[int, ...]
    hidden_dtype: torch.dtype
    features: tuple[int, ...]


class Link:
    """Sends to / receives from one peer rank on one device.

    Sends do not wait for the peer: on a GPU, a blocking send would hold this rank's compute
    stream until the next rank had taken the block, so no rank could start a block before its
    successor finished the one before. Up to `max_pending` sends stay in flight (their tensors
    kept alive); receives complete before the block is used.
    """

    def __init__(
        self,
        peer: int,
        device: torch.device,
        group: dist.ProcessGroup | None = None,
        max_pending: int = 16,
    ):
        self.peer = peer
        self.device = device
        self.group = group
        self.max_pending = max_pending
        self._pending: deque[tuple[Any, torch.Tensor]] = deque()

    def send(self, packet: Packet) -> None:
        flags = (HAS_HIDDEN if packet.hidden is not None else 0) | (
            HAS_FEATURES if packet.features is not None else 0
        )
        self._send(torch.tensor([packet.block, DATA, flags], dtype=torch.int64))
        self._send(packet.latents)
        if packet.hidden is not None:
            self._send(packet.hidden)
        if packet.features is not None:
            self._send(packet.features)

    def send_stop(self, block: int) -> None:
        self._send(torch.tensor([block, STOP, 0], dtype=torch.int64))
        self.flush()

    def flush(self) -> None:
        """Wait until every send has been taken by the peer."""
        while self._pending:
            self._pending.popleft()[0].wait()

    def recv(self, shapes: Shapes) -> Packet | int:
        """The next packet, or the block index a STOP header carries."""
        header = self._recv((3,), torch.int64)
        block, kind, flags = _host_values(header)
        if kind == STOP:
            return block
        latents = self._recv(shapes.latents, torch.float32)
        hidden = self._recv(shapes.hidden, shapes.hidden_dtype) if flags & HAS_HIDDEN else None
        features = self._recv(shapes.features, torch.float32) if flags & HAS_FEATURES else None
        return Packet(block, latents, hidden, features)

    def _send(self, t: torch.Tensor) -> None:
        # a header comes from the host: through page-locked memory, so the copy does not wait
        # for the work queued on the GPU
        t = to_device(t, self.device).contiguous()
        self._pending.append((dist.isend(t, self.peer, group=self.group), t))
        while len(self._pending) > self.max_pending:
            self._pending.popleft()[0].wait()

    def _recv(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        t = torch.empty(shape, dtype=dtype, device=self.device)
        dist.recv(t, self.peer, group=self.group)
        return t


def connect(rank: int, world: int, last_dit: int, side_group: Any, device: torch.device) -> None:
    """Exchange one message over every pair of ranks that will talk, in an order without
    cycles, at start: NCCL sets up a pair's connection on its first message and blocks both
    ends until the other joins, which mid-stream would stall a rank that sends early."""
    token = torch.zeros(1, device=device)
    if rank > 0:
        dist.recv(token, rank - 1)
    if rank < world - 1:
        dist.send(token, rank + 1)
    if rank == last_dit:
        for r in range(last_dit):
            dist.send(token, r, group=side_group)
    elif rank < last_dit:
        dist.recv(token, last_dit, group=side_group)


def _host_values(t: torch.Tensor) -> list[int]:
    if t.is_cuda:
        # wait with the GIL released (Event.synchronize does), so the decoding thread of this
        # rank keeps launching work while this one waits for its peer
        done = torch.cuda.Event()
        done.record()
        done.synchronize()
    return [int(v) for v in t.tolist()]
