"""Building the models of a preset: on the meta device, then materialised on the target device.

Nothing is ever built full-size in float32 on the host: modules are created on the meta device
(no memory), then given storage directly on the target device in the target dtype, and filled
either with random values (`random_init`) or by a checkpoint loader.

A `Placement` (pipeline.weights) says which parts a process builds and where: a single device
builds everything; a rank of the TPP engine builds only what it runs (the DiT on every DiT
rank, the VAE where it decodes, the text and audio encoders once). Parts left out are None.
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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
from diffusers import AutoencoderKLWan
from transformers import UMT5Config, UMT5EncoderModel, Wav2Vec2Config, Wav2Vec2Model

from pipeline.model import WanS2VTransformer
from pipeline.params import Precision
from pipeline.presets import Preset
from pipeline.text import Tokenizer, byte_tokenizer, hf_tokenizer

if TYPE_CHECKING:
    from pipeline.weights import Placement

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


@dataclass
class Components:
    dit: WanS2VTransformer | None
    text_encoder: UMT5EncoderModel | None
    tokenizer: Tokenizer | None
    audio_encoder: Wav2Vec2Model | None
    vae: AutoencoderKLWan | None
    text_device: torch.device | None = None
    """Where the text encoder runs; it may live in host memory and visit this device."""
    dit_loading: DeferredDit | None = None
    """The DiT while it loads (`dit` is None until `wait_dit` returns it)."""
    build_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds each part built here took (random weights drawn, or loaded from a release)."""

    @property
    def dit_info(self) -> DitInfo:
        """The DiT's device, dtype and precision, known before it has loaded."""
        if self.dit is not None:
            return DitInfo(self.dit.device, self.dit.dtype, self.dit.precision)
        if self.dit_loading is not None:
            return self.dit_loading.info
        raise RuntimeError("this process has no dit (not in its placement)")

    def wait_dit(self) -> WanS2VTransformer:
        """The DiT, once loaded (at once when it is)."""
        if self.dit is None:
            if self.dit_loading is None:
                raise RuntimeError("this process has no dit (not in its placement)")
            self.dit = self.dit_loading.result()
            self.dit_loading = None
        return self.dit

    def require(self, *parts: str) -> None:
        """Raise a clear error if a part this process must run was not built here (a DiT
        still loading counts as built)."""
        attrs = {"dit": "dit", "text": "text_encoder", "audio": "audio_encoder", "vae": "vae"}
        missing = [
            p
            for p in parts
            if getattr(self, attrs[p]) is None and not (p == "dit" and self.dit_loading)
        ]
        if missing:
            raise RuntimeError(f"this process has no {', '.join(missing)} (not in its placement)")


@contextmanager
def _on_meta(dtype: torch.dtype) -> Iterator[None]:
    """Build modules without memory, their tensors declared in `dtype`."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            yield
    finally:
        torch.set_default_dtype(previous)


def _single(device: torch.device | str) -> Placement:
    from pipeline.weights import Placement

    return Placement.single(device)


def build_empty(
    preset: Preset,
    device: torch.device | str,
    dtype: torch.dtype,
    placement: Placement | None = None,
) -> Components:
    """The preset's models with uninitialised storage in `dtype`: every part on `device`, or
    the parts `placement` names on their devices (offloaded text encoder: in host memory)."""
    placement = placement or _single(device)
    parts = placement.parts
    with _on_meta(dtype):
        dit = WanS2VTransformer(preset.dit) if "dit" in parts else None
        text = UMT5EncoderModel(UMT5Config(**preset.text_encoder)) if "text" in parts else None
        audio = Wav2Vec2Model(Wav2Vec2Config(**preset.audio_encoder)) if "audio" in parts else None
        vae = AutoencoderKLWan(**preset.vae) if "vae" in parts else None
    for part, m in zip(PART_ORDER, (dit, text, audio, vae), strict=True):
        if m is not None:
            m.to_empty(device=placement.devices[part])
            m.eval().requires_grad_(False)
    return Components(
        dit,
        text,
        byte_tokenizer if text is not None else None,
        audio,
        vae,
        text_device=placement.devices.get("text"),
    )


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


def build_random(
    preset: Preset,
    device: torch.device | str,
    dtype: torch.dtype,
    seed: int = 0,
    placement: Placement | None = None,
) -> Components:
    """The preset's models with seeded random weights (speed does not depend on weight values).

    With a placement, only its parts are built, each with the weights a single device draws
    for it. An offloaded text encoder is drawn on its device, then moved to host memory.
    """
    placement = placement or _single(device)
    started = time.perf_counter()
    comps = build_empty(preset, device, dtype, placement)
    comps.build_seconds["empty"] = time.perf_counter() - started
    for i, (part, m) in enumerate(
        zip(
            PART_ORDER,
            (comps.dit, comps.text_encoder, comps.audio_encoder, comps.vae),
            strict=True,
        )
    ):
        if m is None:
            continue
        started = time.perf_counter()
        where = torch.device(placement.devices[part])
        generator = torch.Generator(device=where).manual_seed(seed * 1000 + i)
        random_init(m, generator)
        if placement.load_device(part) != placement.devices[part]:
            m.to(placement.load_device(part))
        if where.type == "cuda":  # this thread's queue only (a DiT may load beside)
            torch.cuda.current_stream(where).synchronize()
        comps.build_seconds[part] = time.perf_counter() - started
    return comps


def load_released(
    preset: Preset,
    checkpoint_dir: str | os.PathLike[str],
    device: torch.device | str,
    dtype: torch.dtype,
    placement: Placement | None = None,
) -> Components:
    """The preset's models filled from the released checkpoint files (pipeline.weights): every
    part on `device`, or only the parts `placement` names, each on its device."""
    from pipeline.weights import load_weights

    placement = placement or _single(device)
    dit = None
    if "dit" in placement.parts:
        with _on_meta(dtype):
            dit = WanS2VTransformer(preset.dit)
    loaded = load_weights(
        checkpoint_dir,
        placement,
        dit=dit,
        text_config=UMT5Config(**preset.text_encoder),
        vae_config=dict(preset.vae),
        text_dtype=dtype,
        vae_dtype=dtype,
        audio_dtype=dtype,
    )
    for m in (dit, loaded.text_encoder, loaded.audio_encoder, loaded.vae):
        if m is not None:
            m.eval().requires_grad_(False)
    return Components(
        dit,
        loaded.text_encoder,
        hf_tokenizer(loaded.tokenizer) if loaded.tokenizer is not None else None,
        loaded.audio_encoder,
        loaded.vae,
        text_device=placement.devices.get("text"),
        build_seconds=dict(loaded.seconds),
    )


def build_deferred(
    preset: Preset,
    device: torch.device,
    dtype: torch.dtype,
    precision: Precision,
    *,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    dit_dir: str | os.PathLike[str] | None = None,
    prepare: Callable[[WanS2VTransformer], None] | None = None,
) -> Components:
    """Every part on `device`, the DiT still loading (`Components.dit_loading`) when this
    returns: the encoders and the VAE are built here, from the release in `checkpoint_dir`
    (None: seeded random weights, the very ones `build_random` draws); the DiT is filled in a
    thread from the release in `dit_dir` (None: random), then `prepare(dit)` runs there (the
    FP8 conversion, say). Benchmarks load a 14B DiT from disk with random encoders.

    The DiT's module is declared here, in the calling thread: declaring modules sets torch's
    default dtype, which is global, and must not change under the caller's feet later."""
    from pipeline.weights import Placement

    rest = Placement({part: device for part in PART_ORDER if part != "dit"})
    with _on_meta(dtype):
        dit = WanS2VTransformer(preset.dit)

    def fill() -> None:
        if dit_dir is None:
            dit.to_empty(device=device)
            generator = torch.Generator(device=device)
            random_init(dit, generator.manual_seed(seed * 1000 + PART_ORDER.index("dit")))
        else:
            from pipeline.weights import load_weights

            load_weights(dit_dir, Placement({"dit": device}), dit=dit)
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

    # the DiT first: its read overlaps the encoders' (the loading thread names every dtype it
    # creates, so the encoders' declarations below cannot change what it loads)
    loading = DeferredDit(load, DitInfo(device, dtype, precision))
    if checkpoint_dir is None:
        comps = build_random(preset, device, dtype, seed, placement=rest)
    else:
        comps = load_released(preset, checkpoint_dir, device, dtype, placement=rest)
    comps.dit_loading = loading
    return comps
