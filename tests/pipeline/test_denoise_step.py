"""The unit of work: one step of one block, runnable alone, touching only its step's cache."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.audio_features import AudioFeatures
from pipeline.model import rope
from pipeline.sampler import flow_schedule
from tests.pipeline.conftest import request, speech


def test_a_step_updates_its_own_cache_only(tiny):
    stream = tiny.open(request(seconds=2.0, num_clips=2))
    next(stream)  # clip 0 done: blocks 0 and 1 are in every ring
    before = [c.kv.clone() for c in stream.caches]
    sink_before = stream.sink_keys.ref.clone()
    g = stream.geometry
    block = 2  # the first block of clip 1: overwrites ring slot 0
    feats = stream.audio.video_frames(block * 12, 12)
    audio = stream.denoiser.audio(feats)
    latents = torch.randn(16, 3, g.latent_h, g.latent_w, generator=torch.Generator().manual_seed(0))

    out = stream.denoiser.step(stream.caches[1], stream.sink_keys, latents, 1, block, audio)

    assert out.shape == latents.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all() and not torch.equal(out, latents)
    for i, cache in enumerate(stream.caches):
        if i != 1:
            assert torch.equal(cache.kv, before[i])
    ring = slice(g.sink_tokens, g.sink_tokens + g.block_tokens)
    assert not torch.equal(stream.caches[1].kv[:, :, ring], before[1][:, :, ring])
    # the other ring slot and the sink's motion keys and values are untouched
    other = slice(g.sink_tokens + g.block_tokens, g.cache_tokens)
    assert torch.equal(stream.caches[1].kv[:, :, other], before[1][:, :, other])
    assert torch.equal(stream.caches[1].kv[:, 1, : g.sink_tokens], before[1][:, 1, : g.sink_tokens])
    assert torch.equal(stream.sink_keys.ref, sink_before)


def test_a_step_is_a_pure_function_of_its_inputs(tiny):
    stream = tiny.open(request(seconds=2.0, num_clips=2))
    next(stream)
    g = stream.geometry
    audio = stream.denoiser.audio(stream.audio.video_frames(24, 12))
    latents = torch.randn(16, 3, g.latent_h, g.latent_w, generator=torch.Generator().manual_seed(1))
    saved = stream.caches[0].kv.clone()
    a = stream.denoiser.step(stream.caches[0], stream.sink_keys, latents, 0, 2, audio)
    stream.caches[0].kv.copy_(saved)
    b = stream.denoiser.step(stream.caches[0], stream.sink_keys, latents, 0, 2, audio)
    assert torch.equal(a, b)


def test_rolling_rope_offsets_are_seeded_and_in_range(tiny):
    s1 = tiny.open(request(seconds=1.0, seed=5))
    offsets = [s1.denoiser.sink_offset(b, i) for b in range(50) for i in range(4)]
    assert all(4 <= o <= 30 for o in offsets) and len(set(offsets)) > 10
    s2 = tiny.open(request(seconds=1.0, seed=5))
    assert offsets == [s2.denoiser.sink_offset(b, i) for b in range(50) for i in range(4)]
    s3 = tiny.open(request(seconds=1.0, seed=6))
    assert offsets != [s3.denoiser.sink_offset(b, i) for b in range(50) for i in range(4)]


def test_rope_scores_depend_on_relative_positions_only():
    r = rope.Rope(head_dim=32)
    q = torch.randn(1, 6, 2, 32, dtype=torch.float64).float()
    k = torch.randn(1, 6, 2, 32, dtype=torch.float64).float()
    pos_q = rope.grid([3], range(2), range(3))
    pos_k = rope.grid([-19], range(2), range(3))
    far = torch.tensor([100_000, 0, 0])  # hours into a stream

    def scores(pq, pk):
        qr = rope.apply_rope(q, r.freqs(pq, "cpu"))
        kr = rope.apply_rope(k, r.freqs(pk, "cpu"))
        return torch.einsum("bqhd,bkhd->bhqk", qr, kr)

    assert torch.allclose(scores(pos_q, pos_k), scores(pos_q + far, pos_k + far), atol=1e-4)


def test_flow_schedule_is_four_shifted_euler_steps():
    s = flow_schedule(4, shift=3.0)
    assert s.steps == 4 and s.timesteps[0] == 1000.0
    assert s.sigmas[0] == 1.0 and s.sigmas[-1] == 0.0
    assert list(s.sigmas) == sorted(s.sigmas, reverse=True)
    # shift 3 keeps the middle steps noisy: sigma = 3s / (1 + 2s) over an even grid s from 1
    # down to the shifted end of the training schedule (diffusers' Euler scheduler)

    def shifted(x):
        return 3 * x / (1 + 2 * x)

    grid = np.linspace(1.0, shifted(1e-3), 4)
    assert np.allclose(s.sigmas[:4], shifted(grid), atol=1e-6)


def test_audio_features_do_not_depend_on_how_they_are_requested(tiny):
    samples = speech(25.0)  # spans several 10 s wav2vec2 chunks
    model = tiny.components.audio_encoder
    whole = AudioFeatures(model, samples, 500, 100).video_frames(0, 700)
    pieces = AudioFeatures(model, samples, 500, 100)
    # out of order and across chunk boundaries, as a resumed stream asks
    parts = {s: pieces.video_frames(s, 100) for s in (600, 200, 0, 100, 300, 500, 400)}
    assert torch.equal(torch.cat([parts[s] for s in sorted(parts)], dim=-1), whole)
    assert whole[..., : 25 * 25].abs().sum() > 0
    assert (whole[..., 25 * 25 + 1 :] == 0).all()  # past the end: silence
