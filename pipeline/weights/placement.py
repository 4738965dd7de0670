"""Which parts of the model a process loads, and onto which device.

A single-GPU run loads everything on one device. In a TPP engine each rank loads only what it
runs: the DiT on every DiT rank, the VAE on the rank that decodes (its own GPU, or the last DiT
rank), and the text and audio encoders once, on the rank that computes the conditioning and
sends it to the others. The umT5 encoder (11 GB in bf16) is needed once per job, so it may live
in host memory and visit the GPU only while it encodes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from .layout import PARTS


@dataclass(frozen=True)
class Placement:
    """Part name ("dit", "vae", "text", "audio") -> device; parts left out are not loaded."""

    devices: Mapping[str, torch.device] = field(default_factory=dict)
    offload_text_encoder: bool = False
    """Keep the text encoder in host memory; move it to devices["text"] only to encode."""

    def __post_init__(self) -> None:
        unknown = set(self.devices) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown parts {sorted(unknown)}; parts are {list(PARTS)}")
        object.__setattr__(
            self, "devices", {part: torch.device(d) for part, d in self.devices.items()}
        )

    @property
    def parts(self) -> set[str]:
        return set(self.devices)

    def load_device(self, part: str) -> torch.device:
        """Where `part` is loaded to (host memory for an offloaded text encoder)."""
        if part == "text" and self.offload_text_encoder:
            return torch.device("cpu")
        return self.devices[part]

    @classmethod
    def single(cls, device: str | torch.device, offload_text_encoder: bool = False) -> Placement:
        """Everything on one device."""
        return cls({part: torch.device(device) for part in PARTS}, offload_text_encoder)

    @classmethod
    def tpp_rank(
        cls,
        rank: int,
        world_size: int,
        vae_on_own_gpu: bool,
        encoder_rank: int = 0,
        device_of: Callable[[int], torch.device] = lambda r: torch.device("cuda", r),
        offload_text_encoder: bool = True,
    ) -> Placement:
        """What rank `rank` of a `world_size`-GPU TPP engine loads.

        With `vae_on_own_gpu` the last rank only decodes and the others run the DiT; otherwise
        every rank runs the DiT and the last one decodes as well.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size}")
        if vae_on_own_gpu and world_size < 2:
            raise ValueError("a VAE on its own GPU needs at least 2 GPUs")
        dit_ranks = world_size - 1 if vae_on_own_gpu else world_size
        device = device_of(rank)
        devices: dict[str, torch.device] = {}
        if rank < dit_ranks:
            devices["dit"] = device
        if rank == world_size - 1:
            devices["vae"] = device
        if rank == encoder_rank:
            devices["text"] = device
            devices["audio"] = device
        return cls(devices, offload_text_encoder)


def release_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextmanager
def visiting(module: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Move `module` to `device` for the block, then back to host memory."""
    module.to(device)
    try:
        yield module
    finally:
        module.to("cpu")
        release_device_memory(device)
