"""The per-block loop asks nothing of the device that would make the host wait for it: the
speech features are looked up a whole clip at a time, a clip ahead (on a GPU, on a CUDA
stream of their own: ops/bench/generate.py checks a steady block under
torch.cuda.set_sync_debug_mode("error")), and frames leave for the host once per clip."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.stream import ClipAudio, clip_noise
from tests.pipeline.conftest import request


def test_features_are_looked_up_once_per_clip_a_clip_ahead(tiny):
    stream = tiny.open(request(seconds=3.0, num_clips=3))  # clips of 2 blocks, 24 frames
    asked: list[tuple[int, int]] = []
    look_up = stream.audio.video_frames

    def spy(start: int, count: int) -> torch.Tensor:
        asked.append((start, count))
        return look_up(start, count)

    stream.audio.video_frames = spy
    next(stream)
    assert asked == [(0, 24), (24, 24)]  # clip 0, then clip 1 during clip 0's first block
    for _ in stream:
        pass
    assert asked == [(0, 24), (24, 24), (48, 24)]  # nothing past the last clip


def test_a_clips_features_are_the_blocks_features(tiny):
    stream = tiny.open(request(seconds=3.0, num_clips=3))
    ahead = ClipAudio(stream.audio, stream.geometry, stream.num_clips)
    for block in (5, 0, 3, 4):  # out of order, as a resumed stream asks
        want = stream.audio.video_frames(block * 12, 12)
        assert torch.equal(ahead.block(block), want)


def test_a_resumed_stream_looks_up_its_first_clip_itself(tiny, tmp_path):
    req = request(seconds=3.0, num_clips=3)
    whole = [c.frames for c in tiny.open(req)]
    stream = tiny.open(req)
    next(stream)
    next(stream)
    stream.checkpoint(tmp_path / "ckpt")
    resumed = tiny.open(req, resume_from=tmp_path / "ckpt")
    assert np.array_equal(next(resumed).frames, whole[2])


def test_a_steady_block_makes_no_tensor_from_host_values_and_reads_none_back(tiny, monkeypatch):
    """On a GPU each of these is a blocking copy: the host would wait for every block queued
    before it. (The GPU check itself: ops/bench/generate.py, host_syncs_in_steady_block.)"""
    stream = tiny.open(request(seconds=2.0, num_clips=2, infer_frames=36))  # 3 blocks a clip
    next(stream)
    g = stream.geometry
    noise = clip_noise(stream.request.seed, 1, 16, g)
    frames = torch.empty(36, stream.height, stream.width, 3, dtype=torch.uint8)
    stream._generate_block(1, 0, noise, frames)  # clip 1's first block: its look-ups
    calls: list[str] = []

    def spy(owner: object, name: str) -> None:
        fn = getattr(owner, name)

        def wrapped(*args: object, **kwargs: object) -> object:
            calls.append(name)
            return fn(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapped)

    for name in ("tensor", "as_tensor", "from_numpy"):
        spy(torch, name)
    for name in ("item", "tolist", "cpu", "numpy"):
        spy(torch.Tensor, name)
    stream._generate_block(1, 1, noise, frames)  # a steady block
    monkeypatch.undo()
    assert calls == []
