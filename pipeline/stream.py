"""A render stream: (portrait, speech, prompt) -> clips of frames, clip by clip, in fixed memory.

Per clip (48 frames = 12 latent frames = 4 blocks of 3):

    noise (seeded by the request's seed and the clip index)
    for each block:
        audio context of the block's 12 video frames
        for each step i: latents = denoiser.step(cache[i], latents, i, block)   # timestep forcing
        online decode: the block's 12 frames, uint8, copied to the host as they are ready
    after clip 0: the sink is rebuilt around the model's own first latent frame (adaptive sink)

On a GPU the loop over a clip's blocks never waits for the device: the speech features of the
next clip are looked up during the first block (`ClipAudio`), frames go to page-locked host
memory without blocking, and the host waits once per clip, for the clip's last frames.

Before clip 0 the sink (the reference frame plus motion frames made from it) is run through the
model once and cached, and the streaming decoder is primed by decoding motion latents, whose
frames are discarded. At every clip boundary `state_dict()` captures everything the rest of the
stream depends on (per-step ring caches, the latent the sink was built from, the decoder's
cache, the clip index); a stream opened with it prefills the same sink and continues with
identical frames on the same device and dtype. Random
draws need no saved generator state: each is a pure function of the request's seed and its
place in the stream (the noise of clip c, the sink offset of block b at step i), and the
speech features of a clip depend only on the audio.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from pipeline import gil, params
from pipeline import presenters as presenter_mod
from pipeline import state as state_io
from pipeline import text as text_mod
from pipeline import vae as vae_mod
from pipeline.audio_features import AudioFeatures
from pipeline.cache import SinkKeys, StepKVCache, kv_dtype, sink_latents
from pipeline.components import Components
from pipeline.denoise import Denoiser, derive_seed
from pipeline.geometry import Geometry
from pipeline.host_buffers import HostBuffers, copy_piecewise
from pipeline.inputs import Waveform, fit_image, load_audio, load_image, read_bytes
from pipeline.model import WanS2VTransformer
from pipeline.presets import Preset
from pipeline.request import Clip, RenderRequest, sha256
from pipeline.sampler import flow_schedule
from pipeline.warm_up import warm_up_dit

Decode = Literal["online", "offline"]

PHASE_SYNC = False
"""Benchmarks set it: `Stream.open_seconds` then waits for the opening thread's device queue at
the end of each part, so each part's time is its own (a stream never waits there otherwise)."""


class OpenClock:
    """Wall seconds of each part of a stream's open, in order (`Stream.open_seconds`)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, part: str) -> None:
        if PHASE_SYNC and self.device.type == "cuda":  # this thread's queue: not a restore's
            torch.cuda.current_stream(self.device).synchronize()
        now = time.perf_counter()
        self.seconds[part] = self.seconds.get(part, 0.0) + now - self._last
        self._last = now


class Stream:
    """Iterate to get `Clip`s. Made by `Generator.open`; one stream per generator at a time."""

    def __init__(
        self,
        preset: Preset,
        comps: Components,
        request: RenderRequest,
        state: state_io.StateDict | state_io.TensorSource | None = None,
        decode: Decode = "online",
        progress: Callable[[int], None] | None = None,
        presenters: presenter_mod.PresenterScope | None = None,
        host_buffers: HostBuffers | None = None,
    ):
        request.validate()
        if decode not in ("online", "offline"):
            raise ValueError("decode must be 'online' or 'offline'")
        if decode == "offline" and state is not None:
            raise ValueError("offline decode keeps no resumable state; resume with decode='online'")
        self.preset = preset
        self.request = request
        self.decode_mode = decode
        self.progress = progress
        comps.require("dit", "text", "audio", "vae")
        assert comps.vae is not None
        assert comps.text_encoder is not None and comps.tokenizer is not None
        assert comps.audio_encoder is not None
        dit_info = comps.dit_info  # the DiT itself may still be loading (DeferredDit)
        if state is not None:  # before any work: a state of another precision cannot resume
            state_io.require_precision(state_io.as_source(state).meta, dit_info.precision)
        self._vae = comps.vae
        self._device = dit_info.device
        clock = OpenClock(self._device)
        self.open_seconds = clock.seconds
        """Wall seconds of each part of the open (with `PHASE_SYNC`, each part's own)."""

        inputs = prepare_inputs(request, preset)
        samples = inputs.samples
        self.reference_frame = inputs.reference_frame  # uint8 [H, W, 3]
        self.height, self.width = inputs.height, inputs.width
        self.audio_duration_s = inputs.audio_duration_s
        self.num_clips = inputs.num_clips
        self.fps = params.FPS
        self.fingerprint = inputs.fingerprint

        # fixed-size state, allocated first: a resumed stream's caches are read from its
        # checkpoint while the encoders below run
        g = self.geometry = Geometry(
            self.width, self.height, request.infer_frames, preset.dit.zip_frame_buckets
        )
        cfg, dtype = preset.dit, dit_info.dtype
        kv = kv_dtype(dit_info.precision, dtype)
        self.caches = [
            StepKVCache(g, cfg.num_layers, cfg.num_heads, cfg.head_dim, self._device, kv)
            for _ in range(request.sample_steps)
        ]
        self.sink_keys = SinkKeys(
            g, cfg.num_layers, cfg.num_heads, cfg.head_dim, self._device, dtype
        )
        # the latents the sink was built from (what a state keeps of it)
        self._sink_latent, self._sink_motion = sink_latents(
            cfg.in_dim, preset.stream.motion_frames, g, self._device
        )
        self._sink_from_latent = False  # a resume prefills the sink from the state's latents
        # whether those latents are known (not after a format-1 resume until the adaptive sink
        # is built again): else a state keeps the sink's caches, as the resumed state did
        self._sink_latents_known = True
        source = None if state is None else state_io.as_source(state)
        # the residual stream's layout: a resume's is its state's, a new stream's the default
        self.row_major = (
            WanS2VTransformer.row_major_stream
            if source is None
            else state_io.row_major_of(source.meta)
        )
        restoring = None if source is None else self._start_restore(source)
        cuda = self._device.type == "cuda"
        # page-locked capture buffers (GPU streams), shared with the generator's later streams;
        # the caches' (nearly all of a state) are made beside the open, which waits on the CPU
        # (encoders, compiles), rather than beside the first clips, whose launches they delay
        self._host_buffers = host_buffers or HostBuffers(page_lock=cuda)
        self._pinned_captures = cuda and decode == "online"
        if self._pinned_captures:
            self._reserve_capture_buffers(self._cache_tensors())
        clock.lap("inputs_and_caches")

        # Everything up to the DiT's wait below needs no DiT: while it loads (a worker's
        # start), the open encodes, reads the checkpoint and compiles meanwhile.
        self.schedule = flow_schedule(
            request.sample_steps, preset.stream.shift, preset.stream.num_train_timesteps
        )
        # a presenter seen before: its open comes from the cache (pipeline/presenters.py)
        scope = presenters if decode == "online" else None
        key = None if scope is None else scope.key(request, self.fingerprint, dit_info.precision)
        cached = None if scope is None or key is None else scope.cache.get(key)
        self.presenter_key = None if key is None else key.presenter
        self.presenter_cached = cached is not None
        if cached is not None:
            text = presenter_mod.copy_tensor(cached.text)
        else:
            text = text_mod.prompt_states(
                comps.text_encoder,
                comps.tokenizer,
                request.prompt,
                preset.dit.text_len,
                device=comps.text_device,
                saved=source,
            )
        self._text = text
        clock.lap("text")
        self.audio = AudioFeatures(
            comps.audio_encoder,
            samples,
            preset.stream.audio_chunk_frames,
            preset.stream.audio_context_frames,
        )
        self.clip_audio = ClipAudio(self.audio, g, self.num_clips)
        clock.lap("audio")

        self.decoder = vae_mod.StreamingDecoder(self._vae, channels_last=cuda, compiled=cuda)
        if decode == "online":  # compiles, while a restore reads
            self.decoder.warm_up(g.latent_h, g.latent_w)
        clock.lap("decoder_warm_up")
        warm_up_dit(
            preset,
            g,
            self.schedule,
            text,
            (self.audio.num_layers, self.audio.dim),
            dit_info,
            self.row_major,
        )
        clock.lap("dit_warm_up")
        self._motion: torch.Tensor | None = None
        self._offline_latents: list[torch.Tensor] = []
        self._offline_clips: list[Clip] = []
        self._closed = False

        if source is not None:
            assert restoring is not None
            decoder_state = restoring.result()  # the ring caches and the sink are in place
            clock.lap("restore_wait")
            self._finish_restore(source, decoder_state)
            clock.lap("restore_finish")
            if self._sink_from_latent:  # the portrait's latents, as the state kept them
                self._motion = self._sink_motion
        elif cached is not None:
            self.next_clip = 0
            self._motion = presenter_mod.restore(cached, self.caches, self.sink_keys, self.decoder)
            self._sink_latent.copy_(self._motion[:, 1:2])
            self._sink_motion.copy_(self._motion)
            clock.lap("presenter_restore")
        else:
            self.next_clip = 0
            _, motion = self._reference_latents()
            clock.lap("portrait_latents")
            warmup = motion[:, : preset.stream.vae_warmup_frames]
            if decode == "online":
                self.decoder.decode(warmup)  # primes the conv cache; these frames are not shown
            else:
                self._offline_latents.append(warmup.cpu())
            clock.lap("decoder_prime")

        self._dit = comps.wait_dit()
        self._dit.row_major_stream = self.row_major  # the generator's streams run one at a time
        clock.lap("dit_wait")
        self.denoiser = Denoiser(self._dit, g, self.schedule, preset.stream, text, request.seed)
        clock.lap("denoiser")
        if source is None and cached is None:
            reference, motion = self._reference_latents()
            self._build_sink(reference)
            clock.lap("sink")
            if scope is not None and key is not None:
                kept = presenter_mod.capture(
                    text, motion, self.caches[0], self.sink_keys, self.decoder
                )
                scope.cache.put(key, kept)
        elif self._sink_from_latent:
            self._build_sink(self._sink_latent)
            if self.next_clip > 0:  # as after clip 0: the portrait's latents are not needed
                self._motion = None
            clock.lap("sink")
        if self._pinned_captures:  # the decoder's too, now that its cache is made
            self._reserve_capture_buffers(self._capture_tensors())

    # ---- iteration -----------------------------------------------------------------------

    def __iter__(self) -> Iterator[Clip]:
        return self

    def __next__(self) -> Clip:
        self._check_open()
        if self.decode_mode == "offline":
            return self._next_offline()
        if self.next_clip >= self.num_clips:
            raise StopIteration
        frames = self._generate_clip()
        return self._clip(self.next_clip - 1, frames)

    def _clip(self, index: int, frames: np.ndarray) -> Clip:
        seconds = self.request.infer_frames / self.fps
        return Clip(index, frames, index * seconds, (index + 1) * seconds)

    @torch.no_grad()
    def _generate_clip(self) -> np.ndarray | None:
        """Generate clip `next_clip`; online: its frames uint8 [T, H, W, 3], offline: None."""
        g, r = self.geometry, self.next_clip
        noise = to_device(clip_noise(self.request.seed, r, self._dit.cfg.in_dim, g), self._device)
        frames = None
        if self.decode_mode == "online":  # page-locked on a GPU: copies into it do not block
            shape = (self.request.infer_frames, self.height, self.width, 3)
            frames = torch.empty(shape, dtype=torch.uint8, pin_memory=self._device.type == "cuda")
        first_latent = None
        for b in range(g.blocks_per_clip):
            x = self._generate_block(r, b, noise, frames)
            if b == 0:
                first_latent = x[:, :1].clone()
                self.clip_audio.prefetch(r + 1)  # while the GPU works on this block
        if r == 0 and self.num_clips > 1:
            # adaptive sink: from now on the sink is the model's own first frame
            assert first_latent is not None
            self._build_sink(first_latent)
            self._motion = None
        if self._device.type == "cuda":
            torch.cuda.current_stream(self._device).synchronize()  # the clip's last frames
        self.next_clip += 1
        if self.progress is not None:
            self.progress(r)
        return None if frames is None else frames.numpy()

    def _generate_block(
        self, clip: int, b: int, noise: torch.Tensor, frames: torch.Tensor | None
    ) -> torch.Tensor:
        """Block b of clip `clip`, from the clip's noise [16, 12, h, w] to clean latents
        [16, 3, h, w] (returned); its frames are decoded into frames[12 b : 12 (b + 1)]
        (offline: its latents are kept). Nothing here waits for the device."""
        g = self.geometry
        block = clip * g.blocks_per_clip + b
        features = self.clip_audio.block(block)
        x = self.denoiser.denoise_block(self.caches, self.sink_keys, features, noise, block)
        if frames is None:
            self._offline_latents.append(x.cpu())
        else:
            n = g.video_frames_per_block
            decoded = vae_mod.to_uint8_frames(self.decoder.decode(x))  # [12, H, W, 3]
            frames[b * n : (b + 1) * n].copy_(decoded, non_blocking=True)
        return x

    def _next_offline(self) -> Clip:
        if self.next_clip < self.num_clips:
            while self.next_clip < self.num_clips:
                self._generate_clip()
            self._decode_offline()
        if not self._offline_clips:
            raise StopIteration
        return self._offline_clips.pop(0)

    @torch.no_grad()
    def _decode_offline(self) -> None:
        """Decode all kept latents with one `vae.decode()` call (for comparison only)."""
        z = torch.cat(self._offline_latents, dim=1).to(self._device)
        self._offline_latents = []
        z = vae_mod.denormalize_latents(self._vae, z.unsqueeze(0))
        video = self._vae.decode(z.to(next(self._vae.parameters()).dtype)).sample
        warmup = self.preset.stream.vae_warmup_frames
        frames = vae_mod.to_uint8_frames(video)[1 + 4 * (warmup - 1) :].cpu().numpy()
        per_clip = self.request.infer_frames
        self._offline_clips = [
            self._clip(i, frames[i * per_clip : (i + 1) * per_clip]) for i in range(self.num_clips)
        ]

    def _reference_latents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(reference latent [16, 1, h, w], motion latents [16, 19, h, w]) of the portrait.

        The motion context of the first clip is the portrait held still for `motion_frames`
        frames; the reference latent is its second latent frame (the first encodes one frame
        alone). The VAE is causal, so both come from one encoding.
        """
        if self._motion is None:
            self._motion = portrait_latents(
                self._vae, self.reference_frame, self.preset.stream.motion_frames
            )
        return self._motion[:, 1:2], self._motion

    def _build_sink(self, latent: torch.Tensor) -> None:
        """Run the sink (`latent` [16, 1, h, w] as its reference frame, the portrait's motion
        latents) through the model into every step's cache; `latent` is kept for the state."""
        _, motion = self._reference_latents()
        if latent is not self._sink_latent:
            self._sink_latent.copy_(latent)
        if motion is not self._sink_motion:
            self._sink_motion.copy_(motion)
        self._sink_latents_known = True
        self.denoiser.prefill_sink(
            self.caches, self.sink_keys, self._sink_latent, self._sink_motion
        )

    # ---- state ---------------------------------------------------------------------------

    def state_dict(self, pin_memory: bool = False) -> state_io.StateDict:
        """Everything needed to continue exactly, on the host: call between clips.

        pin_memory (GPU streams): copy into page-locked host buffers that the stream allocates
        once and reuses, so a capture is one fast device-to-host copy. The returned tensors
        are then those buffers: write them out before the next `state_dict(pin_memory=True)`.
        """
        self._check_open()
        if self.decode_mode == "offline":
            raise RuntimeError("offline decode keeps no resumable state")
        g = self.geometry
        pin = pin_memory and self._device.type == "cuda"

        def host(name: str, t: torch.Tensor) -> torch.Tensor:
            if not pin:
                return t.detach().to("cpu", copy=True)
            return copy_piecewise(self._host_buffers.buffer(name, t.shape, t.dtype), t)

        dec_tensors, dec_meta = self.decoder.state_dict()
        tensors = {name: host(name, t) for name, t in self._capture_tensors(dec_tensors).items()}
        if pin:
            torch.cuda.synchronize(self._device)
        meta: dict[str, Any] = {
            "next_clip": self.next_clip,
            "request": self.fingerprint,
            "decoder": dec_meta,
            "cache_tokens": g.cache_tokens,
            "dtype": str(self._dit.dtype),
            "precision": self._dit.precision,
            "layout": state_io.layout_name(self.row_major),
        }
        return {"meta": json.loads(json.dumps(meta)), "tensors": tensors}

    def _cache_tensors(self) -> dict[str, torch.Tensor]:
        """The device tensors of a state that are the DiT's (the sink's latents and the rings),
        by name: fixed in shape from the open's start."""
        if self._sink_latents_known:
            live = {
                state_io.SINK_LATENT: self._sink_latent,
                state_io.SINK_MOTION: self._sink_motion,
            }
        else:
            live = self._sink_caches()
        for i, cache in enumerate(self.caches):
            live[f"step.{i}.ring"] = cache.ring
        return live

    def _sink_caches(self) -> dict[str, torch.Tensor]:
        """The sink's caches by their format-1 names (step 0's: every step holds the same)."""
        live = (self.sink_keys.ref, self.caches[0].sink_motion_keys, self.caches[0].sink_values)
        return dict(zip(state_io.SINK_CACHES, live, strict=True))

    def _capture_tensors(
        self, decoder: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """The device tensors a state holds, by name (`decoder`: the decoder's, if taken)."""
        if decoder is None:
            decoder = self.decoder.state_dict()[0]
        live = self._cache_tensors()
        live.update({f"decoder.{k}": v for k, v in decoder.items()})
        live[text_mod.STATE_NAME] = self._text
        return live

    def _reserve_capture_buffers(self, tensors: dict[str, torch.Tensor]) -> None:
        """Start making the capture buffers of `tensors` (those not made yet) in a thread."""
        self._host_buffers.reserve({name: (tuple(t.shape), t.dtype) for name, t in tensors.items()})

    def _start_restore(self, source: state_io.TensorSource) -> Future[dict[str, torch.Tensor]]:
        """Check that the state fits this request, then read it in a thread, so that the
        encoders and the warm-ups run meanwhile: the ring caches and the sink into place, the
        decoder's cache onto the host (the result: its tensors by name)."""
        meta = source.meta
        saved = meta.get("request", {})
        diff = sorted(
            k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k)
        )
        if diff:
            raise ValueError(
                "the stream state belongs to a different request or model; differing: "
                + ", ".join(diff)
            )
        if not 0 <= meta["next_clip"] <= self.num_clips:
            raise ValueError("stream state has an invalid clip index")
        targets = {f"step.{i}.ring": cache.ring for i, cache in enumerate(self.caches)}
        self._sink_from_latent = self._sink_latents_known = state_io.SINK_LATENT in source.names()
        if self._sink_from_latent:
            targets[state_io.SINK_LATENT] = self._sink_latent
            targets[state_io.SINK_MOTION] = self._sink_motion
        else:  # format 1: the sink's caches themselves
            targets |= self._sink_caches()
        missing = sorted(set(targets) - source.names())
        if missing:
            raise ValueError("the stream state has no " + ", ".join(missing))
        if self._device.type == "cuda":  # the caches' zero fill first: the copies run on a
            torch.cuda.current_stream(self._device).synchronize()  # stream of their own
        done: Future[dict[str, torch.Tensor]] = Future()
        prefix = "decoder."

        def fill() -> None:
            try:
                with gil.loading():  # beside the open's compiles
                    source.fill(targets)
                names = [k for k in source.names() if k.startswith(prefix)]
                done.set_result({k[len(prefix) :]: source.get(k) for k in names})
            except BaseException as exc:  # raised in the opening thread
                done.set_exception(exc)

        threading.Thread(target=fill, name="state-restore", daemon=True).start()
        return done

    def _finish_restore(
        self, source: state_io.TensorSource, decoder: dict[str, torch.Tensor]
    ) -> None:
        """The decoder's cache (`decoder`: its tensors, read) and the clip index; a format-1
        state's sink, read into step 0's cache, into every step's. (A sink kept as its latent
        is prefilled once the DiT is there.)"""
        if not self._sink_from_latent:
            for cache in self.caches[1:]:  # the same sink in every step's cache
                cache.sink_motion_keys.copy_(self.caches[0].sink_motion_keys)
                cache.sink_values.copy_(self.caches[0].sink_values)
        self.decoder.load_state_dict(decoder, source.meta["decoder"])
        self.next_clip = int(source.meta["next_clip"])

    def checkpoint(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write the state's shards into `directory`, then manifest.json last."""
        return state_io.write_checkpoint(self.state_dict(), directory)

    # ---- housekeeping --------------------------------------------------------------------

    def memory_bytes(self) -> dict[str, int]:
        """Bytes of tensors this stream holds, by owner (models excluded)."""
        text = sum(
            k.numel() * k.element_size() + v.numel() * v.element_size()
            for k, v in self.denoiser.text_kv
        )
        held = sum(t.numel() * t.element_size() for t in self._offline_latents)
        held += sum(c.frames.nbytes for c in self._offline_clips)
        return {
            "kv_caches": sum(c.nbytes() for c in self.caches) + self.sink_keys.nbytes(),
            "decoder": self.decoder.nbytes(),
            "audio_features": self.audio.nbytes(),
            "text": text,
            "motion": 0 if self._motion is None else self._motion.numel() * 4,
            "offline": held,
        }

    def close(self) -> None:
        """Release the caches; the stream can no longer be used."""
        self._closed = True
        self.caches = []
        self._offline_latents = []
        self._offline_clips = []
        self._motion = None

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this stream is closed (a generator runs one stream at a time)")

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _config_hash(preset: Preset) -> str:
    text = json.dumps(
        {"dit": repr(preset.dit), "vae": preset.vae, "stream": repr(preset.stream)}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---- pieces shared with the pipeline-parallel engine (pipeline.tpp) ---------------------------


@dataclass(frozen=True, eq=False)
class StreamInputs:
    """A request's inputs, decoded once: what every part of a stream is derived from."""

    reference_frame: np.ndarray
    """The portrait at the output size: uint8 [H, W, 3]."""
    samples: np.ndarray
    """The speech: mono float32 at 16 kHz."""
    num_clips: int
    audio_duration_s: float
    fingerprint: dict[str, Any]
    """What a saved state must match to be resumed by this request (and model)."""

    @property
    def height(self) -> int:
        return int(self.reference_frame.shape[0])

    @property
    def width(self) -> int:
        return int(self.reference_frame.shape[1])


def prepare_inputs(request: RenderRequest, preset: Preset) -> StreamInputs:
    """Decode and check a request's image and audio; count its clips; fingerprint it."""
    image_bytes = read_bytes(request.image)
    audio_in = request.audio if isinstance(request.audio, Waveform) else read_bytes(request.audio)
    samples = load_audio(audio_in)
    reference_frame = fit_image(load_image(image_bytes), request.size)
    height, width = reference_frame.shape[:2]
    duration = len(samples) / 16_000
    num_clips = request.num_clips or params.clips_for_duration(duration, request.infer_frames)
    fingerprint = {
        "preset": preset.name,
        "dit": _config_hash(preset),
        "seed": request.seed,
        "size": request.size,
        "width": width,
        "height": height,
        "infer_frames": request.infer_frames,
        "sample_steps": request.sample_steps,
        "num_clips": num_clips,
        "prompt_sha256": sha256(request.prompt.encode("utf-8")),
        "image_sha256": sha256(image_bytes),
        "audio_sha256": sha256(audio_in.tobytes() if isinstance(audio_in, Waveform) else audio_in),
    }
    return StreamInputs(reference_frame, samples, num_clips, duration, fingerprint)


def clip_noise(seed: int, clip: int, channels: int, geometry: Geometry) -> torch.Tensor:
    """The initial noise of clip `clip`: [channels, latent frames of a clip, h, w] float32 on the
    CPU, a pure function of the request's seed and the clip index."""
    gen = torch.Generator().manual_seed(derive_seed(seed, "noise", clip))
    g = geometry
    return torch.randn((channels, g.latent_frames_per_clip, g.latent_h, g.latent_w), generator=gen)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device`; from the host to a GPU through page-locked memory, without blocking."""
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


class ClipAudio:
    """The speech features of whole clips, looked up ahead of the blocks that use them.

    `AudioFeatures.video_frames` waits for the device it runs on (it indexes with masks made
    there). Looking a whole clip up at once, during the clip before it and, on a GPU, on a CUDA
    stream of its own, keeps that wait out of the per-block loop and off the DiT's queue: the
    host waits for the look-up's few kernels (and, every `audio_chunk_frames`, one wav2vec2
    chunk) while the GPU goes on with the blocks already queued. Features are a function of the
    audio alone, so they are the same whichever way they are looked up.
    """

    def __init__(self, audio: AudioFeatures, geometry: Geometry, num_clips: int):
        self.audio = audio
        self.geometry = geometry
        self.num_clips = num_clips
        device = audio.device
        self._side = torch.cuda.Stream(device) if device.type == "cuda" else None
        if self._side is not None:  # its first work follows the features' buffers' creation
            self._side.wait_stream(torch.cuda.current_stream(device))
        self._clips: dict[int, tuple[torch.Tensor, torch.cuda.Event | None]] = {}

    def prefetch(self, clip: int) -> None:
        """Start looking up clip `clip`'s features (a no-op past the last clip or if done)."""
        if clip in self._clips or not 0 <= clip < self.num_clips:
            return
        n = self.geometry.blocks_per_clip * self.geometry.video_frames_per_block
        if self._side is None:
            self._clips[clip] = (self.audio.video_frames(clip * n, n), None)
        else:
            with torch.cuda.stream(self._side):
                feats = self.audio.video_frames(clip * n, n)
                ready = torch.cuda.Event()
                ready.record(self._side)
            self._clips[clip] = (feats, ready)
        for old in [c for c in self._clips if c < clip - 1]:
            del self._clips[old]

    def block(self, block: int) -> torch.Tensor:
        """Features of the video frames block `block` shows: [layers, C, 12], ready for the
        current stream."""
        g = self.geometry
        clip, b = divmod(block, g.blocks_per_clip)
        self.prefetch(clip)
        feats, ready = self._clips[clip]
        if ready is not None:
            current = torch.cuda.current_stream(feats.device)
            current.wait_event(ready)
            feats.record_stream(current)  # made on the side stream, used on this one
        n = g.video_frames_per_block
        return feats[..., b * n : (b + 1) * n]


def portrait_latents(vae: Any, reference_frame: np.ndarray, motion_frames: int) -> torch.Tensor:
    """Latents [16, 1 + (motion_frames - 1) / 4, h, w] of the portrait held still for
    `motion_frames` frames: the motion context of clip 0, its second frame the reference."""
    still = torch.tensor(reference_frame).permute(2, 0, 1).float() / 127.5 - 1.0
    video = still.unsqueeze(1).expand(-1, motion_frames, -1, -1)
    return vae_mod.encode(vae, video)
