"""The engine's frames are the single-device generator's frames, bit for bit (float32 on the
CPU, gloo): whatever the number of ranks, the steps and where the cuts between ranks fall."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.tpp.partition import Unit
from tests.tpp.conftest import config, request


def assert_same(got, want) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == np.uint8 and a.shape == b.shape
        assert np.array_equal(a, b)


@pytest.mark.parametrize(
    ("ranks", "steps", "split"),
    [
        (1, 4, "steps"),
        (2, 4, "steps"),
        (2, 3, "layers"),  # a cut inside step 1
        (4, 4, "steps"),  # one step per rank, as LiveAvatar runs it
        (4, 3, "layers"),  # cuts inside every step
        (4, 2, "steps"),  # more ranks than steps: two ranks only pass blocks on
    ],
)
def test_frames_equal_the_single_device_stream(engines, reference, ranks, steps, split):
    engine = engines.get(str(ranks), config(ranks))
    stream = engine.open(request(3, steps), split=split)
    if split == "layers" and ranks > 1:
        assert any(u.stop - u.start < 4 for piece in stream.partition for u in piece)
    clips = list(stream)
    assert [c.index for c in clips] == [0, 1, 2]
    assert [(c.audio_start_s, c.audio_end_s) for c in clips] == [
        (0, 0.96),
        (0.96, 1.92),
        (1.92, 2.88),
    ]
    assert_same([c.frames for c in clips], reference(3, steps))


def test_split_layers_pieces_hold_only_their_layers(engine2):
    stream = engine2.open(request(1, 3), split="layers")
    assert stream.partition == ((Unit(0, 0, 4), Unit(1, 0, 2)), (Unit(1, 2, 4), Unit(2, 0, 4)))
    stream.close()


def test_the_model_stays_loaded_between_streams(engine2, reference):
    pids = list(engine2.pids)
    first = engine2.open(request(2, 4))
    next(first)
    seen: list[int] = []
    second = engine2.open(request(3, 4), progress=seen.append)  # closes the first
    with pytest.raises(RuntimeError, match="closed"):
        next(first)
    assert_same([c.frames for c in second], reference(3, 4))
    assert seen == [0, 1, 2]
    assert engine2.pids == pids


@pytest.mark.slow
def test_decoding_on_a_rank_of_its_own(engines, reference):
    engine = engines.get("2+vae", config(2, vae_device="cpu"))
    assert engine.config.world_size == 3
    stream = engine.open(request(3, 3), split="layers")
    assert_same([c.frames for c in stream], reference(3, 3))


def test_frames_travel_through_shared_memory(engine2):
    stream = engine2.open(request(1, 4))
    assert stream.ring.data.is_shared() and stream.ring.head.is_shared()
    clip = next(stream)
    # the caller owns its copy: the ring slots are reused by later blocks
    assert not np.shares_memory(clip.frames, stream.ring.data.numpy())
    stream.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dit_ranks", "steps", "own_vae"),
    [
        (4, 4, True),  # LiveAvatar's layout: a step on each of four ranks, a fifth decodes
        (8, 8, False),  # one engine on eight ranks, a step each
    ],
    ids=["4+1", "8"],
)
def test_five_and_eight_rank_layouts_give_the_single_device_frames(
    engines, reference, dit_ranks, steps, own_vae
):
    cfg = config(dit_ranks, vae_device="cpu" if own_vae else None)
    engine = engines.fresh(cfg)
    try:
        assert engine.config.world_size == dit_ranks + own_vae
        stream = engine.open(request(3, steps), split="steps")
        assert len(stream.partition) == dit_ranks
        assert all(len({u.step for u in piece}) == 1 for piece in stream.partition)
        assert_same([c.frames for c in stream], reference(3, steps))
    finally:
        engine.shutdown()
