"""Constant memory: a stream holds as many tensor bytes after clip 50 as after clip 5."""

from __future__ import annotations

import gc
import warnings

import torch
from torch._subclasses.fake_tensor import is_fake

from tests.pipeline.conftest import request


def live_tensor_bytes() -> int:
    """Bytes of every distinct tensor storage alive in this process (models included)."""
    gc.collect()
    seen: dict[int, int] = {}
    with warnings.catch_warnings():  # isinstance() pokes deprecated module-level proxies
        warnings.simplefilter("ignore")
        tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    for t in tensors:
        # fake tensors (torch.compile's tracing leaves some alive) own no memory
        if t.device.type != "meta" and not is_fake(t):
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def test_memory_after_clip_50_equals_after_clip_5(tiny):
    # 1 block per clip keeps 50 clips quick on a CPU; the ring still wraps every clip
    req = request(seconds=50 * 12 / 25, infer_frames=12, seed=3)
    stream = tiny.open(req)
    assert stream.num_clips == 50
    held, live = {}, {}
    for clip in stream:
        assert clip.frames.shape == (12, 64, 64, 3)
        if clip.index + 1 in (5, 50):
            held[clip.index + 1] = stream.memory_bytes()
            live[clip.index + 1] = live_tensor_bytes()
        del clip
    assert held[50] == held[5]
    assert held[5]["kv_caches"] > 0 and held[5]["decoder"] > 0
    assert live[50] == live[5]


def test_offline_decode_keeps_latents_and_grows(tiny):
    """The comparison mode: latents pile up until the end of the stream."""
    held = []
    stream = tiny.open(
        request(seconds=6 * 12 / 25, infer_frames=12, num_clips=6),
        decode="offline",
        progress=lambda i: held.append(stream.memory_bytes()["offline"]),
    )
    frames = [c.frames for c in stream]
    assert len(frames) == 6
    assert held == sorted(held) and held[-1] > held[0]
