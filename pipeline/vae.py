"""The Wan2.1 VAE (diffusers `AutoencoderKLWan`): encoding the inputs, streaming decode.

Latents inside the pipeline are normalised per channel, (z - mean) / std, as the DiT expects.

`StreamingDecoder` decodes a latent video piece by piece with the decoder's causal-convolution
feature cache kept between calls. diffusers' `vae.decode()` decodes frame by frame with that
same cache but clears it on every call; driving `vae.decoder` per latent frame with a persistent
cache makes any split of the latents into calls give exactly the frames of one `vae.decode()`
over all of them. The first latent frame of a stream decodes to 1 video frame, every later one
to 4.

The decoder runs one latent frame at a time through `decode_frame`, which drives the
decoder's modules in the order and with the ops of `WanDecoder3d.forward` but tells the
temporal upsamplers' "seen one frame" marker from a tensor by type. (diffusers compares a
cached tensor with that string; torch 2.11's compiler cannot trace the comparison, broke the
decoder into ~30 graphs, one per module and shape, and took ~19 s to warm them up in every
process on an H200.)

On a GPU the decoder runs channels-last and compiled (`decode_frame`, whole; the cache's
entries are inputs and outputs of the graph, replaced as in eager mode), which leaves the
cache, its snapshots and its state as they are. A stream's first two latent frames (the prime,
never shown) decode eagerly in every process: the graphs for an empty cache and for a cache of
one frame would serve two frames per stream and cost seconds of every open to compile; only
the steady graph is compiled. Where torch can save a compiled function (`aot_compile`), the
steady graph is compiled once per size and machine, saved beside inductor's cache and loaded
by every later process (`precompiled`): a worker's open then loads it instead of tracing and
compiling it. Compiled frames differ from eager ones by rounding only (ops/bench/generate.py
measures it). The compiled decoder is handed canonical strides (`_canonical`: one layout per
decoder), so the graph that runs is fixed by the stream's position, whatever the process ran
before: a resumed stream repeats the uninterrupted one's frames bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import (
    WanCausalConv3d,
    WanDecoder3d,
    WanResample,
    WanUpBlock,
)

from pipeline.model import fused

_REPEAT = "Rep"  # diffusers' marker in the cache of a temporal upsampler that has seen one frame
_CACHE_T = 2  # frames a causal convolution keeps (diffusers' CACHE_T)


_STATS: weakref.WeakKeyDictionary[
    AutoencoderKLWan, dict[torch.device, tuple[torch.Tensor, torch.Tensor]]
] = weakref.WeakKeyDictionary()


def _stats(vae: AutoencoderKLWan, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The latents' per-channel mean and std [1, 16, 1, 1, 1] on `device`, made once: a
    tensor built from host values is a blocking copy, which would make every decode wait for
    the GPU to finish all the work queued before it."""
    on = _STATS.setdefault(vae, {})
    if device not in on:
        mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=device)
        std = torch.tensor(vae.config.latents_std, dtype=torch.float32, device=device)
        on[device] = (mean.view(1, -1, 1, 1, 1), std.view(1, -1, 1, 1, 1))
    return on[device]


def normalize_latents(vae: AutoencoderKLWan, z: torch.Tensor) -> torch.Tensor:
    mean, std = _stats(vae, z.device)
    return (z.float() - mean) / std


def denormalize_latents(vae: AutoencoderKLWan, z: torch.Tensor) -> torch.Tensor:
    mean, std = _stats(vae, z.device)
    return z.float() * std + mean


@torch.no_grad()
def encode(vae: AutoencoderKLWan, video: torch.Tensor) -> torch.Tensor:
    """Pixels [3, T, H, W] in [-1, 1] -> normalised latents [16, 1 + (T-1)/4, H/8, W/8] float32
    (the posterior's mean)."""
    param = next(vae.parameters())
    x = video.unsqueeze(0).to(device=param.device, dtype=param.dtype)
    z = vae.encode(x).latent_dist.mode()
    return normalize_latents(vae, z)[0]


def to_uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """Decoded video [1, 3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3] (on the same device)."""
    x = ((video[0].float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(1, 2, 3, 0)


def use_channels_last(vae: AutoencoderKLWan) -> None:
    """Store the VAE's convolution kernels channels-last (3-D kernels channels_last_3d), which
    cuDNN runs faster on GPU. Values are unchanged; call once, before decoding."""
    for m in vae.modules():
        if isinstance(m, torch.nn.Conv3d):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last_3d)
        elif isinstance(m, torch.nn.Conv2d):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)


@dataclass(frozen=True)
class DecoderSnapshot:
    """The decoder's cache at one moment. Decoding replaces cache entries with new tensors and
    never writes into old ones, so holding the entries keeps that moment at no copying cost."""

    cache: tuple[torch.Tensor | str | None, ...]
    frames_decoded: int


# ---- one latent frame through the decoder --------------------------------------------------

CacheEntry = torch.Tensor | str | None
"""A causal convolution's cached frames [1, C, 1 or 2, H, W]; `_REPEAT` for a temporal
upsampler that has seen one frame; None before the first frame."""


def check_decoder(decoder: WanDecoder3d) -> None:
    """`decode_frame` drives the Wan2.1 decoder (plain up blocks, temporal and spatial 2×
    upsamplers); anything else is refused rather than decoded wrongly."""
    for block in decoder.up_blocks:
        if not isinstance(block, WanUpBlock):
            raise ValueError(f"streaming decode does not support {type(block).__name__}")
        for up in block.upsamplers or ():
            if up.mode not in ("upsample2d", "upsample3d"):
                raise ValueError(f"streaming decode does not support a {up.mode!r} resample")


def decode_frame(decoder: WanDecoder3d, x: torch.Tensor, cache: list[CacheEntry]) -> torch.Tensor:
    """One latent frame x [1, C, 1, h, w] (after post_quant_conv) -> its video frames
    [1, 3, 1 or 4, H, W], replacing `cache`'s entries (diffusers' order) with new ones.

    The ops, and their order, are `WanDecoder3d.forward(x, feat_cache=cache)`'s, so eager
    frames are bit-identical to it; the residual and attention blocks are the modules' own."""
    idx = [0]
    x = _cached_conv(decoder.conv_in, x, cache, idx)
    x = decoder.mid_block(x, feat_cache=cache, feat_idx=idx)
    for block in decoder.up_blocks:
        for resnet in block.resnets:
            x = resnet(x, feat_cache=cache, feat_idx=idx)
        if block.upsamplers is not None:
            x = _upsample(block.upsamplers[0], x, cache, idx)
    x = decoder.nonlinearity(decoder.norm_out(x))
    return _cached_conv(decoder.conv_out, x, cache, idx)


def _cached(x: torch.Tensor, entry: torch.Tensor | None) -> torch.Tensor:
    """What a causal convolution caches after reading x: x's last frames, topped up to
    _CACHE_T with the previous entry's last one."""
    kept = x[:, :, -_CACHE_T:, :, :].clone()
    if kept.shape[2] < _CACHE_T and entry is not None:
        kept = torch.cat([entry[:, :, -1, :, :].unsqueeze(2), kept], dim=2)
    return kept


def _cached_conv(
    conv: WanCausalConv3d, x: torch.Tensor, cache: list[CacheEntry], idx: list[int]
) -> torch.Tensor:
    entry = cache[idx[0]]
    assert not isinstance(entry, str)
    kept = _cached(x, entry)
    x = conv(x, entry)
    cache[idx[0]] = kept
    idx[0] += 1
    return x


def _upsample(
    up: WanResample, x: torch.Tensor, cache: list[CacheEntry], idx: list[int]
) -> torch.Tensor:
    """`WanResample.forward` for the decoder's modes: a temporal upsampler doubles the frames
    from its second frame on (its first frame only marks the cache), then every frame is
    upsampled 2× in space."""
    b, c, t, h, w = x.size()
    if up.mode == "upsample3d":
        entry = cache[idx[0]]
        if entry is None:
            cache[idx[0]] = _REPEAT
        else:
            seen_one = isinstance(entry, str)  # its first frame passed without a time conv
            kept = _cached(x, None if seen_one else entry)
            if seen_one and kept.shape[2] < _CACHE_T:  # topped up with a zero frame instead
                kept = torch.cat([torch.zeros_like(kept), kept], dim=2)
            x = up.time_conv(x) if seen_one else up.time_conv(x, entry)
            cache[idx[0]] = kept
            x = x.reshape(b, 2, c, t, h, w)
            x = torch.stack((x[:, 0, :, :, :, :], x[:, 1, :, :, :, :]), 3)
            x = x.reshape(b, c, t * 2, h, w)
        idx[0] += 1
    t = x.shape[2]
    x = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    x = up.resample(x)
    return x.view(b, t, x.size(1), x.size(2), x.size(3)).permute(0, 2, 1, 3, 4)


_COMPILED: weakref.WeakKeyDictionary[AutoencoderKLWan, dict[str, Callable[..., Any]]] = (
    weakref.WeakKeyDictionary()
)


def compiled_decoder(vae: AutoencoderKLWan) -> Callable[..., Any]:
    """`decode_frame` on `vae.decoder`, compiled whole with the glue's backend
    (`fused.compile_backend`), once per VAE and backend (streams share it; kernels are built
    on first use)."""
    backend = fused.compile_backend()
    by_backend = _COMPILED.setdefault(vae, {})
    fn = by_backend.get(backend)
    if fn is None:
        fused.configure_compiler()  # a graph per stream position and size
        decoder = vae.decoder

        def frame(x: torch.Tensor, cache: list[CacheEntry]) -> torch.Tensor:
            return decode_frame(decoder, x, cache)

        fn = by_backend[backend] = fused.compile_static(frame, backend)
    return fn


class FrameDecoder(torch.nn.Module):
    """`decode_frame` as a module's forward. A saved graph takes the module as an argument,
    so the weights stay out of the artefact and are read from the live VAE."""

    def __init__(self, decoder: WanDecoder3d):
        super().__init__()
        self.decoder = decoder

    def forward(self, x: torch.Tensor, cache: list[CacheEntry]) -> torch.Tensor:
        return decode_frame(self.decoder, x, cache)


def call_frame_decoder(
    module: FrameDecoder, x: torch.Tensor, cache: list[CacheEntry]
) -> torch.Tensor:
    return module(x, cache)


ARTEFACT_FORMAT = 1
"""Bumped when what an artefact holds changes in a way its other key parts do not show."""

_PRECOMPILED: weakref.WeakKeyDictionary[
    AutoencoderKLWan, dict[str, Callable[[torch.Tensor, list[CacheEntry]], torch.Tensor]]
] = weakref.WeakKeyDictionary()


def precompiles() -> bool:
    """Whether compiled decoders save their steady graph and load it in later processes: on,
    with inductor, where this torch has `aot_compile` (2.11 has it behind a switch)."""
    return (
        fused.compile_backend() == "inductor"
        and hasattr(torch.compiler, "load_compiled_function")
        and hasattr(torch._dynamo.config, "enable_aot_compile")
    )


def artefact_path(vae: AutoencoderKLWan, x: torch.Tensor, cache: list[CacheEntry]) -> Path:
    """Where the steady graph for these inputs is saved: inductor's cache directory
    (TORCHINDUCTOR_CACHE_DIR), under a name hashed from everything the graph depends on:
    the torch and diffusers versions, the device's model, the weights' shapes, layouts and
    dtypes, the inputs' shapes and strides, the VAE's configuration and this module's code."""
    import diffusers
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    device = x.device
    facts = {
        "format": ARTEFACT_FORMAT,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{device.type}-{platform.machine()}",
        "weights": [
            (name, tuple(w.shape), w.stride(), str(w.dtype))
            for name, w in vae.decoder.named_parameters()
        ],
        "inputs": [
            (tuple(t.shape), t.stride(), str(t.dtype)) if isinstance(t, torch.Tensor) else t
            for t in (x, *cache)
        ],
        # diffusers' bookkeeping keys ("_use_default_values"...) are left out: their order
        # varies from process to process
        "config": {k: v for k, v in vae.config.items() if not k.startswith("_")},
        "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "compile_options": fused.compile_options("inductor"),
    }
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()
    return Path(cache_dir()) / "longtake-decoder" / f"{digest[:40]}.aot"


def precompiled(
    vae: AutoencoderKLWan, x: torch.Tensor, cache: list[CacheEntry]
) -> Callable[[torch.Tensor, list[CacheEntry]], torch.Tensor]:
    """The steady-frame graph for inputs shaped like x and cache (canonical), loaded from its
    artefact, or compiled with `aot_compile` and saved there for later processes (once per
    VAE and inputs in a process).

    A process that loads the graph skips tracing and compiling it (on an H200, 720x400: first
    frame 3.7 s after the start against 8.8 s for torch.compile with a warm cache). Every
    process then runs the same kernels: saved and loaded graphs decode bit for bit alike,
    which resumed streams rely on. A damaged or unreadable artefact is compiled anew; one
    that cannot be written leaves this process with its in-memory graph."""
    path = artefact_path(vae, x, cache)
    by_key = _PRECOMPILED.setdefault(vae, {})
    fn = by_key.get(path.name)
    if fn is not None:
        return fn
    module = FrameDecoder(vae.decoder)
    graph: Callable[..., Any] | None = None
    if path.exists():
        try:
            with open(path, "rb") as f:
                graph = torch.compiler.load_compiled_function(
                    f, f_globals=call_frame_decoder.__globals__
                )
        except Exception as exc:  # noqa: BLE001 - any damage: compile anew
            warnings.warn(f"decoder artefact {path} unreadable, compiling: {exc}", stacklevel=2)
            path.unlink(missing_ok=True)
    if graph is None:
        fused.configure_compiler()
        torch._dynamo.config.enable_aot_compile = True  # off by default before torch 2.12
        compiled = fused.compile_static(call_frame_decoder, "inductor")
        graph = compiled.aot_compile(((module, x, list(cache)), {}))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            part = path.with_name(f"{path.name}.{os.getpid()}.part")
            graph.save_compiled_function(str(part))
            os.replace(part, path)  # whole or absent, whoever saves at the same time
        except OSError as exc:
            warnings.warn(f"decoder artefact not saved to {path}: {exc}", stacklevel=2)

    def steady(frame: torch.Tensor, entries: list[CacheEntry]) -> torch.Tensor:
        return graph(module, frame, entries)

    by_key[path.name] = steady
    return steady


COMPILED_FROM_FRAME = 2
"""The first latent frame (0-based) a compiled decoder runs compiled; those before run eagerly."""

WARM_UP_PASSES = 4
"""The most scratch passes a compiled decoder's warm-up makes (two sufficed on an H200)."""

_WARMED: weakref.WeakKeyDictionary[AutoencoderKLWan, set[tuple[object, ...]]] = (
    weakref.WeakKeyDictionary()
)


class StreamingDecoder:
    """Decodes normalised latents call by call; the causal conv cache lives across calls.

    channels_last (GPU): feed the decoder channels-last activations (pair with
    `use_channels_last(vae)`); the CPU keeps the default layout, bit-identical to `vae.decode`.
    compiled (GPU): decode steady frames (from COMPILED_FROM_FRAME on) with a compiled graph:
    `precompiled` where this torch can save one, else `compiled_decoder(vae)`.
    """

    def __init__(self, vae: AutoencoderKLWan, channels_last: bool = False, compiled: bool = False):
        self.vae = vae
        self.channels_last = channels_last
        self.compiled = compiled
        check_decoder(vae.decoder)
        self.num_convs = sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
        self._cache: list[CacheEntry] = [None] * self.num_convs
        self.frames_decoded = 0  # latent frames
        self._steady_fns: dict[
            tuple[int, ...], Callable[[torch.Tensor, list[CacheEntry]], torch.Tensor]
        ] = {}

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [16, T, h, w] -> video [1, 3, T', H, W] in [-1, 1] (VAE dtype)."""
        if self.compiled:
            fused.configure_compiler()  # in this thread (a decode thread compiles too)
            self.warm_up(*latents.shape[2:])
        param = next(self.vae.parameters())
        z = denormalize_latents(self.vae, latents.unsqueeze(0).to(param.device))
        x = self.vae.post_quant_conv(z.to(param.dtype))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        out = []
        for i in range(x.shape[2]):
            frame = x[:, :, i : i + 1]
            if not (self.compiled and self.frames_decoded >= COMPILED_FROM_FRAME):
                out.append(self._eager(frame, self._cache))
                self.frames_decoded += 1
                continue
            frame = _canonical(frame, self.channels_last)
            self._cache = [_canonical(e, self.channels_last) for e in self._cache]
            try:
                out.append(self._steady(frame, self._cache)(frame, self._cache))
            except Exception as exc:  # noqa: BLE001 - no working compiler here: stay correct
                # a failed compile (or a saved graph refusing its inputs) runs nothing, so
                # the cache is as the last frame left it
                warnings.warn(f"compiled VAE decode failed, decoding eagerly: {exc}", stacklevel=2)
                self.compiled = False
                out.append(self._eager(frame, self._cache))
            self.frames_decoded += 1
        return torch.clamp(torch.cat(out, dim=2), min=-1.0, max=1.0)

    def warm_up(self, latent_h: int, latent_w: int) -> None:
        """Compile every graph a stream of this latent size can run, in a fixed order, before
        the first frame is decoded for real (once per VAE, size and layout in a process; the
        first decode calls it, or a caller earlier, beside other work). Eager: nothing to do.

        Which compiled graph runs a frame must not depend on what the process decoded
        before (graphs differ in rounding): where several graphs fit a situation, the one
        compiled last is chosen (when the compiler split the decoder into many graphs, on an
        H200, that made a resumed stream's frames differ). So a process decodes scratch
        streams (the eager prime, steady frames after it, a steady frame after a restore)
        until a pass compiles nothing new: every process then holds the same graphs, compiled
        in the same order, and a stream, resumed or not, runs the same kernels at the same
        position. The compile happens here, beside other work of the
        open (a restore's read), not in the first clip."""
        if not self.compiled:
            return
        key = (latent_h, latent_w, self.channels_last)
        warmed = _WARMED.setdefault(self.vae, set())
        if key in warmed:
            return
        warmed.add(key)  # first: the scratch decoders below must not warm up again
        channels = self.vae.config.z_dim
        device = next(self.vae.parameters()).device
        zeros = torch.zeros(channels, 3, latent_h, latent_w, device=device)
        for _ in range(WARM_UP_PASSES):
            before = fused.graphs_compiled()
            scratch = StreamingDecoder(self.vae, self.channels_last, compiled=True)
            scratch.decode(zeros[:, :COMPILED_FROM_FRAME])  # eager
            scratch.decode(zeros)  # compiled, from the eager frames' cache, then its own
            resumed = StreamingDecoder(self.vae, self.channels_last, compiled=True)
            resumed.load_state_dict(*scratch.state_dict())
            resumed.decode(zeros[:, :1])  # steady, from a restored cache
            if not (scratch.compiled and resumed.compiled):  # no working compiler here
                self.compiled = False
                return
            if fused.graphs_compiled() == before:
                return

    def _eager(self, x: torch.Tensor, cache: list[CacheEntry]) -> torch.Tensor:
        return decode_frame(self.vae.decoder, x, cache)

    def _steady(
        self, x: torch.Tensor, cache: list[CacheEntry]
    ) -> Callable[[torch.Tensor, list[CacheEntry]], torch.Tensor]:
        """The compiled function for a steady frame (canonical x and cache), found once per
        frame size (naming a saved graph hashes the decoder's weights' and inputs' layouts)."""
        key = tuple(x.shape)
        fn = self._steady_fns.get(key)
        if fn is None:
            fn = precompiled(self.vae, x, cache) if precompiles() else compiled_decoder(self.vae)
            self._steady_fns[key] = fn
        return fn

    # ---- state ---------------------------------------------------------------------------

    def snapshot(self) -> DecoderSnapshot:
        return DecoderSnapshot(tuple(self._cache), self.frames_decoded)

    def state_dict(
        self, snapshot: DecoderSnapshot | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
        """(tensors, plain metadata) to resume decoding exactly where it stands (or stood when
        `snapshot` was taken)."""
        snap = snapshot or self.snapshot()
        tensors: dict[str, torch.Tensor] = {}
        markers: dict[str, str] = {}
        channels_last: list[int] = []
        for i, entry in enumerate(snap.cache):
            if isinstance(entry, torch.Tensor):
                tensors[f"feat.{i}"] = entry
                if _is_channels_last(entry):
                    channels_last.append(i)
            elif entry is not None:
                markers[str(i)] = str(entry)
        meta: dict[str, object] = {
            "num_convs": self.num_convs,
            "frames_decoded": snap.frames_decoded,
            "markers": markers,
        }
        if channels_last:  # only channels-last decoders write it: older states stay readable
            meta["channels_last"] = channels_last
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, object]) -> None:
        if meta["num_convs"] != self.num_convs:
            raise ValueError("decoder state is for a different VAE")
        device = next(self.vae.parameters()).device
        cache: list[torch.Tensor | str | None] = [None] * self.num_convs
        layout = meta.get("channels_last", [])
        assert isinstance(layout, list)
        channels_last = {int(i) for i in layout}
        for i in range(self.num_convs):
            if f"feat.{i}" in tensors:
                t = tensors[f"feat.{i}"].to(device)
                if i in channels_last:
                    # as decoding left it: a saved tensor is dense in the default layout, and
                    # another layout would change the kernels (and the bits) of what follows
                    t = t.contiguous(memory_format=torch.channels_last_3d)
                cache[i] = t
        markers = meta["markers"]
        assert isinstance(markers, dict)
        for i, value in markers.items():
            if value != _REPEAT:
                raise ValueError(f"unknown decoder cache marker {value!r}")
            cache[int(i)] = value
        self._cache = cache
        self.frames_decoded = int(meta["frames_decoded"])  # type: ignore[arg-type]

    def nbytes(self) -> int:
        return sum(e.numel() * e.element_size() for e in self._cache if isinstance(e, torch.Tensor))


def _canonical(entry: torch.Tensor | str | None, channels_last: bool) -> Any:
    """A tensor dense in the decoder's layout (channels-last for a channels-last decoder's 5-D
    tensors, the default otherwise), with the strides a dense tensor of its shape has in that
    layout, size-1 dimensions included: itself or a view where its memory is already in that
    order, else a copy; anything else as it is.

    A compiled graph is chosen by guards on its inputs' strides, and a saved one
    (`precompiled`) accepts only the strides it was compiled for: the layout is therefore a
    function of the decoder alone, never of what produced an entry. A frame sliced from a 2-
    or a 3-frame call, an entry written by a compiled graph (whose output strides are the
    compiler's), one made by a concatenation along time (stored time-major) or one restored
    from a state all differ otherwise. (Each difference compiled a graph of its own; which
    graphs a stream then ran depended on what the process had decoded before, and the graphs'
    kernels differ in rounding: on an H200 the frames of a resumed stream did not repeat. A
    saved graph met an entry in the other layout and refused it.)"""
    if not isinstance(entry, torch.Tensor):
        return entry
    layout = (
        torch.channels_last_3d if channels_last and entry.dim() == 5 else torch.contiguous_format
    )
    if not entry.is_contiguous(memory_format=layout):
        entry = entry.contiguous(memory_format=layout)
    # dense in the layout but for strides of size-1 dimensions: the same memory order, so
    # the view reads the same values
    strides = _dense_strides(tuple(entry.shape), layout)
    if entry.stride() == strides:
        return entry
    return entry.as_strided(entry.shape, strides)


def _dense_strides(shape: tuple[int, ...], layout: torch.memory_format) -> tuple[int, ...]:
    """The strides of a dense tensor of `shape` in `layout` (size-1 dimensions included)."""
    dims = list(range(len(shape)))
    if layout == torch.channels_last_3d:  # N, C, T, H, W stored as N, T, H, W, C
        dims = [0, 2, 3, 4, 1]
    strides = [0] * len(shape)
    step = 1
    for d in reversed(dims):
        strides[d] = step
        step *= shape[d]
    return tuple(strides)


def _is_channels_last(t: torch.Tensor) -> bool:
    return (
        t.dim() == 5
        and not t.is_contiguous()
        and t.is_contiguous(memory_format=torch.channels_last_3d)
    )
