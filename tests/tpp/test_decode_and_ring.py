"""What the engine's decoding rank relies on: free snapshots of the streaming decoder, the
channels-last decode, and the shared-memory frame ring's flow control."""

from __future__ import annotations

import copy
import threading
import time

import pytest
import torch

from pipeline.tpp.protocol import FrameRing
from pipeline.vae import StreamingDecoder, use_channels_last


@pytest.fixture(scope="module")
def vae(tiny):
    return tiny.components.vae


def test_a_decoder_snapshot_keeps_its_moment_while_decoding_goes_on(vae):
    torch.manual_seed(2)
    latents = torch.randn(16, 13, 8, 8)
    decoder = StreamingDecoder(vae)
    decoder.decode(latents[:, :7])
    snap = decoder.snapshot()
    then = {k: v.clone() for k, v in decoder.state_dict()[0].items()}
    after = decoder.decode(latents[:, 7:10])  # replaces cache entries, never writes into them
    tensors, meta = decoder.state_dict(snap)
    assert meta["frames_decoded"] == 7 and decoder.frames_decoded == 10
    assert tensors.keys() == then.keys()
    assert all(torch.equal(tensors[k], then[k]) for k in then)

    resumed = StreamingDecoder(vae)
    resumed.load_state_dict(tensors, meta)
    assert torch.equal(resumed.decode(latents[:, 7:10]), after)


def test_channels_last_decode_computes_the_same_frames(vae):
    torch.manual_seed(3)
    latents = torch.randn(16, 10, 8, 8)
    plain = StreamingDecoder(vae)
    want = torch.cat([plain.decode(latents[:, :7]), plain.decode(latents[:, 7:])], dim=2)
    cl_vae = copy.deepcopy(vae)
    use_channels_last(cl_vae)
    cl = StreamingDecoder(cl_vae, channels_last=True)
    got = torch.cat([cl.decode(latents[:, :7]), cl.decode(latents[:, 7:])], dim=2)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_the_frame_ring_waits_for_the_reader_and_a_closed_ring_drops():
    ring = FrameRing(slots=2, frames=1, height=2, width=2)
    assert ring.data.is_shared()
    assert ring.wait_for_slot(0, 0) and ring.wait_for_slot(1, 0)
    result: list[bool] = []
    writer = threading.Thread(target=lambda: result.append(ring.wait_for_slot(2, 0)))
    writer.start()
    time.sleep(0.05)
    assert writer.is_alive()  # block 2 would overwrite block 0, still unread
    ring.release(1)
    writer.join(2.0)
    assert result == [True]

    blocked = threading.Thread(target=lambda: result.append(ring.wait_for_slot(5, 0)))
    blocked.start()
    ring.close()
    blocked.join(2.0)
    assert result == [True, False]
