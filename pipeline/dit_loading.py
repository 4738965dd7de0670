"""Starting the DiT's load first, before the rest of a process's models and modules.

The 14B DiT is most of a worker's model load (15-17 s from memory-backed files on an H200
host), and the modules the encoders and the VAE need (diffusers, transformers) take seconds
more to import. This module imports neither (only torch, the DiT's own code and the DiT's
checkpoint reader), so a worker starts the DiT's load (`start_dit_load`) before it imports
them, and the imports, the encoders' build and a stream's open run while the DiT loads.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from pipeline import gil, params
from pipeline.model import WanS2VTransformer, fp8_attention
from pipeline.params import Precision
from pipeline.presets import Preset, get_preset

log = logging.getLogger(__name__)

# The order parts draw their random weights in: part i of seed s uses seed s * 1000 + i, so a
# process that builds only some parts gets the very weights a single device builds.
PART_ORDER = ("dit", "text", "audio", "vae")


@dataclass(frozen=True)
class DitInfo:
    """What a stream must know of the DiT before it has loaded: where it runs and how."""

    device: torch.device
    dtype: torch.dtype
    precision: Precision


class DeferredDit:
    """The DiT loading in a thread of its own (`Generator.from_preset(defer_dit=True)`).

    The 14B DiT is most of a worker's model load; a stream's open has much to do without it
    (its inputs, the text and speech encoders, reading a checkpoint, compiling the decoder), so
    it does that while the DiT loads and waits for it only where it needs it. A load that fails
    raises in the waiting thread, and the next wait starts the load again.
    """

    def __init__(self, load: Callable[[], WanS2VTransformer], info: DitInfo):
        self.info = info
        self._load = load
        self._lock = threading.Lock()
        self.seconds: float | None = None
        """How long the load took, once it has."""
        self.waiting = threading.Event()
        """Set once a caller has had to wait for the load (the open ran out of other work)."""
        self._future = self._start()

    def _start(self) -> Future[WanS2VTransformer]:
        future: Future[WanS2VTransformer] = Future()

        def run() -> None:
            started = time.perf_counter()
            try:
                with gil.loading():  # beside the imports and compiles of the opening thread
                    dit = self._load()
                self.seconds = time.perf_counter() - started
                log.info("the DiT loaded in %.1f s", self.seconds)
                future.set_result(dit)
            except BaseException as exc:  # raised where the DiT is waited for
                future.set_exception(exc)

        threading.Thread(target=run, name="dit-load", daemon=True).start()
        return future

    def result(self) -> WanS2VTransformer:
        with self._lock:
            future = self._future
        if not future.done():
            self.waiting.set()
        try:
            return future.result()
        except BaseException:
            with self._lock:
                if self._future is future:  # one new attempt, whoever waits next
                    log.warning("the DiT failed to load; it loads again at the next wait")
                    self._future = self._start()
            raise


@contextmanager
def on_meta(dtype: torch.dtype) -> Iterator[None]:
    """Build modules without memory, their tensors declared in `dtype`."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            yield
    finally:
        torch.set_default_dtype(previous)


@torch.no_grad()
def random_init(module: nn.Module, generator: torch.Generator) -> None:
    """Random weights that keep activations at unit scale through any depth.

    Matrices, kernels and embedding tables ~ N(0, 1/fan_in), modulation tables and other
    vectors ~ N(0, 1/width), biases ~ N(0, 0.02), norm scales 1 and norm biases 0.
    Values are drawn in float32 on the generator's device and cast, one tensor at a time.
    """
    norm_types = (nn.LayerNorm, nn.GroupNorm)
    norm_params = {
        id(p)
        for m in module.modules()
        if isinstance(m, norm_types)
        or type(m).__name__.lower().endswith(("rmsnorm", "rms_norm", "layernorm"))
        for p in m.parameters(recurse=False)
    }
    for name, p in module.named_parameters():
        if id(p) in norm_params or name.endswith(("norm_q.weight", "norm_k.weight")):
            p.fill_(0.0 if name.endswith("bias") else 1.0)
            continue
        if "modulation" in name:
            std = 1.0 / math.sqrt(p.shape[-1])
        elif p.ndim >= 2:
            std = 1.0 / math.sqrt(math.prod(p.shape[1:]))
        elif name.endswith("bias"):
            std = 0.02
        else:
            std = 1.0 / math.sqrt(max(p.shape[-1], 1))
        # float32 named, not taken from torch's default dtype: a DiT may load in a thread
        # while another declares modules (which sets the default dtype for a moment)
        draw = torch.randn(
            p.shape, generator=generator, device=generator.device, dtype=torch.float32
        )
        draw = draw * std
        p.copy_(draw)


def default_dtype(device: torch.device) -> torch.dtype:
    """The models' dtype when none is asked for: bf16 on a GPU, float32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def weights_dir(
    preset: Preset, random_weights: bool, checkpoint_dir: str | os.PathLike[str] | None
) -> str | os.PathLike[str] | None:
    """Where the preset's weights come from: None for seeded random ones (asked for, or the
    `tiny` preset, which has no release); ValueError when a release is needed and not given."""
    if random_weights or preset.name == "tiny":
        return None
    if checkpoint_dir is None:
        raise ValueError(f"preset {preset.name!r} needs checkpoint_dir (or random_weights=True)")
    return checkpoint_dir


def start_dit_load(
    preset: Preset,
    device: torch.device,
    dtype: torch.dtype,
    precision: Precision,
    *,
    seed: int = 0,
    dit_dir: str | os.PathLike[str] | None = None,
    prepare: Callable[[WanS2VTransformer], None] | None = None,
) -> DeferredDit:
    """The DiT filled in a thread from the release in `dit_dir` (None: the seeded random
    weights `pipeline.components.build_random` draws), then `prepare(dit)` there (None: the
    FP8 conversion when `precision` is fp8). Returns at once.

    The module is declared here, in the calling thread: declaring modules sets torch's default
    dtype, which is global, and must not change under another thread's feet later (the
    loading thread names every dtype it creates)."""
    if prepare is None and precision != "bf16":

        def prepare(dit: WanS2VTransformer) -> None:
            dit.set_precision(precision)

        if params.attention_in_fp8(precision):  # refused here, before the load starts
            fp8_attention.require(device)
    with on_meta(dtype):
        dit = WanS2VTransformer(preset.dit)

    def fill() -> None:
        if dit_dir is None:
            dit.to_empty(device=device)
            generator = torch.Generator(device=device)
            random_init(dit, generator.manual_seed(seed * 1000 + PART_ORDER.index("dit")))
        else:
            # the checkpoint reader alone: the package's loader imports the encoders' libraries
            from pipeline.weights.dit import load_dit
            from pipeline.weights.layout import CheckpointPaths

            paths = CheckpointPaths.at(dit_dir)
            load_dit(paths.base, dit, device, lora=paths.lora)
        dit.eval().requires_grad_(False)
        if prepare is not None:
            prepare(dit)

    def load() -> WanS2VTransformer:
        if device.type != "cuda":
            fill()
            return dit
        # on a CUDA stream of its own, so that the opening thread's kernels do not queue
        # behind the load's; the weights are complete on the device before anyone sees them
        with torch.cuda.device(device), torch.cuda.stream(torch.cuda.Stream(device)):
            fill()
            torch.cuda.current_stream(device).synchronize()
        return dit

    return DeferredDit(load, DitInfo(device, dtype, precision))


def start_preset_dit(
    name: str,
    *,
    device: str | torch.device,
    precision: Precision,
    random_weights: bool = False,
    checkpoint_dir: str | os.PathLike[str] | Path | None = None,
    seed: int = 0,
    dit_overrides: dict | None = None,
) -> DeferredDit:
    """`start_dit_load` for a preset by name (not "auto": resolving it reads the release's
    headers with the encoders' libraries), as `pipeline.Generator.from_preset` would build it;
    hand the result to `from_preset(..., dit_loading=...)`."""
    preset = get_preset(name)
    if dit_overrides:
        preset = preset.with_dit(**dit_overrides)
    device = torch.device(device)
    return start_dit_load(
        preset,
        device,
        default_dtype(device),
        precision,
        seed=seed,
        dit_dir=weights_dir(preset, random_weights, checkpoint_dir),
    )
