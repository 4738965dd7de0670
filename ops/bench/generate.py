"""Generation benchmark: the LiveAvatar streaming generator on one GPU, bf16 and fp8 side by side.

    python -m ops.bench.generate --out bench-out/generate.json           # 14B, 720x400
    python -m ops.bench.generate --preset tiny --device cpu --quick      # a dry run anywhere

Measures, in one run:
  1. the matmul ceilings: bf16 products, and float8 e4m3 products through `torch._scaled_mm`
     with row-wise scales (the fp8 path's kernel), 8192^3 on random data, median of 20;
  2. per precision (`--precisions`, default bf16 then fp8), the 14B architecture (random
     weights) at 720x400, 4 steps: seconds per DiT step on one block for each step index, the
     VAE decode per block, frames per second of the whole loop on one GPU (online decode
     included), model FLOPs utilisation of the DiT step against both ceilings, the DiT's
     weight memory and peak GPU memory; timed with CUDA events over the clips after a warm-up
     clip (the ring cache is full from clip 1 on, so these are steady-state figures). One
     steady block runs under `torch.cuda.set_sync_debug_mode("warn")`: every host
     synchronisation inside it is counted (there should be none);
  3. the streaming decode per block, eager (default layout and channels-last) and compiled
     (channels-last), on the same latents: time, how far compiled frames are from eager ones,
     and whether a compiled decoder's state, saved and restored, continues bit for bit;
  4. what fp8 costs in error: the relative error of the velocity against bf16's on the same
     inputs (one block, each step: the same latents, caches, prompt and audio; the fp8 model
     is the bf16 model quantised; fp8-attention's on the same caches quantised to e4m3 as its
     stream would hold them), and the PSNR of the decoded frames against the bf16 render
     of the same request after 1, 10 and 50 clips (`--quality-size`, `--quality-clips`;
     `--quality-only` runs these renders and nothing else). Random weights: real weights may
     differ;
  5. (optional) the stream state at a clip boundary: its size, the time to capture it to host
     memory (pageable and pinned) and to write it as a checkpoint directory (fsync'd);
  6. (optional) GPU memory and host RSS after 10, 100 and 300 clips with online and with
     offline decode, at a reduced DiT depth (`--mem-layers`). A growth run stops early, and
     says so, when the next sample would not finish before `--deadline`.

The fp8 generator is the bf16 one with its DiT quantised in place (what
`Generator.from_preset(..., precision="fp8")` builds from the same seed), so both render with
the same weights and the run needs one model build.

Prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import gc
import io
import platform
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ops.bench.options import add_model_options
from ops.bench.report import save_report
from ops.bench.timing import seconds_of, time_call
from pipeline import Generator, RenderRequest, Waveform
from pipeline import state as state_io
from pipeline import vae as vae_mod
from pipeline.cache import E4M3, SinkKeys, StepKVCache, kv_multipliers
from pipeline.model import fp8, fused
from pipeline.model.attention import attention
from pipeline.model.fp8_attention import quantize
from pipeline.model.transformer import dit_flops_per_block_step
from pipeline.stream import clip_noise, to_device
from pipeline.text import encode_prompt

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


# --------------------------------------------------------------------------- inputs


def portrait(width: int, height: int) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    face = ((x - width / 2) / (width / 4)) ** 2 + ((y - height / 2) / (height / 3)) ** 2 < 1
    rgb = np.stack(
        [
            (200 * x / width).astype(np.uint8),
            (180 * y / height).astype(np.uint8),
            np.where(face, 210, 60).astype(np.uint8),
        ],
        axis=-1,
    )
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def speech(seconds: float) -> Waveform:
    t = np.arange(int(seconds * 16_000)) / 16_000
    voiced = np.sin(2 * np.pi * np.cumsum(140 + 30 * np.sin(2 * np.pi * 0.7 * t)) / 16_000)
    rng = np.random.default_rng(0)
    x = 0.4 * voiced * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) + 0.02 * rng.standard_normal(len(t))
    return Waveform(x.astype(np.float32))


def request(size: str, clips: int, steps: int, seed: int = 1) -> RenderRequest:
    w, h = (int(v) for v in size.split("*"))
    return RenderRequest(
        image=portrait(w, h),
        audio=speech(clips * 48 / 25 + 1),
        prompt="A woman speaks to the camera in a bright studio, natural light.",
        size=size,
        num_clips=clips,
        sample_steps=steps,
        seed=seed,
    )


# --------------------------------------------------------------------------- measuring


class Timer:
    """Times wrapped calls: CUDA events on a GPU, the wall clock on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending: list[tuple[str, Any, Any]] = []
        self.spans: dict[str, list[float]] = {}

    def wrap(self, fn: Callable[..., Any], label: Callable[..., str]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self.cuda:
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                start.record()
                out = fn(*args, **kwargs)
                end.record()
            else:
                start = time.perf_counter()
                out = fn(*args, **kwargs)
                end = time.perf_counter()
            self.pending.append((label(*args, **kwargs), start, end))
            return out

        return timed

    def collect(self, keep: bool = True) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        for name, start, end in self.pending:
            seconds = start.elapsed_time(end) / 1000 if self.cuda else end - start
            if keep:
                self.spans.setdefault(name, []).append(seconds)
        self.pending = []


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def gpu_bytes(device: torch.device) -> dict[str, int]:
    if device.type != "cuda":
        return {"allocated": 0, "reserved": 0}
    return {
        "allocated": torch.cuda.memory_allocated(device),
        "reserved": torch.cuda.memory_reserved(device),
    }


def matmul_ceiling(device: torch.device, n: int, repeats: int) -> float:
    """Median bf16 (GPU) / fp32 (CPU) matmul rate on random data, FLOP/s."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    pairs = [
        (
            torch.randn(n, n, device=device, dtype=dtype, generator=gen),
            torch.randn(n, n, device=device, dtype=dtype, generator=gen),
        )
        for _ in range(3)
    ]
    return 2 * n**3 / _median_time(device, [lambda a=a, b=b: a @ b for a, b in pairs], repeats)


def fp8_matmul_ceiling(device: torch.device, n: int, repeats: int) -> float:
    """Median rate of float8 e4m3 products with row-wise scales, as the fp8 path runs them
    (`pipeline.model.fp8.linear`: `torch._scaled_mm`, output in the model's dtype), FLOP/s."""
    out_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    calls = []
    for _ in range(3):
        x = torch.randn(n, n, device=device, generator=gen)
        w = torch.randn(n, n, device=device, generator=gen)
        rows = fp8.Fp8Rows(*fp8.quantize_rows(x))
        weight = fp8.Fp8Weight.quantize(w)
        calls.append(lambda r=rows, w=weight: fp8.linear(r, w, None, out_dtype))
    return 2 * n**3 / _median_time(device, calls, repeats)


def _median_time(device: torch.device, calls: list[Callable[[], Any]], repeats: int) -> float:
    for fn in calls:
        fn()
    sync(device)
    return statistics.median(seconds_of(calls[i % len(calls)], device) for i in range(repeats))


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (an FP8 linear keeps its weight in buffers)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of uint8 frames a against b (inf where equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


# --------------------------------------------------------------------------- parts


class SyncCheck:
    """Runs one chosen block of a stream under `torch.cuda.set_sync_debug_mode("warn")` and
    keeps every warning it raises: each is a point where the host waited for the GPU."""

    def __init__(self, stream: Any, clip: int, block: int):
        self.stream, self.clip, self.block = stream, clip, block
        self.inner = stream._generate_block
        self.warnings: list[str] | None = None  # None: the block has not run (yet)

    def __call__(self, clip: int, b: int, noise: torch.Tensor, frames: Any) -> torch.Tensor:
        if (clip, b) != (self.clip, self.block) or not torch.cuda.is_available():
            return self.inner(clip, b, noise, frames)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                out = self.inner(clip, b, noise, frames)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        self.warnings = sync_reports(str(w.message) for w in caught)
        return out


SYNC_REPORT = "called a synchronizing CUDA operation"
"""What torch warns at each host synchronisation in sync debug mode ("warn"). The mode also
warns, once per process, that it is a prototype: not a synchronisation."""


def sync_reports(messages: Iterable[str]) -> list[str]:
    """The first lines of the warnings that report a host synchronisation."""
    return [m.splitlines()[0] for m in messages if SYNC_REPORT in m]


def bench_generation(
    args: argparse.Namespace,
    gen: Generator,
    device: torch.device,
    ceilings: dict[str, float],
    keep_clips: set[int],
    keep_latents: int = 0,
) -> tuple[dict, Any, dict[int, np.ndarray], list[torch.Tensor]]:
    """One stream of 1 + args.clips clips at args.size: its steps, decodes and frames per
    second. Returns the figures, the stream (still open, at the clip after the measured ones),
    the frames of the clips in `keep_clips` and the first `keep_latents` blocks' clean latents
    of the measured clips (what the decoder was given)."""
    precision = gen.precision
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    clips = 1 + args.clips
    t = time.perf_counter()
    # one clip more than is measured: the stream stays at a boundary with a block to spare
    stream = gen.open(request(args.size, clips + 1, args.steps))
    sync(device)
    open_s = time.perf_counter() - t
    g = stream.geometry
    log(
        f"[{precision}] opened in {open_s:.1f}s: {stream.width}x{stream.height}, "
        f"{g.block_tokens} tokens/block, {g.cache_tokens} keys/step cache"
    )

    timer = Timer(device)
    stream.denoiser.step = timer.wrap(
        stream.denoiser.step, lambda cache, keys, x, step, block, audio: f"step{step}"
    )
    latents: list[torch.Tensor] = []
    decode = stream.decoder.decode

    def keep_and_decode(z: torch.Tensor) -> torch.Tensor:
        if stream.next_clip >= 1 and len(latents) < keep_latents:
            latents.append(z.clone())
        return decode(z)

    stream.decoder.decode = timer.wrap(keep_and_decode, lambda z: "vae_decode")
    check = SyncCheck(stream, clip=min(2, clips - 1), block=g.blocks_per_clip // 2)
    stream._generate_block = check

    kept: dict[int, np.ndarray] = {}
    t = time.perf_counter()
    first = next(stream)  # warm-up clip: kernels compiled and chosen, ring filled
    if 0 in keep_clips:
        kept[0] = first.frames
    timer.collect(keep=False)
    log(f"[{precision}] warm-up clip {time.perf_counter() - t:.1f}s")
    # capture buffers are page-locked once per worker and shape, in a thread started at the
    # open; still running, it would slow the measured blocks' launches (pipeline.host_buffers)
    t = time.perf_counter()
    gen.host_buffers.wait()
    buffers_wait_s = time.perf_counter() - t
    log(f"[{precision}] capture buffers ready after {buffers_wait_s:.1f}s more")

    sync(device)
    t = time.perf_counter()
    frames = 0
    for _ in range(args.clips):
        clip = next(stream)
        frames += clip.frames.shape[0]
        if clip.index in keep_clips:
            kept[clip.index] = clip.frames
    sync(device)
    loop_s = time.perf_counter() - t
    timer.collect()

    cfg = gen.preset.dit
    flops = dit_flops_per_block_step(cfg, g.block_tokens, g.cache_tokens)
    steps = {k: v for k, v in sorted(timer.spans.items()) if k.startswith("step")}
    step_median = statistics.median([s for v in steps.values() for s in v])
    decodes = timer.spans["vae_decode"]
    achieved = flops / step_median
    result = {
        "precision": precision,
        "open_s": open_s,
        "dit_parameters": sum(p.numel() for p in gen.components.dit.parameters())
        + sum(b.numel() for b in gen.components.dit.buffers()),
        "dit_weight_bytes": weight_bytes(gen.components.dit),
        "width": stream.width,
        "height": stream.height,
        "block_tokens": g.block_tokens,
        "cache_tokens": g.cache_tokens,
        "measured_clips": args.clips,
        "step_s": {k: statistics.median(v) for k, v in steps.items()},
        "step_s_all": steps,
        "step_median_s": step_median,
        "dit_tflop_per_step": flops / 1e12,
        "dit_tflops_achieved": achieved / 1e12,
        "mfu": achieved / ceilings["bf16"],
        "mfu_of_fp8_ceiling": achieved / ceilings["fp8"],
        "vae_decode_per_block_s": statistics.median(decodes),
        "vae_decode_all_s": decodes,
        "vae_decoder": {
            "compiled": stream.decoder.compiled,
            "channels_last": stream.decoder.channels_last,
        },
        "capture_buffers_wait_s": buffers_wait_s,
        "loop_s": loop_s,
        "fps": frames / loop_s,
        "block_s": loop_s / (args.clips * g.blocks_per_clip),
        "peak_gpu_allocated": torch.cuda.max_memory_allocated(device)
        if device.type == "cuda"
        else 0,
        "peak_gpu_reserved": torch.cuda.max_memory_reserved(device) if device.type == "cuda" else 0,
        "stream_memory": stream.memory_bytes(),
        "host_syncs_in_steady_block": None if check.warnings is None else len(check.warnings),
        "host_sync_warnings": check.warnings,
        "steady_block_checked": [check.clip, check.block],
    }
    stream._generate_block = check.inner
    stream.decoder.decode = decode
    log(
        f"[{precision}] step {step_median:.3f}s  MFU {result['mfu']:.1%} of bf16, "
        f"{result['mfu_of_fp8_ceiling']:.1%} of fp8  decode "
        f"{result['vae_decode_per_block_s']:.3f}s/block  {result['fps']:.2f} fps  "
        f"host syncs in a steady block: {result['host_syncs_in_steady_block']}"
    )
    result["step_eager_s"] = bench_eager_step(stream, device)
    log(f"[{precision}] step without torch.compile {result['step_eager_s']:.3f}s")
    return result, stream, kept, latents


def block_velocities(
    stream: Any, block: int, xs: list[torch.Tensor] | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The velocity of each step of block `block` on the stream's caches: from the block's
    noise along the trajectory they make, or (xs given) on those latents. Returns (latents
    fed to each step, velocities), float32. Each step rewrites the block's ring slot in its
    cache before it reads it, so calls with the same inputs see the same caches."""
    d, g = stream.denoiser, stream.geometry
    clip, b = divmod(block, g.blocks_per_clip)
    audio = d.audio(stream.clip_audio.block(block))
    noise = to_device(clip_noise(stream.request.seed, clip, d.dit.cfg.in_dim, g), d.dit.device)
    x = noise[:, b * g.frames_per_block : (b + 1) * g.frames_per_block]
    inputs, velocities = [], []
    with torch.no_grad():
        for i in range(stream.request.sample_steps):
            if xs is not None:
                x = xs[i]
            kv = d.block_kv(stream.caches[i], stream.sink_keys, i, block)
            v = d.dit(x, d.times[i], kv, d.text_kv, audio)
            inputs.append(x)
            velocities.append(v.float())
            x = d.schedule.euler(x, v, i)
    return inputs, velocities


def e4m3_caches(stream: Any) -> tuple[list[StepKVCache], SinkKeys]:
    """The stream's bf16 caches as a stream at precision fp8-attention holds them: each layer's
    multipliers picked from its sink as a prefill picks them (`kv_multipliers`), every key and
    value quantised at them; the reference keys as they are. The same inputs for FP8
    attention's velocity."""
    g, ref = stream.geometry, stream.sink_keys
    layers, _, _, heads, dim = stream.caches[0].kv.shape
    device, first = ref.ref.device, ref.layers.start
    keys = SinkKeys(g, layers, heads, dim, device, ref.ref.dtype, first)
    keys.ref.copy_(ref.ref)
    for j in range(layers):  # the same sink in every step's cache: the first one's
        sink = stream.caches[0].kv[j, :, : g.sink_tokens]  # [2, sink_tokens, H, D]
        keys.mults[j] = kv_multipliers(sink.abs().amax(dim=(1, 2, 3)))
    caches = []
    for cache in stream.caches:
        e4m3 = StepKVCache(g, layers, heads, dim, device, E4M3, first)
        for j in range(layers):  # a layer at a time: float32 of one layer, not of all
            e4m3.kv[j] = quantize(cache.kv[j], keys.mults[j].view(2, 1, 1, 1))
        caches.append(e4m3)
    return caches, keys


def e4m3_velocities(stream: Any, block: int, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """`block_velocities` on latents xs over `e4m3_caches` of the stream's bf16 caches (self-
    attention in FP8, as at precision fp8-attention); the stream keeps its own caches."""
    own = stream.caches, stream.sink_keys
    stream.caches, stream.sink_keys = e4m3_caches(stream)
    try:
        return block_velocities(stream, block, xs)[1]
    finally:
        stream.caches, stream.sink_keys = own


def refresh_text_kv(gen: Generator, stream: Any) -> None:
    """The stream's prompt keys and values made again by its DiT (after the DiT was quantised
    in place, its cross-attention's projections are fp8 ones)."""
    comps, d = gen.components, stream.denoiser
    text = encode_prompt(
        comps.text_encoder,
        comps.tokenizer,
        stream.request.prompt,
        gen.preset.dit.text_len,
        device=comps.text_device,
    )
    d.text_kv = d.dit.text_context(text)


def relative_errors(got: list[torch.Tensor], want: list[torch.Tensor]) -> list[float]:
    """|got - want| / |want| per step."""
    return [float((a - b).norm() / b.norm()) for a, b in zip(got, want, strict=True)]


def render_frames(gen: Generator, size: str, marks: list[int], steps: int) -> dict[int, np.ndarray]:
    """Frames of clips (marks: 1-based counts, e.g. 1, 10, 50) of one stream at `size`."""
    want = {m - 1 for m in marks}
    out: dict[int, np.ndarray] = {}
    stream = gen.open(request(size, max(marks), steps))
    for clip in stream:
        if clip.index in want:
            out[clip.index] = clip.frames
    stream.close()
    return out


def bench_decode(
    gen: Generator, latents: list[torch.Tensor], device: torch.device
) -> dict[str, Any]:
    """The streaming decode of the same latent blocks, eager and compiled; latents[0] primes
    each decoder (and its compiles), the rest are timed. Also: does a compiled decoder's state,
    saved to bytes and restored into a new decoder, continue bit for bit?"""
    vae = gen.components.vae
    cuda = device.type == "cuda"
    variants = {"eager": (False, False), "eager_channels_last": (cuda, False)}
    if cuda:
        variants["compiled_channels_last"] = (True, True)
    out: dict[str, Any] = {"blocks_timed": len(latents) - 1}
    frames: dict[str, list[np.ndarray]] = {}
    for name, (channels_last, compiled) in variants.items():
        dec = vae_mod.StreamingDecoder(vae, channels_last=channels_last, compiled=compiled)
        t = time.perf_counter()
        dec.decode(latents[0])
        dec.decode(latents[0])  # frames 4+: the steady graph
        sync(device)
        prime_s = time.perf_counter() - t
        times, got = [], []
        for z in latents[1:]:
            if cuda:
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                video = vae_mod.to_uint8_frames(dec.decode(z))
                e.record()
                e.synchronize()
                times.append(s.elapsed_time(e) / 1000)
            else:
                t = time.perf_counter()
                video = vae_mod.to_uint8_frames(dec.decode(z))
                times.append(time.perf_counter() - t)
            got.append(video.cpu().numpy())
        frames[name] = got
        out[name] = {"per_block_s": statistics.median(times), "all_s": times, "prime_s": prime_s}
        log(f"decode {name}: {out[name]['per_block_s']:.3f}s/block (prime {prime_s:.1f}s)")
    ref = np.stack(frames["eager"])
    for name in variants:
        if name == "eager":
            continue
        other = np.stack(frames[name])
        diff = np.abs(other.astype(np.int16) - ref.astype(np.int16))
        out[name]["vs_eager"] = {
            "max_abs_diff": int(diff.max()),
            "mean_abs_diff": float(diff.mean()),
            "psnr_db": psnr(other, ref),
        }
    # the first decoder of its kind in the process against a second one: the same frames
    # (compiled graphs chosen by what the process compiled before would not repeat)
    name = "compiled_channels_last" if cuda else "eager"
    channels_last, compiled = variants[name]
    again = vae_mod.StreamingDecoder(vae, channels_last=channels_last, compiled=compiled)
    again.decode(latents[0])
    again.decode(latents[0])
    repeats = all(
        np.array_equal(vae_mod.to_uint8_frames(again.decode(z)).cpu().numpy(), first)
        for z, first in zip(latents[1:], frames[name], strict=True)
    )
    out["second_decoder_repeats_the_first"] = {"decoder": name, "equal": repeats}
    log(f"decode: a second {name} decoder repeats the first one's frames: {repeats}")
    # a decoder's state mid-stream, through bytes, into a new decoder: the same frames after
    a = vae_mod.StreamingDecoder(vae, channels_last=channels_last, compiled=compiled)
    b = vae_mod.StreamingDecoder(vae, channels_last=channels_last, compiled=compiled)
    half = len(latents) // 2
    for z in latents[:half]:
        a.decode(z)
    tensors, meta = a.state_dict()
    buf = io.BytesIO()
    state_io.save_state({"meta": {"decoder": meta}, "tensors": tensors}, buf)
    back = state_io.load_state(buf.getvalue())
    b.load_state_dict(back["tensors"], back["meta"]["decoder"])
    same = all(
        torch.equal(vae_mod.to_uint8_frames(a.decode(z)), vae_mod.to_uint8_frames(b.decode(z)))
        for z in latents[half:]
    )
    out["restored_state_continues_exactly"] = {
        "decoder": "compiled" if compiled else "eager",
        "equal": same,
    }
    log(f"decode state restored into a new decoder continues exactly: {same}")
    return out


def bench_eager_step(stream: Any, device: torch.device) -> float:
    """The same DiT step with the elementwise glue left to eager PyTorch (no torch.compile).

    Runs after the measured clips on the stream's own caches (it overwrites one ring slot)."""
    g = stream.geometry
    block = stream.next_clip * g.blocks_per_clip
    audio = stream.denoiser.audio(stream.clip_audio.block(block))
    x = torch.randn(16, 3, g.latent_h, g.latent_w, device=device)
    sync(device)
    step = type(stream.denoiser).step  # the class's function: not the timing wrapper
    fused.set_compile(False)
    try:
        return time_call(
            lambda: step(stream.denoiser, stream.caches[1], stream.sink_keys, x, 1, block, audio),
            device,
            warmup=1,
            repeats=4,
        )
    finally:
        fused.set_compile(True)


def bench_attention(g: Any, cfg: Any, device: torch.device) -> dict[str, float | None]:
    """One layer's self-attention at the stream's shapes (queries of a block over a full
    cache), through each SDPA backend and through pipeline's `attention()`."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gen = torch.Generator(device=device).manual_seed(0)
    h, d = cfg.num_heads, cfg.head_dim
    q = torch.randn(1, g.block_tokens, h, d, device=device, dtype=torch.bfloat16, generator=gen)
    kv = torch.randn(2, g.cache_tokens, h, d, device=device, dtype=torch.bfloat16, generator=gen)
    k, v = kv[0].unsqueeze(0), kv[1].unsqueeze(0)

    def timed(fn: Callable[[], Any]) -> float:
        return time_call(fn, device, warmup=3, repeats=10)

    out: dict[str, float | None] = {"pipeline attention()": timed(lambda: attention(q, k, v))}
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    for backend in ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION"):
        try:
            with sdpa_kernel([getattr(SDPBackend, backend)]):
                out[backend.lower()] = timed(
                    lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)
                )
        except RuntimeError:  # not available for these inputs on this device
            out[backend.lower()] = None
    # FP8 attention: only where SDPA's kernels take float8 inputs (measured, not assumed)
    try:
        q8, k8, v8 = (t.to(fp8.E4M3) for t in (qt, kt, vt))
        out["sdpa_float8_e4m3"] = timed(
            lambda: torch.nn.functional.scaled_dot_product_attention(q8, k8, v8)
        )
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        out["sdpa_float8_e4m3"] = None
        log(f"no FP8 attention in SDPA here: {str(exc).splitlines()[0][:160]}")
    return out


def bench_state(args: argparse.Namespace, stream: Any, device: torch.device) -> dict:
    out: dict[str, Any] = {}
    # pageable: fresh host memory each time; pinned: the stream's buffers, allocated by the
    # first pinned capture and reused by the next (the steady cost of a checkpoint)
    for label, pinned in (
        ("capture_s", False),
        ("capture_pinned_first_s", True),
        ("capture_pinned_s", True),
    ):
        sync(device)
        t = time.perf_counter()
        sd = stream.state_dict(pin_memory=pinned)
        sync(device)
        out[label] = time.perf_counter() - t
        if label != "capture_s":
            del sd
            continue
        nbytes = sum(v.numel() * v.element_size() for v in sd["tensors"].values())
        out["bytes"] = nbytes
        out["bytes_by_shard"] = {}
        for name, v in sd["tensors"].items():
            shard = state_io.shard_of(name)
            out["bytes_by_shard"][shard] = (
                out["bytes_by_shard"].get(shard, 0) + v.numel() * v.element_size()
            )
        root = Path(args.state_dir or tempfile.gettempdir()) / "longtake-bench-state"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        free = shutil.disk_usage(root).free
        t = time.perf_counter()
        if free > 1.2 * nbytes:
            state_io.write_checkpoint(sd, root)
            out["write_mode"] = "whole checkpoint directory"
        else:  # not enough scratch disk: write each shard alone, fsync'd, then delete it
            by_shard: dict[str, dict[str, torch.Tensor]] = {}
            for name, v in sd["tensors"].items():
                by_shard.setdefault(state_io.shard_of(name), {})[name] = v
            for shard, tensors in by_shard.items():
                state_io.write_checkpoint({"meta": sd["meta"], "tensors": tensors}, root / shard)
                shutil.rmtree(root / shard)
            out["write_mode"] = f"shard by shard (free disk {free / 1e9:.0f} GB < state)"
        out["write_s"] = time.perf_counter() - t
        out["write_gb_per_s"] = nbytes / out["write_s"] / 1e9
        shutil.rmtree(root, ignore_errors=True)
        del sd
        gc.collect()
    log(
        f"state {out['bytes'] / 1e9:.1f} GB: capture {out['capture_s']:.1f}s, pinned "
        f"{out['capture_pinned_first_s']:.1f}s then {out['capture_pinned_s']:.1f}s, "
        f"write {out['write_s']:.1f}s"
    )
    return out


class _Stop(Exception):
    pass


class GrowthRun:
    """Samples memory after chosen clip counts of one stream; stops at the last one (or when
    the next would pass the deadline)."""

    def __init__(self, mode: str, marks: list[int], device: torch.device, deadline: float):
        self.mode, self.marks, self.device, self.deadline = mode, sorted(marks), device, deadline
        self.samples: list[dict[str, Any]] = []
        self.stopped: str | None = None
        self.stream: Any = None
        self.started = time.perf_counter()

    def on_clip(self, index: int) -> None:
        done = index + 1
        if done not in self.marks:
            return
        sync(self.device)
        s = {
            "clips": done,
            "gpu": gpu_bytes(self.device),
            "rss": rss_bytes(),
            "stream_bytes": sum(self.stream.memory_bytes().values()),
            "elapsed_s": time.perf_counter() - self.started,
        }
        self.samples.append(s)
        log(
            f"  {self.mode} after {done} clips: gpu {s['gpu']['allocated'] / 1e9:.2f} GB, "
            f"rss {s['rss'] / 1e9:.2f} GB"
        )
        if done == self.marks[-1]:
            raise _Stop
        per_clip = s["elapsed_s"] / done
        nxt = min(m for m in self.marks if m > done)
        if time.perf_counter() + per_clip * (nxt - done) > self.deadline:
            self.stopped = f"stopped after {done} clips: {nxt} would pass the deadline"
            raise _Stop

    def run(self, gen: Generator, args: argparse.Namespace) -> dict[str, Any]:
        self.started = time.perf_counter()
        self.stream = gen.open(
            request(args.size, self.marks[-1], args.steps, seed=2),
            decode=self.mode,  # type: ignore[arg-type]
            progress=self.on_clip,
        )
        try:
            for _ in self.stream:
                pass
        except _Stop:
            pass
        self.stream.close()
        if self.stopped:
            log(f"  {self.mode}: {self.stopped}")
        return {"samples": self.samples, "stopped": self.stopped}


def bench_memory(args: argparse.Namespace, device: torch.device, deadline: float) -> dict:
    layers = args.mem_layers
    log(f"memory growth: {args.preset} at {layers} layers")
    gen = Generator.from_preset(
        args.preset, device=device, random_weights=True, dit_overrides={"num_layers": layers}
    )
    out: dict[str, Any] = {"dit_layers": layers}
    for mode, marks in (("offline", args.mem_offline), ("online", args.mem_online)):
        if not marks:
            continue
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        out[mode] = GrowthRun(mode, marks, device, deadline).run(gen, args)
    del gen
    gc.collect()
    return out


# --------------------------------------------------------------------------- report


def table(r: dict) -> str:
    precisions = r["precisions"]
    names = list(precisions)
    rows: list[tuple[str, str]] = [
        ("device", r["device"]),
        (
            "matmul ceiling: bf16 / fp8 (_scaled_mm, row-wise)",
            f"{r['matmul_tflops']:.0f} / {r['fp8_matmul_tflops']:.0f} TFLOP/s",
        ),
        ("fp8 products run as", r["fp8_kernel"]),
        ("", " / ".join(names)),
    ]

    def each(label: str, fmt: Callable[[dict], str]) -> None:
        rows.append((label, " / ".join(fmt(precisions[n]) for n in names)))

    each("DiT weights", lambda g: f"{g['dit_weight_bytes'] / 1e9:.1f} GB")
    each("DiT step, one block (median)", lambda g: f"{g['step_median_s']:.3f} s")
    each("  steps 0..3", lambda g: ", ".join(f"{v:.3f}" for v in g["step_s"].values()))
    each("DiT achieved", lambda g: f"{g['dit_tflops_achieved']:.0f} TFLOP/s")
    each("MFU of the bf16 ceiling", lambda g: f"{g['mfu']:.1%}")
    each("MFU of the fp8 ceiling", lambda g: f"{g['mfu_of_fp8_ceiling']:.1%}")
    each("DiT step without torch.compile", lambda g: f"{g['step_eager_s']:.3f} s")
    each("VAE decode per block, in the loop", lambda g: f"{g['vae_decode_per_block_s']:.3f} s")
    each("loop per block (4 steps + decode)", lambda g: f"{g['block_s']:.3f} s")
    each("frames per second, one GPU", lambda g: f"{g['fps']:.2f}")
    each("peak GPU memory (allocated)", lambda g: f"{g['peak_gpu_allocated'] / 2**30:.1f} GiB")
    each("host syncs in a steady block", lambda g: str(g["host_syncs_in_steady_block"]))
    dec = r.get("decode", {})
    for name in ("eager", "eager_channels_last", "compiled_channels_last"):
        if name in dec:
            d = dec[name]
            extra = ""
            if "vs_eager" in d:
                v = d["vs_eager"]
                extra = f" (vs eager: max |diff| {v['max_abs_diff']}, PSNR {v['psnr_db']:.1f} dB)"
            rows.append((f"decode per block: {name}", f"{d['per_block_s']:.3f} s{extra}"))
    if "second_decoder_repeats_the_first" in dec:
        rows.append(
            (
                "a second decoder repeats the first",
                str(dec["second_decoder_repeats_the_first"]["equal"]),
            )
        )
    if "restored_state_continues_exactly" in dec:
        rows.append(
            (
                "decoder state restored, continues exactly",
                str(dec["restored_state_continues_exactly"]["equal"]),
            )
        )
    err = r.get("fp8_error")
    if err:
        rows.append(
            (
                "fp8 velocity rel. error per step",
                ", ".join(f"{e:.2%}" for e in err["velocity_rel_error"]),
            )
        )
        if "velocity_rel_error_fp8_attention" in err:
            rows.append(
                (
                    "fp8-attention velocity rel. error per step",
                    ", ".join(f"{e:.2%}" for e in err["velocity_rel_error_fp8_attention"]),
                )
            )
        for size, marks in err["psnr_db"].items():
            rows.append(
                (
                    f"fp8 vs bf16 frames, PSNR at {size}",
                    ", ".join(f"{v:.1f} dB after {k} clip(s)" for k, v in marks.items()),
                )
            )
    for size, marks in r.get("fp8_attention_psnr_db", {}).items():
        rows.append(
            (
                f"fp8-attention vs bf16 frames, PSNR at {size}",
                ", ".join(f"{v:.1f} dB after {k} clip(s)" for k, v in marks.items()),
            )
        )
    for name, secs in r.get("attention_s", {}).items():
        rows.append(
            (
                f"self-attention, one layer: {name}",
                "n/a" if secs is None else f"{secs * 1e3:.2f} ms",
            )
        )
    st = r.get("state")
    if st:
        rows += [
            ("stream state size", f"{st['bytes'] / 1e9:.1f} GB"),
            ("state capture: pageable", f"{st['capture_s']:.1f} s"),
            (
                "state capture: pinned, first / reused",
                f"{st['capture_pinned_first_s']:.1f} s / {st['capture_pinned_s']:.1f} s",
            ),
            ("state write", f"{st['write_s']:.1f} s ({st['write_gb_per_s']:.2f} GB/s)"),
        ]
    mem = r.get("memory")
    if mem:
        for mode in ("online", "offline"):
            if mode not in mem:
                continue
            for smp in mem[mode]["samples"]:
                rows.append(
                    (
                        f"{mode} decode, {mem['dit_layers']} layers, after {smp['clips']} clips",
                        f"GPU {smp['gpu']['allocated'] / 2**30:.2f} GiB, "
                        f"RSS {smp['rss'] / 2**30:.2f} GiB",
                    )
                )
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_options(p)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--clips", type=int, default=9, help="measured clips after the warm-up clip")
    p.add_argument(
        "--precisions",
        default="bf16,fp8",
        help="bf16 first: fp8 is compared to it; fp8-attention last (the same weights, "
        "self-attention in FP8 too)",
    )
    p.add_argument("--dit-layers", type=int, default=None, help="a reduced depth (smoke runs)")
    p.add_argument("--quality-size", default="384*256", help="size of the long PSNR renders")
    p.add_argument("--quality-clips", default="1,10,50", help="PSNR after these many clips")
    p.add_argument(
        "--quality-before", type=float, default=1e9, help="seconds; later, no PSNR renders"
    )
    p.add_argument(
        "--quality-only",
        action="store_true",
        help="part 4's PSNR renders alone (bf16, then fp8 on the same weights); nothing timed",
    )
    p.add_argument(
        "--quality-fp8-attention",
        action="store_true",
        help="with --quality-only: a third render at precision fp8-attention (the same "
        "weights, self-attention in FP8 too), its PSNR against bf16 beside fp8's",
    )
    p.add_argument("--decode-blocks", type=int, default=6, help="latent blocks for part 3")
    p.add_argument("--skip-state", action="store_true", help="leave out part 5")
    p.add_argument("--mem-layers", type=int, default=2)
    p.add_argument("--mem-online", default=None, help="clip counts to sample (default 10,100,300)")
    p.add_argument("--mem-offline", default=None, help="clip counts to sample (default 10,100,300)")
    p.add_argument("--deadline", type=float, default=540.0, help="seconds; growth runs stop before")
    p.add_argument("--state-dir", default=None, help="scratch directory for the state write")
    p.add_argument("--quick", action="store_true", help="tiny counts for a dry run")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if args.quick:
        args.size, args.clips, args.quality_size, args.quality_clips = "64*64", 1, "64*64", "1,2"
        args.decode_blocks = 3
    default_marks = "2,4" if args.quick else "10,100,300"
    args.mem_online = default_marks if args.mem_online is None else args.mem_online
    args.mem_offline = default_marks if args.mem_offline is None else args.mem_offline
    args.mem_online = [int(v) for v in args.mem_online.split(",") if v]
    args.mem_offline = [int(v) for v in args.mem_offline.split(",") if v]
    precisions = [v for v in args.precisions.split(",") if v]
    # fp8-attention, if asked, comes last: the same DiT switched over after the others
    before = precisions[:-1] if precisions[-1:] == ["fp8-attention"] else precisions
    if not precisions or before not in ([], ["bf16"], ["fp8"], ["bf16", "fp8"]):
        p.error("--precisions: bf16, fp8 or bf16,fp8, optionally then fp8-attention")
    if args.quality_only and precisions != ["bf16", "fp8"]:
        p.error("--quality-only compares fp8 with bf16: --precisions bf16,fp8")
    marks = [int(v) for v in args.quality_clips.split(",") if v]
    device = torch.device(args.device)
    deadline = T0 + args.deadline

    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu"
    )
    log(f"device {name}; torch {torch.__version__}")
    n = 8192 if device.type == "cuda" else 1024
    out_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ceilings = {"bf16": matmul_ceiling(device, n, 20), "fp8": fp8_matmul_ceiling(device, n, 20)}
    log(
        f"matmul ceilings: bf16 {ceilings['bf16'] / 1e12:.1f}, fp8 {ceilings['fp8'] / 1e12:.1f} "
        f"TFLOP/s (fp8 products: {fp8.kernel(device, out_dtype)})"
    )
    report: dict[str, Any] = {
        "benchmark": "generate",
        "date": date.today().isoformat(),
        "device": name,
        "torch": torch.__version__,
        "preset": args.preset,
        "weights": "random",
        "size": args.size,
        "steps": args.steps,
        "matmul_tflops": ceilings["bf16"] / 1e12,
        "fp8_matmul_tflops": ceilings["fp8"] / 1e12,
        "fp8_kernel": fp8.kernel(device, out_dtype),
        "precisions": {},
    }

    def save() -> None:  # after each part: a run cut short keeps what it has
        save_report(args.out, report, T0)

    log(f"building {args.preset} (random weights) on {device}")
    t = time.perf_counter()
    overrides = {"num_layers": args.dit_layers} if args.dit_layers else None
    gen = Generator.from_preset(
        args.preset,
        device=device,
        random_weights=True,
        dit_overrides=overrides,
        precision=precisions[0],
    )
    sync(device)
    report["build_s"] = time.perf_counter() - t
    report["dit_layers"] = gen.preset.dit.num_layers

    keep = {0, args.clips}  # frames after 1 and after 1 + clips clips, for the PSNR
    both = before == ["bf16", "fp8"]  # fp8 compared with bf16
    frames: dict[str, dict[int, np.ndarray]] = {}
    quality: dict[str, dict[int, np.ndarray]] = {}

    def measure(gen: Generator, precision: str) -> Any:
        result, stream, kept, latents = bench_generation(
            args, gen, device, ceilings, keep, keep_latents=args.decode_blocks
        )
        frames[precision] = kept
        report["precisions"][precision] = result
        save()
        if precision == precisions[0]:  # parts that need one stream of either precision
            parts: list[tuple[str, Callable[[], Any]]] = [
                ("attention_s", lambda: bench_attention(stream.geometry, gen.preset.dit, device))
            ]
            if not args.skip_state:
                parts.append(("state", lambda: bench_state(args, stream, device)))
            if len(latents) >= 2:
                parts.append(("decode", lambda: bench_decode(gen, latents, device)))
            for key, part in parts:
                try:
                    report[key] = part()
                except Exception as exc:  # keep the rest of the run
                    log(f"{key} failed: {exc!r}")
                    report[key] = {"error": repr(exc)}
                save()
        return stream

    def render_for_psnr(gen: Generator, precision: str) -> None:
        if precision == "bf16" and time.perf_counter() - T0 > args.quality_before:
            log(f"PSNR renders at {args.quality_size} left out: past --quality-before")
            marks.clear()
        if both and marks:
            log(f"[{precision}] {max(marks)} clips at {args.quality_size}, for the PSNR")
            t = time.perf_counter()
            quality[precision] = render_frames(gen, args.quality_size, marks, args.steps)
            log(f"[{precision}] rendered in {time.perf_counter() - t:.1f}s")

    if args.quality_only:
        render_for_psnr(gen, "bf16")
        gen.components.dit.to_fp8()  # the same weights, quantised in place
        assert gen.precision == "fp8"
        render_for_psnr(gen, "fp8")
        renders = ["fp8"]
        if args.quality_fp8_attention:  # the same weights, self-attention in FP8 too
            gen.components.dit.fp8_attention = True
            assert gen.precision == "fp8-attention"
            render_for_psnr(gen, "fp8-attention")
            renders.append("fp8-attention")
        report["fp8_error"] = {
            "note": "random weights: real weights may differ",
            "psnr_db": {
                args.quality_size: {
                    str(m): psnr(quality["fp8"][m - 1], quality["bf16"][m - 1]) for m in marks
                }
            },
        }
        if args.quality_fp8_attention:
            report["fp8_error"]["psnr_db_fp8_attention"] = {
                args.quality_size: {
                    str(m): psnr(quality["fp8-attention"][m - 1], quality["bf16"][m - 1])
                    for m in marks
                }
            }
        save()
        for name in renders:
            key = "psnr_db" if name == "fp8" else "psnr_db_fp8_attention"
            for m, db in report["fp8_error"][key][args.quality_size].items():
                print(
                    f"{name} against bf16 at {args.quality_size}, after {m} clips: PSNR {db:.2f} dB"
                )
        return

    if "bf16" in precisions:
        render_for_psnr(gen, "bf16")
        stream = measure(gen, "bf16")
        if both:
            # one block of the clip after the measured ones: bf16's steps and velocities
            velocity_block = stream.next_clip * stream.geometry.blocks_per_clip
            xs, v16 = block_velocities(stream, velocity_block)
            t = time.perf_counter()
            gen.components.dit.to_fp8()  # the same weights, quantised in place
            log(f"quantised the DiT to fp8 in {time.perf_counter() - t:.1f}s")
            # the same inputs (latents, caches, prompt states, audio) through the fp8 model
            refresh_text_kv(gen, stream)
            _, v8 = block_velocities(stream, velocity_block, xs)
            report["fp8_error"] = {
                "note": "random weights: real weights may differ",
                "velocity_block": velocity_block,
                "velocity_rel_error": relative_errors(v8, v16),
                "psnr_db": {},
            }
            log(
                f"fp8 velocity relative error per step: {report['fp8_error']['velocity_rel_error']}"
            )
            if "fp8-attention" in precisions:  # the same inputs, the caches in e4m3
                v8a = e4m3_velocities(stream, velocity_block, xs)
                errors = relative_errors(v8a, v16)
                report["fp8_error"]["velocity_rel_error_fp8_attention"] = errors
                log(f"fp8-attention velocity relative error per step: {errors}")
                del v8a
            del xs, v16, v8
        stream.close()
        del stream
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if "fp8" in precisions:
        assert gen.precision == "fp8"
        measure(gen, "fp8").close()
        render_for_psnr(gen, "fp8")
        if both:
            ps = report["fp8_error"]["psnr_db"]
            ps[args.size] = {
                str(c + 1): psnr(frames["fp8"][c], frames["bf16"][c]) for c in sorted(keep)
            }
            if quality:
                ps[args.quality_size] = {
                    str(m): psnr(quality["fp8"][m - 1], quality["bf16"][m - 1]) for m in marks
                }
            log(f"fp8 vs bf16 PSNR: {ps}")
        save()
    if "fp8-attention" in precisions:  # the same weights, self-attention in FP8 too
        dit = gen.components.dit
        if dit.precision == "bf16":
            dit.to_fp8()
        dit.fp8_attention = True
        assert gen.precision == "fp8-attention"
        measure(gen, "fp8-attention").close()
        if "bf16" in frames:
            report["fp8_attention_psnr_db"] = {
                args.size: {
                    str(c + 1): psnr(frames["fp8-attention"][c], frames["bf16"][c])
                    for c in sorted(keep)
                }
            }
            log(f"fp8-attention vs bf16 PSNR: {report['fp8_attention_psnr_db']}")
        save()
    report["dit_weight_bytes"] = {k: v["dit_weight_bytes"] for k, v in report["precisions"].items()}
    del gen
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    if args.mem_online or args.mem_offline:
        report["memory"] = bench_memory(args, device, deadline)
    save()
    print()
    print(table(report))


if __name__ == "__main__":
    main()
