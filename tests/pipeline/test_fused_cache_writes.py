"""Self-attention's norms, rotations and cache writes in one compiled graph
(`fused.norm_rope_into_cache`, switched by `layers.set_fused_cache_writes`): the values of the
separate steps, written into the block's views of its step cache and nowhere else."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from pipeline.model import fused, layers
from tests.pipeline.conftest import request

L, R, H, D, S = 24, 8, 4, 16, 96  # block tokens, reference tokens, heads, head dim, cache


def _inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dtype)

    angles = torch.rand(L + R, 1, D // 2, generator=g) * 6.28
    rot = torch.stack([angles.cos(), angles.sin()], dim=-1)  # [L + R, 1, D/2, 2]
    return {
        "q": rnd(1, L, H * D),
        "k": rnd(1, L, H * D),
        "v": rnd(1, L, H * D),
        "wq": rnd(H * D),
        "wk": rnd(H * D),
        "freqs": rot[:L],
        "ref_keys": rnd(1, R, H, D),
        "ref_freqs": rot[L:],
        "kv": rnd(2, S, H, D),  # a layer of a step cache: [keys | values]
    }


def _separate(t: dict[str, torch.Tensor], begin: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The steps one by one, as the attention runs them without the switch."""
    kv = t["kv"].clone()
    q = fused.rms_norm(t["q"], t["wq"], 1e-6).unflatten(2, (H, -1))
    k = fused.rms_norm(t["k"], t["wk"], 1e-6).unflatten(2, (H, -1))
    kv[0, :R] = fused.rope(t["ref_keys"], t["ref_freqs"])[0]
    kv[0, begin : begin + L] = fused.rope(k, t["freqs"])[0]
    kv[1, begin : begin + L] = t["v"].unflatten(2, (H, -1))[0]
    return fused.rope(q, t["freqs"]), kv


def _fused(t: dict[str, torch.Tensor], begin: int) -> tuple[torch.Tensor, torch.Tensor]:
    kv = t["kv"].clone()
    q = fused.norm_rope_into_cache(
        t["q"],
        t["k"],
        t["v"],
        t["wq"],
        t["wk"],
        1e-6,
        t["freqs"],
        kv[0, begin : begin + L],
        kv[1, begin : begin + L],
        t["ref_keys"],
        t["ref_freqs"],
        kv[0, :R],
    )
    return q, kv


@pytest.mark.parametrize("begin", [R, S - L])
def test_eager_it_gives_the_separate_steps_values_bit_for_bit(begin):
    t = _inputs()
    q_want, kv_want = _separate(t, begin)
    q_got, kv_got = _fused(t, begin)
    assert torch.equal(q_got, q_want)
    assert torch.equal(kv_got, kv_want)


@pytest.fixture
def inductor_on_cpu() -> Iterator[None]:
    fused.set_compile(True, devices=("cpu",), backend="inductor")
    try:
        yield
    finally:
        fused.set_compile(True)


def test_compiled_it_writes_the_slots_in_place_and_nothing_else(inductor_on_cpu):
    """Compiled, the slots are graph inputs that alias one cache: each is written where it
    lies (two ring positions, one graph), the rest of the cache keeps its bytes, and the values
    are the separate steps' up to bf16 rounding (the graph keeps float32 between its steps)."""
    t = _inputs()
    graphs = []
    for begin in (R, S - L):
        q_want, kv_want = _separate(t, begin)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a compile that failed would run eagerly, warned
            q_got, kv_got = _fused(t, begin)
        graphs.append(fused.graphs_compiled())
        written = torch.zeros(2, S, dtype=torch.bool)
        written[0, :R] = True
        written[0, begin : begin + L] = True
        written[1, begin : begin + L] = True
        assert torch.equal(kv_got[~written], t["kv"][~written])
        assert torch.allclose(
            kv_got[written].float(), kv_want[written].float(), atol=0.07, rtol=0.02
        )
        assert torch.allclose(q_got.float(), q_want.float(), atol=0.07, rtol=0.02)
    assert graphs[1] == graphs[0]  # another ring position: no graph of its own


@pytest.fixture
def fused_calls(monkeypatch) -> Iterator[list[int]]:
    """The fused graph's calls, counted; the switch back off afterwards."""
    calls = [0]
    fn = fused.norm_rope_into_cache

    def counted(*args):
        calls[0] += 1
        return fn(*args)

    monkeypatch.setattr(fused, "norm_rope_into_cache", counted)
    try:
        yield calls
    finally:
        layers.set_fused_cache_writes(False)


def test_a_stream_renders_the_same_frames_through_it(tiny, fused_calls):
    want = [c.frames for c in tiny.open(request(seconds=3.0, num_clips=2))]
    assert fused_calls[0] == 0  # off by default
    layers.set_fused_cache_writes(True)
    got = [c.frames for c in tiny.open(request(seconds=3.0, num_clips=2))]
    # every block's layers, not the sink's prefill (which writes into every step's cache)
    assert fused_calls[0] > 0 and fused_calls[0] % len(tiny.components.dit.blocks) == 0
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a, b)
