"""Audio features as the reference computes them: its frame mapping, wav2vec2 over the speech
alone (never padded), its hidden states and dtype; the same features however a stream gets to a
clip. docs/audio.md says what each step does and why."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from ops.demo import synthesize_speech
from pipeline import Generator
from pipeline.audio_features import (
    HOP,
    WINDOW,
    AudioFeatures,
    chunk_window,
    count_frames,
    feature_positions,
    grid_length,
    normalize,
)
from pipeline.presets import LIVEAVATAR_14B
from tests.pipeline.conftest import request


def samples_for(num_feature_frames: int) -> int:
    """The shortest waveform with this many wav2vec2 frames."""
    return (num_feature_frames - 1) * HOP + WINDOW


def reference_features(hidden: torch.Tensor, video_frames: int) -> torch.Tensor:
    """What the reference hands the DiT for video frames [0, video_frames), written from its
    description: the whole utterance's hidden states [layers, T, C] interpolated linearly onto
    int(T / 50 * 30) points with align_corners=True, then frame k takes 30 Hz point
    round(k / 25 * 30), or zeros where that point is past the end. -> [layers, C, frames]"""
    layers, t, c = hidden.shape
    length = int(t / 50 * 30)
    grid = F.interpolate(hidden.transpose(1, 2), size=length, mode="linear", align_corners=True)
    out = torch.zeros(layers, c, video_frames, dtype=hidden.dtype)
    for k in range(video_frames):
        g = int(np.round(k / 25 * 30))
        if g < length:
            out[:, :, k] = grid[:, :, g]
    return out


def whole_utterance(model: Wav2Vec2Model, samples: np.ndarray) -> torch.Tensor:
    """The reference's wav2vec2 call: the normalised utterance at once, every hidden state as
    transformers 4.x returns them (the last after the encoder's final layer norm)."""
    x = torch.from_numpy(normalize(samples)).to(next(model.parameters()).dtype).unsqueeze(0)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
    return torch.stack([*out.hidden_states[:-1], out.last_hidden_state])[:, 0]


def tiny_encoder(seed: int = 0) -> Wav2Vec2Model:
    from pipeline.presets import TINY

    torch.manual_seed(seed)
    return Wav2Vec2Model(Wav2Vec2Config(**TINY.audio_encoder)).eval().requires_grad_(False)


# ---- 50 Hz features -> 25 fps video frames -------------------------------------------------

# 30 s of speech: T = 1500 feature frames, L = 900 grid points, grid point g at g * 1499 / 899.
# (video frame, 30 Hz point round(1.2 k), feature frame below, weight of the one above)
HAND_TABLE = [
    (0, 0, 0, Fraction(0)),
    (1, 1, 1, Fraction(600, 899)),  # 1499 / 899 = 1.667
    (2, 2, 3, Fraction(301, 899)),  # 2.4 rounds to 2: 2998 / 899 = 3.335
    (3, 4, 6, Fraction(602, 899)),  # 3.6 rounds to 4: 5996 / 899 = 6.670
    (4, 5, 8, Fraction(303, 899)),  # 4.8 rounds to 5: 7495 / 899 = 8.337
    (5, 6, 10, Fraction(4, 899)),  # 8994 / 899 = 10.004 (true time: 10)
    (374, 449, 748, Fraction(599, 899)),  # 748.67: the stretch, 0.33 frame past 5 g / 3
    (749, 899, 1499, Fraction(0)),  # the last grid point is the last feature frame
]


def test_video_frames_sample_the_reference_positions():
    t = 1500
    assert count_frames(samples_for(t)) == t and grid_length(t) == 900
    frames = np.array([row[0] for row in HAND_TABLE] + [750])
    pos = feature_positions(frames, t)
    for i, (k, g, lo, weight) in enumerate(HAND_TABLE):
        assert (12 * k + 5) // 10 == g
        assert pos.valid[i], k
        assert pos.lo[i] == lo, k
        assert pos.hi[i] == min(lo + 1, t - 1), k
        assert pos.weight[i] == float(weight), k
    assert not pos.valid[-1]  # frame 750 wants grid point 900 of 900: past the speech


def test_grid_length_follows_the_reference_floating_point():
    # int(205 / 50 * 30) is 122 (122.99999999999999), not 123: frame 102 (point 122) is past
    # the end for the reference, and so for us
    assert grid_length(205) == 122 and grid_length(1500) == 900 and grid_length(0) == 0
    pos = feature_positions(np.array([100, 101, 102]), 205)
    assert list(pos.valid) == [True, True, False]
    assert pos.lo[0] == 202 and pos.weight[0] == float(Fraction(120 * 204 % 121, 121))
    assert pos.lo[1] == 204 and pos.weight[1] == 0  # point 121 of 122: the last frame
    # under 20 ms of speech has no grid point (the reference fails there): silence
    assert not feature_positions(np.arange(3), 1).valid.any()
    assert not feature_positions(np.arange(3), 0).valid.any()


@pytest.mark.parametrize("t", [2, 3, 205, 1499, 1500, 4001])
def test_frame_positions_reproduce_the_reference_interpolation(t):
    hidden = torch.randn(2, t, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(t))
    frames = int(np.ceil(t / 50 * 25)) + 3  # a few past the end
    want = reference_features(hidden, frames)
    pos = feature_positions(np.arange(frames), t)
    got = torch.zeros_like(want)
    w = torch.from_numpy(pos.weight)[pos.valid]
    a, b = hidden[:, pos.lo[pos.valid]], hidden[:, pos.hi[pos.valid]]
    got[:, :, torch.from_numpy(pos.valid)] = ((1 - w)[:, None] * a + w[:, None] * b).transpose(1, 2)
    assert torch.allclose(got, want, atol=1e-9, rtol=0)


def test_features_are_the_reference_pipeline_end_to_end():
    model = tiny_encoder()
    samples = synthesize_speech(7.3).astype(np.float32)
    frames = int(7.3 * 25) + 5
    # the interpolation in float64: torch's float32 kernel rounds the positions themselves
    want = reference_features(whole_utterance(model, samples).double(), frames).float()
    got = AudioFeatures(model, samples).video_frames(0, frames)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert (got[..., -5:] == 0).all() and got[..., :-5].abs().amax(dim=(0, 1)).min() > 0


def test_features_of_a_bf16_encoder_are_rounded_as_the_reference_rounds_them():
    model = tiny_encoder().to(torch.bfloat16)
    samples = synthesize_speech(3.0).astype(np.float32)
    got = AudioFeatures(model, samples).video_frames(0, 75)
    assert torch.equal(got, got.bfloat16().float())  # the reference interpolates in bf16
    # its CUDA kernel blends in float32 and rounds once; blended exactly and rounded once:
    want = reference_features(whole_utterance(model, samples).double(), 75).bfloat16().float()
    eps = torch.finfo(torch.bfloat16).eps
    # a rounding step at most (plus float32's own blending error where the blend cancels)
    assert ((got - want).abs() <= 2 * eps * want.abs() + 1e-6).all()


# ---- wav2vec2's input and output -----------------------------------------------------------


def test_normalisation_is_wav2vec2s_feature_extractor():
    samples = (0.3 * synthesize_speech(2.0) + 0.05).astype(np.float32)
    extractor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    want = extractor(samples, sampling_rate=16_000).input_values[0]
    assert np.array_equal(normalize(samples), want)


def test_the_last_hidden_state_is_after_the_final_layer_norm():
    # transformers 4.x (the reference's) returns the final layer norm's output as the last
    # hidden state of a stable-layer-norm encoder; 5.x returns the last layer's input to it
    model = tiny_encoder()
    samples = synthesize_speech(2.0).astype(np.float32)
    got = AudioFeatures(model, samples).hidden_states(0, count_frames(len(samples)))
    x = torch.from_numpy(normalize(samples)).unsqueeze(0)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
    assert got.shape[0] == len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert torch.allclose(got[-1], out.last_hidden_state[0], atol=1e-5)
    assert torch.allclose(got[-1], model.encoder.layer_norm(got[-1]), atol=1e-4)  # normed
    for i in range(len(out.hidden_states) - 1):
        assert torch.allclose(got[i], out.hidden_states[i][0], atol=1e-5), i


def test_chunk_windows_hold_only_speech():
    assert [chunk_window(c, 500, 100, 1500) for c in range(3)] == [
        range(0, 700),  # no speech before: all the context after
        range(400, 1100),
        range(800, 1500),  # shifted inward: no frame past the end
    ]
    assert [chunk_window(c, 500, 100, 600) for c in range(2)] == [range(0, 600)] * 2
    assert [chunk_window(c, 500, 0, 1400) for c in range(3)] == [
        range(0, 500),
        range(500, 1000),
        range(900, 1400),
    ]
    # the release's setting: 5 min chunks in 40 min windows, here over an hour of speech
    assert [chunk_window(c, 15_000, 52_500, 180_000) for c in (0, 5, 11)] == [
        range(0, 120_000),
        range(22_500, 142_500),
        range(60_000, 180_000),
    ]


def test_a_chunk_is_wav2vec2_over_its_window_of_speech_alone():
    # with windows shorter than the speech: chunk c's features are exactly wav2vec2 run on the
    # samples of its window, at the utterance's edges included (nothing padded)
    model = tiny_encoder()
    samples = synthesize_speech(9.0).astype(np.float32)
    feats = AudioFeatures(model, samples, chunk_frames=100, context_frames=30)
    t = feats.num_feature_frames
    normed = normalize(samples)
    for c in (0, 1, (t - 1) // 100):
        window = chunk_window(c, 100, 30, t)
        x = torch.from_numpy(normed[window.start * HOP : (window.stop - 1) * HOP + WINDOW])
        with torch.no_grad():
            out = model(x.unsqueeze(0), output_hidden_states=True)
        alone = torch.stack([*out.hidden_states[:-1], out.last_hidden_state])[:, 0]
        assert alone.shape[1] == len(window)
        rows = range(c * 100, min(c * 100 + 100, t))
        got = feats.hidden_states(rows.start, rows.stop)
        want = alone[:, rows.start - window.start : rows.stop - window.start]
        assert torch.allclose(got, want, atol=1e-5), c


# ---- lip sync at length: the same features however a stream reaches a clip -----------------


def clip_features(feats: AudioFeatures, clip: int, frames: int = 48, block: int = 12):
    return torch.cat(
        [feats.video_frames(clip * frames + b, block) for b in range(0, frames, block)], dim=-1
    )


def chunk_boundaries(num_feature_frames: int, chunk: int, clips: int, frames: int) -> list[int]:
    """Clips whose first video frame reads a chunk that no frame of the clip before reads: a
    resume there starts the feature computation on a chunk boundary."""

    def first(clip: int) -> int:
        return int(feature_positions(np.array([frames * clip]), num_feature_frames).lo[0])

    def last(clip: int) -> int:
        return int(feature_positions(np.array([frames * clip - 1]), num_feature_frames).hi[0])

    return [c for c in range(1, clips) if first(c) // chunk > last(c) // chunk]


def test_a_resume_at_a_chunk_boundary_gives_bit_identical_features():
    model = tiny_encoder()
    samples = synthesize_speech(21.0).astype(np.float32)
    chunk, context = 96, 40
    fresh = AudioFeatures(model, samples, chunk, context)
    clips = int(np.ceil(21.0 * 25 / 48))
    uninterrupted = [clip_features(fresh, c) for c in range(clips)]
    boundaries = chunk_boundaries(fresh.num_feature_frames, chunk, clips, 48)
    assert len(boundaries) >= 3, boundaries
    for start in range(1, clips):  # the boundaries and every other clip
        resumed = AudioFeatures(model, samples, chunk, context)
        for c in range(start, clips):
            assert torch.equal(clip_features(resumed, c), uninterrupted[c]), (start, c)


def test_a_stream_resumed_at_an_audio_chunk_boundary_continues_exactly(tiny):
    # the tiny stream with ~2 s audio chunks: its 24-frame clips 2 and 4 start on a chunk
    chunk = 96
    cfg = dataclasses.replace(tiny.preset.stream, audio_chunk_frames=chunk, audio_context_frames=30)
    gen = Generator(dataclasses.replace(tiny.preset, stream=cfg), tiny.components)
    req = request(seconds=6.0, num_clips=6)
    stream = gen.open(req)
    assert chunk_boundaries(stream.audio.num_feature_frames, chunk, 6, 24) == [2, 4]
    frames, states = [], {}
    for clip in stream:
        frames.append(clip.frames)
        if stream.next_clip in (2, 4):
            states[stream.next_clip] = stream.state_dict()
    assert len(frames) == 6
    for at, state in states.items():
        resumed = gen.open(req, state=state)
        assert resumed.next_clip == at
        for clip in resumed:
            assert np.array_equal(clip.frames, frames[clip.index]), (at, clip.index)


# ---- chunked against whole on wav2vec2-large-xlsr-53's architecture -------------------------


@pytest.fixture(scope="module")
def xlsr53() -> Wav2Vec2Model:
    """wav2vec2-large-xlsr-53's architecture (24 layers, 1024 wide) with transformers' own
    random initialisation: random weights, so this checks the computation, not the weights."""
    torch.manual_seed(0)
    config = Wav2Vec2Config(**LIVEAVATAR_14B.audio_encoder)
    assert config.num_hidden_layers == 24 and config.hidden_size == 1024
    assert config.feat_extract_norm == "layer" and config.do_stable_layer_norm
    return Wav2Vec2Model(config).eval().requires_grad_(False)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """[layers, frames]: L2 over channels of the difference, over L2 of the reference."""
    return (got - want).norm(dim=-1) / want.norm(dim=-1)


@pytest.mark.slow
def test_chunked_features_match_the_whole_utterance_on_the_real_architecture(xlsr53):
    samples = synthesize_speech(32.0).astype(np.float32)
    whole = whole_utterance(xlsr53, samples)  # [25, 1599, 1024]
    t = whole.shape[1]
    stream = LIVEAVATAR_14B.stream
    # the release's context with 12 s chunks, so that 32 s of speech spans three chunks (and
    # each window two pieces of the convolutional front-end)
    feats = AudioFeatures(
        xlsr53, samples, chunk_frames=600, context_frames=stream.audio_context_frames
    )
    chunked = feats.hidden_states(0, t)
    err = relative_error(chunked, whole)
    assert err.shape == (25, t)
    assert float(err.max()) < 0.005, float(err.max())  # every hidden state, every frame

    # the premise of that context: with the 2 s of context used before, attention (global in
    # wav2vec2) sees too little of the speech, and the middle chunk is off by far more
    short = AudioFeatures(xlsr53, samples, chunk_frames=600, context_frames=100)
    err = relative_error(short.hidden_states(600, 1200), whole[:, 600:1200])
    assert float(err.max()) > 0.005
