"""The DiT's compiled glue, made before the DiT is there.

On a GPU the DiT's elementwise glue runs compiled (pipeline/model/fused.py): a graph per
function and per shape, stride and dtype it meets, made at its first call (a compile, or a load
from the compile cache). A process's first stream met them one by one, at its open and in its
first clip: seconds on the critical path of a worker's start, after the model's load. The
graphs depend on the model's configuration, the stream's geometry and the precision, not on the
weights, so `warm_up_dit` runs a scratch stream through the very code a stream runs
(`Denoiser`) on a scratch DiT of two layers (one that injects audio, one that does not) with
random weights: its sink, a clip of blocks as the ring fills, the adaptive sink, a steady
block. A stream's open calls it before waiting for its DiT, which may still be loading.

It also makes the graphs in a fixed order, whatever the process did before, so that a stream
resumed in a fresh process runs the graphs an uninterrupted one runs (the compiled decoder's
warm-up, pipeline/vae.py, does the same for the decoder).
"""

from __future__ import annotations

import torch

from pipeline.cache import SinkKeys, StepKVCache, kv_dtype, sink_latents
from pipeline.denoise import Denoiser
from pipeline.dit_loading import DitInfo, on_meta, random_init
from pipeline.geometry import Geometry
from pipeline.model import WanS2VTransformer, fused
from pipeline.presets import Preset
from pipeline.sampler import FlowSchedule

WARM_UP_PASSES = 3
"""The most scratch passes a warm-up makes: the first compiles, the next one finds nothing
new (a third only if the second did find something)."""

_WARMED: set[tuple[object, ...]] = set()


def warm_up_dit(
    preset: Preset,
    geometry: Geometry,
    schedule: FlowSchedule,
    text: torch.Tensor,
    audio_dims: tuple[int, int],
    info: DitInfo,
    row_major: bool,
) -> None:
    """Make every compiled graph of the DiT's glue that a stream of this geometry runs (once
    per configuration in a process). text: the stream's encoded prompt (its width, dtype and
    device count, not its length: the model pads it); audio_dims: (layers, channels) of its
    speech features; row_major: the stream's layout (`WanS2VTransformer.row_major_stream`).
    Where the glue is not compiled (the CPU) there is nothing to do."""
    if not fused.compiles_on(info.device):
        return
    g = geometry
    key = (
        repr(preset.dit),
        repr(preset.stream),
        g,
        schedule.timesteps,
        (text.shape[-1], text.dtype, text.device),  # its length is padded away in the model
        audio_dims,
        (info.device, info.dtype, info.precision),
        row_major,
    )
    if key in _WARMED:
        return
    _WARMED.add(key)  # first: a failure below must not repeat at every open
    with torch.no_grad():
        dit = scratch_dit(preset, info)
        dit.row_major_stream = row_major
        for _ in range(WARM_UP_PASSES):
            before = fused.graphs_compiled()
            scratch_text = text.new_zeros(1, text.shape[-1])
            _scratch_stream(dit, preset, g, schedule, scratch_text, audio_dims)
            if fused.graphs_compiled() == before:
                break
        del dit
    torch.cuda.empty_cache()


def scratch_dit(preset: Preset, info: DitInfo) -> WanS2VTransformer:
    """The preset's DiT cut to two layers (the first injecting audio if any layer does), with
    seeded random weights, on `info.device` at `info.precision`."""
    inject = (0,) if preset.dit.audio_inject_layers else ()
    cfg = preset.with_dit(num_layers=2, audio_inject_layers=inject).dit
    with on_meta(info.dtype):
        dit = WanS2VTransformer(cfg)
    dit.to_empty(device=info.device)
    dit.eval().requires_grad_(False)
    random_init(dit, torch.Generator(device=info.device).manual_seed(0))
    dit.set_precision(info.precision)
    return dit


def _scratch_stream(
    dit: WanS2VTransformer,
    preset: Preset,
    g: Geometry,
    schedule: FlowSchedule,
    text: torch.Tensor,
    audio_dims: tuple[int, int],
) -> None:
    """What a stream runs through its DiT, in a stream's order, at zero-valued inputs."""
    cfg, device = dit.cfg, dit.device
    caches = [
        StepKVCache(
            g,
            cfg.num_layers,
            cfg.num_heads,
            cfg.head_dim,
            device,
            kv_dtype(dit.precision, dit.dtype),
        )
        for _ in range(schedule.steps)
    ]
    sink_keys = SinkKeys(g, cfg.num_layers, cfg.num_heads, cfg.head_dim, device, dit.dtype)
    denoiser = Denoiser(dit, g, schedule, preset.stream, text, seed=0)
    _, motion = sink_latents(cfg.in_dim, preset.stream.motion_frames, g, device)
    denoiser.prefill_sink(caches, sink_keys, motion[:, 1:2], motion)
    noise = torch.zeros(cfg.in_dim, g.latent_frames_per_clip, g.latent_h, g.latent_w, device=device)
    n = g.video_frames_per_block
    layers, channels = audio_dims
    features = torch.zeros(layers, channels, g.blocks_per_clip * n, device=device)  # a clip's
    first = None
    for block in range(g.blocks_per_clip + 1):  # the ring filling, then a steady block
        b = block % g.blocks_per_clip
        x = denoiser.denoise_block(
            caches, sink_keys, features[..., b * n : (b + 1) * n], noise, block
        )
        if block == 0:
            first = x[:, :1].clone()
        if block == g.blocks_per_clip - 1:  # the adaptive sink, after the first clip
            assert first is not None
            denoiser.prefill_sink(caches, sink_keys, first, motion)
