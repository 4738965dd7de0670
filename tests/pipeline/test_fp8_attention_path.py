"""Precision "fp8-attention": self-attention over e4m3 caches. The inputs' step (norms,
rotations, quantisation, cache writes in one graph), the attention's contract, the layer against
its bf16 form, and the sink's prefill that picks (and, a second time, rescales to) the caches'
multipliers."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.cache import KV_HEADROOM, BlockKV, SinkKeys, SinkPrefill, StepKVCache, kv_dtype
from pipeline.geometry import Geometry
from pipeline.model import fp8_attention as fa
from pipeline.model import fused
from pipeline.model.layers import CacheSlots, SelfAttention
from pipeline.model.rope import apply_rope
from pipeline.presets import get_preset

E4M3 = torch.float8_e4m3fn
needs_hopper = pytest.mark.skipif(
    not (torch.cuda.is_available() and fa.available(torch.device("cuda"))),
    reason="needs a Hopper GPU and the cuDNN frontend",
)


def _rotations(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    angles = torch.rand(n, 1, d // 2, generator=g) * 6.28
    return torch.stack([angles.cos(), angles.sin()], dim=-1)  # [n, 1, D/2, 2]


class _Slots:
    """A block's view of one layer's cache (the model's SlotCache), for one layer alone."""

    def __init__(self, kv: torch.Tensor, mults: torch.Tensor, ref: torch.Tensor, n: int, g):
        self.kv, self.mults, self.ref = kv, mults, ref  # kv [2, S, H, D]
        self.n, self.r = n, ref.shape[1]
        d = kv.shape[-1]
        rot = _rotations(n + self.r, d, g).to(kv.device)
        self.freqs, self.ref_freqs = rot[:n], rot[n:]

    def slots(self, layer: int) -> CacheSlots:
        kv, end = self.kv, self.kv.shape[1]
        return CacheSlots(
            k_slot=kv[0, end - self.n :],
            v_slot=kv[1, end - self.n :],
            ref_keys=self.ref,
            ref_freqs=self.ref_freqs,
            ref_slot=kv[0, : self.r],
            keys=kv[0].unsqueeze(0),
            values=kv[1].unsqueeze(0),
            kv_mults=self.mults,
        )

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """The bf16 cache's writes, as pipeline.cache.BlockKV makes them."""
        s = self.slots(layer)
        s.ref_slot.copy_(apply_rope(s.ref_keys, s.ref_freqs)[0])
        s.k_slot.copy_(apply_rope(k, self.freqs)[0])
        s.v_slot.copy_(v[0])
        return s.keys, s.values


def _layer_pair(heads: int, head_dim: int, tokens: int, cache: int, device: str, seed: int = 0):
    """One self-attention layer (bf16) and its input, and two caches of the same contents: one
    in bf16, one in e4m3 at the multipliers a sink prefill would pick."""
    g = torch.Generator().manual_seed(seed)
    dim = heads * head_dim
    layer = SelfAttention(dim, heads)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
        layer.norm_q.weight.uniform_(0.5, 1.5, generator=g)
        layer.norm_k.weight.uniform_(0.5, 1.5, generator=g)
    layer = layer.to(device, torch.bfloat16).requires_grad_(False)
    x = torch.randn(1, tokens, dim, generator=g).to(device, torch.bfloat16)
    # the older keys as a norm leaves them (unit RMS per token), values of the layer's scale
    keys = torch.randn(cache, heads, head_dim, generator=g)
    values = torch.randn(cache, heads, head_dim, generator=g)
    ref = torch.randn(1, 8, heads, head_dim, generator=g).to(device, torch.bfloat16)
    kv16 = torch.stack([keys, values]).to(device, torch.bfloat16)
    amax = torch.stack([keys.abs().amax(), values.abs().amax()])
    mults = fa.pow2_multiplier(amax * KV_HEADROOM)
    kv8 = torch.stack([fa.quantize(keys, mults[0]), fa.quantize(values, mults[1])]).to(device)
    mults = mults.to(device)
    g16, g8 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    return (
        layer,
        x,
        _Slots(kv16, torch.ones(2, device=device), ref, tokens, g16),
        _Slots(kv8, mults, ref, tokens, g8),
    )


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_the_inputs_step_quantises_what_the_bf16_step_writes():
    g = torch.Generator().manual_seed(0)
    n, r, h, d, s = 24, 8, 4, 16, 96
    q, k, v = (torch.randn(1, n, h * d, generator=g).bfloat16() for _ in range(3))
    wq, wk = (torch.rand(h * d, generator=g).bfloat16() + 0.5 for _ in range(2))
    rot = _rotations(n + r, d, g)
    ref_keys = torch.randn(1, r, h, d, generator=g).bfloat16()
    kv = torch.zeros(2, s, h, d, dtype=E4M3)
    before = kv.view(torch.uint8).clone()
    mults = torch.tensor([8.0, 16.0])
    begin = 40
    q8, factors = fused.fp8_attention_inputs(
        q, k, v, wq, wk, 1e-6, rot[:n], kv[0, begin : begin + n], kv[1, begin : begin + n],
        ref_keys, rot[n:], kv[0, :r], mults,
    )  # fmt: skip
    qr = fused._rope_f32(fused._rms_norm(q, wq, 1e-6).unflatten(2, (h, -1)), rot[:n])
    kr = fused._rope_f32(fused._rms_norm(k, wk, 1e-6).unflatten(2, (h, -1)), rot[:n])
    mq = fa.pow2_multiplier(qr.abs().amax())
    assert torch.equal(q8.view(torch.uint8), fa.quantize(qr, mq).view(torch.uint8))
    assert q8.float().abs().max() <= 448 and q8.float().abs().max() > 224  # the range is used
    want_k = fa.quantize(kr[0], 8.0)
    assert torch.equal(kv[0, begin : begin + n].view(torch.uint8), want_k.view(torch.uint8))
    want_v = fa.quantize(v[0].unflatten(1, (h, -1)), 16.0)
    assert torch.equal(kv[1, begin : begin + n].view(torch.uint8), want_v.view(torch.uint8))
    want_ref = fa.quantize(fused._rope_f32(ref_keys, rot[n:])[0], 8.0)
    assert torch.equal(kv[0, :r].view(torch.uint8), want_ref.view(torch.uint8))
    assert torch.equal(factors, torch.stack([1 / mq, *torch.tensor([1 / 8, 1 / 16, 16.0])]))
    # nothing outside the three slots is written
    after = kv.view(torch.uint8).clone()
    after[0, :r] = after[:, begin : begin + n] = 0
    assert torch.equal(after, before)


def _exact(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(dim=-1), v.double())


@pytest.mark.parametrize("keys,most", [(16278, 2048), (300, 64), (256, 64), (400, 2048), (5, 1)])
def test_chunks_cover_every_key_once_and_none_is_too_long(keys, most):
    chunks = fa.Chunks.of(keys, most)
    bounds = chunks.bounds()
    assert len(bounds) == chunks.count == -(-keys // most)
    assert bounds[0][0] == 0 and bounds[-1][1] == keys
    assert all(a == b for (_, a), (b, _) in zip(bounds, bounds[1:], strict=False))
    lengths = [b - a for a, b in bounds]
    assert max(lengths) <= most and max(lengths) - min(lengths) <= 2  # as even as it can be
    assert lengths[: chunks.full] == [chunks.size] * chunks.full


def _followed_by(t: torch.Tensor, extra: int, fill: float) -> torch.Tensor:
    """t [1, L, H, D] in memory that goes on for `extra` more keys, all `fill`."""
    room = torch.full((1, t.shape[1] + extra, *t.shape[2:]), fill, device=t.device).to(t.dtype)
    room[:, : t.shape[1]] = t
    return room[:, : t.shape[1]]


def test_merging_the_chunks_is_attention_over_all_the_keys():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, n, 4, 32, generator=g) for n in (40, 300, 300))
    k[:, 250:] *= 3  # the later chunks hold the larger logits: the weights must carry them
    whole = fa.emulate(q, k, v, rounded=frozenset(), chunk_keys=300)
    chunked = fa.emulate(q, k, v, rounded=frozenset(), chunk_keys=37)  # 9 chunks
    assert _rel(whole, _exact(q, k, v)) < 1e-5
    assert _rel(chunked, _exact(q, k, v)) < 1e-5


def test_partials_and_their_merge_are_fp8_attention_per_token():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, n, 4, 32, generator=g) for n in (40, 300, 300))
    (q8, mq), (k8, mk), (v8, mv) = (fa.quantize_per_tensor(t) for t in (q, k, v))
    factors = fa.factors_of(mq, mk, mv)
    o8, stats = fa.partials(q8, k8, v8, factors, chunk_keys=64)
    assert o8.dtype == E4M3 and o8.shape == (5, 40, 4, 32)
    assert stats.dtype == torch.float32 and stats.shape == (5, 4, 40, 1)
    assert o8.float().abs().max() <= v8.float().abs().max()  # rows of V, convexly combined
    rows, scales = fa.merge_rows(o8, stats, factors)
    assert rows.dtype == E4M3 and rows.shape == (1, 40, 128) and scales.shape == (1, 40, 1)
    assert bool((rows.float().abs().amax(dim=-1) == 448).all())  # every row at its own scale
    got = (rows.float() * scales).view(q.shape)
    assert _rel(got, _exact(q, k, v)) < 0.08
    assert _rel(got, fa.emulate(q, k, v, chunk_keys=64)) < 0.01  # the emulation's arithmetic


@pytest.mark.parametrize("chunk_keys", [fa.CHUNK_KEYS, 96])
def test_the_layer_over_an_e4m3_cache_is_close_to_its_bf16_form(chunk_keys, monkeypatch):
    monkeypatch.setattr(fa, "CHUNK_KEYS", chunk_keys)  # 96: the cache's 400 keys in 5 chunks
    layer, x, c16, c8 = _layer_pair(4, 32, tokens=48, cache=400, device="cpu")
    want = layer(x, c16)
    got = layer(x, c8)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert _rel(got, want) < 0.08


@needs_hopper
def test_the_layer_at_14b_size_on_the_gpu_is_close_to_its_bf16_form():
    # the 14B layer's heads over a cache a quarter of a 720x400 stream's
    layer, x, c16, c8 = _layer_pair(40, 128, tokens=1125, cache=4500, device="cuda")
    want = layer(x, c16)
    got = layer(x, c8)
    assert torch.isfinite(got.float()).all()
    assert _rel(got, want) < 0.08


@needs_hopper
def test_the_kernel_keeps_the_mass_of_a_long_cache():
    # values all 1 over a 720x400 stream's keys: every output is 1. Summed in one pass, Hopper's
    # FP8 products lose the low bits of each term added to a large sum (0.73-0.75, measured)
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(1, 3375, 40, 128, device=dev, generator=g)
    k = torch.randn(1, 16278, 40, 128, device=dev, generator=g)
    (q8, mq), (k8, mk) = fa.quantize_per_tensor(q), fa.quantize_per_tensor(k)
    v8 = torch.ones(k.shape, device=dev).to(E4M3)
    factors = fa.factors_of(mq, mk, torch.ones((), device=dev))
    rows, scales = fa.merge_rows(*fa.partials(q8, k8, v8, factors), factors)
    mean = (rows.float() * scales).mean().item()
    assert abs(mean - 1) < 0.03


def _gpu_inputs(seed: int) -> tuple[torch.Tensor, ...]:
    """e4m3 q [1, 512, 8, 128], k and v [1, 5000, 8, 128] on the GPU, and their factors."""
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(seed)
    q, k, v = (torch.randn(1, n, 8, 128, device=dev, generator=g) for n in (512, 5000, 5000))
    (q8, mq), (k8, mk), (v8, mv) = (fa.quantize_per_tensor(t) for t in (q, k, v))
    return q8, k8, v8, fa.factors_of(mq, mk, mv)


@needs_hopper
def test_the_kernel_computes_what_the_emulation_does():
    q8, k8, v8, factors = _gpu_inputs(seed=0)
    o8, stats = fa.partials(q8, k8, v8, factors)
    assert o8.shape[0] == 3  # 5000 keys in chunks of at most 2048
    cpu = [t.cpu() for t in (q8, k8, v8, factors)]
    want_o8, want_stats = fa.partials(*cpu)
    assert torch.allclose(stats.cpu(), want_stats, atol=1e-3)
    assert _rel(o8.float().cpu(), want_o8.float()) < 0.06


@needs_hopper
def test_the_kernel_reads_each_chunk_where_it_lies_and_nothing_past_the_keys():
    q8, k8, v8, factors = _gpu_inputs(seed=1)
    chunks = fa.Chunks.of(5000)
    assert (chunks.count, chunks.size, chunks.tail) == (3, 1667, 1666)  # a shorter last chunk
    o8, stats = fa.partials(q8, k8, v8, factors)
    # each chunk alone, in a call of its own: the same outputs (another plan may round
    # differently; a chunk read from the wrong place would differ everywhere)
    for i, (a, b) in enumerate(chunks.bounds()):
        alone = fa.partials(q8, k8[:, a:b].contiguous(), v8[:, a:b].contiguous(), factors, b - a)
        assert torch.allclose(alone[1][0], stats[i], atol=1e-4)
        assert (alone[0][0].float() != o8[i].float()).float().mean() < 1e-3
    # the keys followed by the largest there are: read, they would take every row's softmax
    past = fa.partials(q8, _followed_by(k8, 2048, 448.0), _followed_by(v8, 2048, 448.0), factors)
    assert torch.equal(past[0].view(torch.uint8), o8.view(torch.uint8))
    assert torch.equal(past[1], stats)


def _tiny_caches(dtype: torch.dtype, layers: int = 2):
    dit = get_preset("tiny").dit
    g = Geometry(64, 64, 24, dit.zip_frame_buckets)
    h, d = dit.num_heads, dit.head_dim
    caches = [StepKVCache(g, layers, h, d, "cpu", dtype) for _ in range(2)]
    sink_keys = SinkKeys(g, layers, h, d, "cpu", torch.float32)
    return g, caches, sink_keys


def _prefill(g, caches, sink_keys, layer: int, scale: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    h, d = caches[0].kv.shape[-2:]
    k, v = (torch.randn(1, g.sink_tokens, h, d, generator=gen) * scale for _ in range(2))
    freqs = _rotations(g.sink_tokens, d, gen)
    return SinkPrefill(caches, sink_keys, freqs).update(layer, k, v)


def test_the_prefill_picks_power_of_two_multipliers_with_headroom_and_writes_e4m3():
    g, caches, sk = _tiny_caches(kv_dtype("fp8-attention", torch.float32))
    assert caches[0].fp8 and caches[0].kv.dtype == E4M3
    assert kv_dtype("fp8", torch.bfloat16) == torch.bfloat16
    k, v = _prefill(g, caches, sk, layer=1, scale=3.0, seed=0)
    mk, mv = sk.mults[1]
    for m, t in ((mk, k), (mv, v)):
        assert m == 2.0 ** torch.log2(m).round()  # a power of two
        top = t.abs().max() * m
        assert 448 / KV_HEADROOM / 2 < top <= 448 / KV_HEADROOM
    assert bool((sk.mults[0] == 0).all())  # the other layer: none picked yet
    for cache in caches:  # every step's cache holds the same quantised sink
        kv = cache.layer(1).float()
        assert _rel(kv[1, : g.sink_tokens] / mv, v[0]) < 0.04
        assert _rel(kv[0, g.ref_tokens : g.sink_tokens] / mk, k[0, g.ref_tokens :]) < 0.04


def test_a_second_prefill_rescales_the_rings_and_a_resumed_one_keeps_them():
    g, caches, sk = _tiny_caches(torch.float8_e4m3fn)
    _prefill(g, caches, sk, layer=0, scale=1.0, seed=0)
    old = sk.mults[0].clone()
    gen = torch.Generator().manual_seed(5)
    for cache in caches:  # a clip's blocks written into the rings at those multipliers
        ring = cache.ring[0]  # [2, ring_tokens, H, D]
        vals = torch.randn(ring.shape, generator=gen)
        ring.copy_(fa.quantize(vals, old.view(2, 1, 1, 1)))
    held = [c.ring[0].float() / old.view(2, 1, 1, 1) for c in caches]
    _prefill(g, caches, sk, layer=0, scale=8.0, seed=1)  # the adaptive sink: larger values
    new = sk.mults[0].clone()
    assert bool((new < old).all())
    for cache, want in zip(caches, held, strict=True):
        got = cache.ring[0].float() / new.view(2, 1, 1, 1)
        small = want.abs() < 2.0**-6 * 8 / old.view(2, 1, 1, 1)  # fell below e4m3's normals
        assert torch.equal(got[~small], want[~small])  # a power of two: exact elsewhere
    # a resumed stream: rings read from a state written at `new`, multipliers not yet picked
    rings = [c.ring.clone() for c in caches]
    sk.mults.zero_()
    _prefill(g, caches, sk, layer=0, scale=8.0, seed=1)
    assert torch.equal(sk.mults[0], new)
    for cache, ring in zip(caches, rings, strict=True):
        assert torch.equal(cache.ring.view(torch.uint8), ring.view(torch.uint8))


def test_an_e4m3_cache_is_written_only_through_its_slots():
    g, caches, sk = _tiny_caches(torch.float8_e4m3fn)
    h, d = caches[0].kv.shape[-2:]
    rot = _rotations(g.block_tokens + g.ref_tokens, d, torch.Generator())
    view = BlockKV(caches[0], sk, 0, rot[: g.block_tokens], rot[g.block_tokens :])
    k = torch.zeros(1, g.block_tokens, h, d)
    with pytest.raises(TypeError, match="through its slots"):
        view.update(0, k, k)
