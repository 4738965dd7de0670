"""How a TPP engine is laid out and run: plain data, decided once at engine start."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from pipeline import params
from pipeline.model.attention import BACKENDS
from pipeline.tpp.partition import Split


@dataclass(frozen=True)
class EngineConfig:
    preset: str = "tiny"
    dit_devices: tuple[str, ...] = ("cpu",)
    """One DiT rank per entry, in pipeline order ("cuda:0", "cuda:1", ... or "cpu")."""
    vae_device: str | None = None
    """None: the last DiT rank decodes, overlapped with its DiT work on a separate CUDA stream.
    A device: a rank of its own on it that only decodes (a GPU no DiT rank uses)."""
    dtype: str | None = None
    """"bfloat16" / "float32"; None: bf16 on GPU, fp32 on CPU."""
    precision: str = params.PRECISION_DEFAULT
    """How the DiT's linear layers run (pipeline.params.PRECISIONS): "fp8" quantises them to
    float8 e4m3 once loaded, on every DiT rank (each quantises its own copy)."""
    random_weights: bool = False
    checkpoint_dir: str | None = None
    weights_seed: int = 0
    dit_overrides: tuple[tuple[str, Any], ...] = ()
    """DiT settings to change (e.g. (("num_layers", 2),) for a reduced depth)."""
    attention: str = "auto"
    """GPU attention kernel: pipeline.model.attention.BACKENDS."""
    compile: bool = True
    """torch.compile the DiT's elementwise glue (GPU only)."""
    vae_channels_last: bool = True
    """Channels-last VAE decode on GPU (faster in cuDNN; the CPU keeps the default layout)."""
    vae_compile: bool = True
    """torch.compile the streaming decoder (GPU only; its cache and state are unchanged)."""
    offload_text_encoder: bool = False
    """Keep umT5 in host memory; it visits the encoder rank's GPU once per stream."""
    split: Split = "layers"
    """How steps are cut between DiT ranks (pipeline.tpp.partition)."""
    vae_cost: float | None = None
    """The decode of one block in DiT layer-steps, for a balanced split with the VAE on the last
    DiT rank. None: measured by the warm-up (before that: vae_cost_guess)."""
    vae_cost_guess: float = 20.0
    snapshots: int | None = None
    """Clip-boundary state snapshots per DiT rank (GPU memory: one clip of KV ring each), which
    let ranks run ahead of the caller by that many boundaries. None: enough to keep the pipeline
    full (0 with one DiT rank)."""
    cpu_threads: int = 0
    """torch threads per rank (0: torch's default)."""
    warmup: bool = True
    """Run one clip at start, so compiles and first-run costs stay out of the first job."""
    warmup_size: str | None = None
    """Size key of the warm-up clip (None: 720*400, or 64*64 for the tiny preset)."""
    warmup_steps: int = 4
    frame_slots: int = 8
    """Decoded blocks the frame ring holds before the decoding rank waits for the caller."""
    comm_timeout_s: float = 300.0
    """A send/recv or collective that waits longer fails its rank (a hung peer)."""
    start_timeout_s: float = 3600.0
    """Model loading and warm-up."""
    stall_timeout_s: float = 600.0
    """The caller gives up on ranks that say nothing for this long while it waits on them."""
    extra_env: tuple[tuple[str, str], ...] = field(default=())
    """Environment variables set in each rank before torch starts there."""

    def __post_init__(self) -> None:
        if not self.dit_devices:
            raise ValueError("an engine needs at least one DiT device")
        if len(set(self.dit_devices)) != len(self.dit_devices) and self.device_type == "cuda":
            raise ValueError("each DiT rank needs a GPU of its own")
        if (
            self.vae_device is not None
            and self.vae_device in self.dit_devices
            and self.device_type == "cuda"
        ):
            raise ValueError(
                "the VAE's own GPU must not be a DiT GPU (leave vae_device unset to decode on "
                "the last DiT GPU)"
            )
        if self.attention not in BACKENDS:
            raise ValueError(f"attention must be one of {', '.join(BACKENDS)}")
        params.check_precision(self.precision)
        if self.split not in ("steps", "layers"):
            raise ValueError("split must be 'steps' or 'layers'")
        types = {torch.device(d).type for d in self.devices}
        if len(types) != 1:
            raise ValueError("all ranks must be on one kind of device")

    @classmethod
    def cuda(
        cls, gpus: int, vae_on_own_gpu: bool = False, *, first: int = 0, **kw: Any
    ) -> EngineConfig:
        """`gpus` GPUs from cuda:`first`: all DiT ranks, or the last one decoding alone.
        Engines side by side on one host take disjoint ranges (`first`)."""
        dit = gpus - 1 if vae_on_own_gpu else gpus
        if dit < 1:
            raise ValueError("a VAE on its own GPU needs at least 2 GPUs")
        if first < 0:
            raise ValueError("first must be a GPU index")
        return cls(
            dit_devices=tuple(f"cuda:{first + i}" for i in range(dit)),
            vae_device=f"cuda:{first + gpus - 1}" if vae_on_own_gpu else None,
            **kw,
        )

    def with_(self, **kw: Any) -> EngineConfig:
        return replace(self, **kw)

    # ---- derived -------------------------------------------------------------------------

    @property
    def vae_on_own_rank(self) -> bool:
        return self.vae_device is not None

    @property
    def dit_ranks(self) -> int:
        return len(self.dit_devices)

    @property
    def world_size(self) -> int:
        return self.dit_ranks + (1 if self.vae_on_own_rank else 0)

    @property
    def devices(self) -> tuple[str, ...]:
        """The device of each rank."""
        own = (self.vae_device,) if self.vae_on_own_rank else ()
        return (*self.dit_devices, *own)  # type: ignore[arg-type]

    @property
    def vae_rank(self) -> int:
        return self.world_size - 1

    @property
    def device_type(self) -> str:
        return torch.device(self.dit_devices[0]).type

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype is None:
            return torch.bfloat16 if self.device_type == "cuda" else torch.float32
        return getattr(torch, self.dtype)

    @property
    def backend(self) -> str:
        return "nccl" if self.device_type == "cuda" else "gloo"

    def snapshots_for(self, blocks_per_clip: int) -> int:
        """How many boundary snapshots keep rank 0 from waiting on the caller: it reaches the
        next boundary one clip after the last one, the caller decides about a boundary once
        the clip before it has crossed every rank and the decoder."""
        if self.snapshots is not None:
            return self.snapshots
        if self.dit_ranks == 1:
            return 0
        return max(1, math.ceil((self.dit_ranks + 1) / blocks_per_clip))
