"""The presenter cache: a presenter seen before opens from the cache with the very frames of a
cold open; entries are bounded in bytes, least recently used out first; namespaces (tenants)
share nothing."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from pipeline import Generator, RenderRequest, Waveform
from pipeline.presenter_key import presenter_key
from pipeline.presenters import EntryKey, Presenter, PresenterCache
from tests.pipeline.conftest import portrait, request, speech

CLIPS = 3


def frames(gen: Generator, req: RenderRequest, namespace: str | None = None) -> list[np.ndarray]:
    stream = gen.open(req, namespace=namespace)
    return [c.frames for c in stream]


def presenter(prompt: str = "a person talking", **kw: object) -> RenderRequest:
    return request(seconds=3.0, num_clips=CLIPS, prompt=prompt, **kw)


@pytest.fixture
def cached(tiny) -> Iterator[Generator]:
    """The tiny generator with an empty cache (large enough for everything)."""
    tiny.presenter_cache = PresenterCache(device_bytes=1 << 30, host_bytes=1 << 30)
    yield tiny
    tiny.presenter_cache = None


@pytest.fixture(scope="module")
def cold(tiny) -> dict[str, list[np.ndarray]]:
    """Frames of cold opens (no cache), by presenter."""
    assert tiny.presenter_cache is None
    return {
        "talking": frames(tiny, presenter()),
        "smiling": frames(tiny, presenter("a person smiling")),
        "other-speech": frames(tiny, presenter(audio=Waveform(speech(3.0)[::-1].copy()), seed=11)),
    }


def entry_size(gen: Generator) -> int:
    probe = PresenterCache(device_bytes=1 << 30, host_bytes=0)
    gen.presenter_cache = probe
    try:
        gen.open(presenter(), namespace="probe").close()
        size, _ = probe.usage()
    finally:
        gen.presenter_cache = None
    assert size > 0
    return size


def assert_same(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want) == CLIPS
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and np.array_equal(g, w)


def test_a_hit_gives_the_frames_of_a_cold_open(cached, cold):
    cache = cached.presenter_cache
    first = cached.open(presenter(), namespace="t")
    assert not first.presenter_cached
    assert_same([c.frames for c in first], cold["talking"])  # storing changes nothing
    again = cached.open(presenter(), namespace="t")
    assert again.presenter_cached
    assert_same([c.frames for c in again], cold["talking"])
    assert (cache.stats.hits, cache.stats.misses, len(cache)) == (1, 1, 1)


def test_the_entry_depends_on_the_presenter_alone_not_speech_or_seed(cached, cold):
    frames(cached, presenter(), namespace="t")  # stored by a stream of other speech and seed
    stream = cached.open(
        presenter(audio=Waveform(speech(3.0)[::-1].copy()), seed=11), namespace="t"
    )
    assert stream.presenter_cached
    assert_same([c.frames for c in stream], cold["other-speech"])


def test_an_entry_is_never_written_by_the_streams_that_use_it(cached, cold):
    frames(cached, presenter(), namespace="t")
    (key,) = cached.presenter_cache.keys()
    entry = cached.presenter_cache.get(key)
    before = {k: t.clone() for k, t in entry.tensors.items()}
    for _ in range(2):
        assert_same(frames(cached, presenter(), namespace="t"), cold["talking"])
    for k, t in entry.tensors.items():
        assert torch.equal(t, before[k]), k


def test_eviction_by_size_least_recently_used_first(tiny, cold):
    size = entry_size(tiny)
    cache = tiny.presenter_cache = PresenterCache(device_bytes=size + size // 2, host_bytes=0)
    try:
        assert_same(frames(tiny, presenter(), namespace="t"), cold["talking"])
        assert_same(frames(tiny, presenter("a person smiling"), namespace="t"), cold["smiling"])
        assert cache.stats.evicted == 1 and len(cache) == 1  # room for one: the older went
        assert cache.usage() == (size, 0)

        after = tiny.open(presenter(), namespace="t")  # evicted: computed again
        assert not after.presenter_cached
        assert_same([c.frames for c in after], cold["talking"])
        smiling = tiny.open(presenter("a person smiling"), namespace="t")
        assert not smiling.presenter_cached  # pushed out by the one before
        assert_same([c.frames for c in smiling], cold["smiling"])
        assert cache.stats.hits == 0 and cache.stats.evicted == 3
    finally:
        tiny.presenter_cache = None


def test_the_host_tier_keeps_what_the_device_tier_pushes_out(tiny, cold):
    size = entry_size(tiny)
    cache = tiny.presenter_cache = PresenterCache(device_bytes=size, host_bytes=size)
    try:
        frames(tiny, presenter(), namespace="t")
        frames(tiny, presenter("a person smiling"), namespace="t")
        assert cache.stats.demoted == 1 and cache.usage() == (size, size)

        stream = tiny.open(presenter(), namespace="t")  # from the host tier, back to the device
        assert stream.presenter_cached
        assert_same([c.frames for c in stream], cold["talking"])
        stream = tiny.open(presenter("a person smiling"), namespace="t")  # now on the host
        assert stream.presenter_cached
        assert_same([c.frames for c in stream], cold["smiling"])
        assert cache.stats.evicted == 0 and len(cache) == 2
    finally:
        tiny.presenter_cache = None


def test_a_presenter_larger_than_both_tiers_is_not_kept(tiny, cold):
    cache = tiny.presenter_cache = PresenterCache(device_bytes=1024, host_bytes=1024)
    try:
        assert_same(frames(tiny, presenter(), namespace="t"), cold["talking"])
        assert len(cache) == 0 and cache.stats.too_large == 1
    finally:
        tiny.presenter_cache = None


def test_two_tenants_with_the_same_files_share_no_entry(cached, cold):
    cache = cached.presenter_cache
    a = cached.open(presenter(), namespace="tenant-a")
    assert_same([c.frames for c in a], cold["talking"])
    b = cached.open(presenter(), namespace="tenant-b")
    assert not b.presenter_cached  # the same files, another tenant: computed, not shared
    assert_same([c.frames for c in b], cold["talking"])
    assert len(cache) == 2 and a.presenter_key != b.presenter_key
    assert cache.presenter_keys() == (b.presenter_key, a.presenter_key)  # most recent first


def test_the_key_is_the_one_a_job_carries(cached):
    req = presenter()
    stream = cached.open(req, namespace="tenant-a")
    image_sha256 = hashlib.sha256(portrait()).hexdigest()
    assert stream.presenter_key == presenter_key(
        "tenant-a", image_sha256, req.prompt, req.size, cached.precision
    )
    assert presenter_key("tenant-a", image_sha256, req.prompt, "64*64", "bf16") != presenter_key(
        "tenant-a", image_sha256, req.prompt, "96*96", "bf16"
    )


def test_no_namespace_no_cache_and_another_engine_sees_nothing(cached, cold):
    cache = cached.presenter_cache
    stream = cached.open(presenter())
    assert stream.presenter_key is None and len(cache) == 0
    stream.close()
    frames(cached, presenter(), namespace="t")
    other = Generator.from_preset("tiny", device="cpu", random_weights=True, seed=1)
    other.presenter_cache = cache  # one cache, two models: entries are per engine
    stream = other.open(presenter(), namespace="t")
    assert not stream.presenter_cached and len(cache) == 2


def synthetic(nbytes: int) -> Presenter:
    t = torch.zeros(nbytes // 4, dtype=torch.float32)
    return Presenter({"text": t}, {}, {"text": t.device})


def test_the_least_recently_used_goes_first():
    cache = PresenterCache(device_bytes=2000, host_bytes=0)
    a, b, c = (EntryKey(name, "engine") for name in "abc")
    cache.put(a, synthetic(1000))
    cache.put(b, synthetic(1000))
    assert cache.get(a) is not None  # a is now the more recent
    cache.put(c, synthetic(1000))
    assert (a in cache, b in cache, c in cache) == (True, False, True)
    assert cache.presenter_keys() == ("c", "a")  # what a worker tells its claim: recent first
    assert cache.usage() == (2000, 0)


def test_the_host_tier_is_bounded_too():
    cache = PresenterCache(device_bytes=1000, host_bytes=2000)
    keys = [EntryKey(str(i), "engine") for i in range(4)]
    for key in keys:
        cache.put(key, synthetic(1000))
    # one on the device (the newest), two on the host, the oldest gone
    assert [k in cache for k in keys] == [False, True, True, True]
    assert cache.usage() == (1000, 2000) and cache.stats.evicted == 1
    got = cache.get(keys[1])  # back to the device: pushes keys[3] to the host, keys[2] out
    assert got is not None and torch.equal(got.text, torch.zeros(250))
    assert [k in cache for k in keys] == [False, True, False, True]
    assert cache.usage() == (1000, 2000)


def test_a_resumed_stream_takes_its_prompt_encoding_from_the_cache(cached, cold):
    frames(cached, presenter(), namespace="t")
    stream = cached.open(presenter())  # no namespace: computed, not cached
    next(stream)
    state = stream.state_dict()
    resumed = cached.open(presenter(), state=state, namespace="t")
    assert resumed.presenter_cached and resumed.next_clip == 1
    rest = [c.frames for c in resumed]
    assert len(rest) == CLIPS - 1
    for got, want in zip(rest, cold["talking"][1:], strict=True):
        assert np.array_equal(got, want)


def test_a_state_taken_right_after_a_hit_resumes_with_the_cold_frames(cached, cold):
    """A hit puts the sink in place from the cache, with no prefill: the state still names the
    latent it was built from, and a resume prefills the same sink."""
    frames(cached, presenter(), namespace="t")
    stream = cached.open(presenter(), namespace="t")
    assert stream.presenter_cached
    state = stream.state_dict()
    stream.close()
    resumed = cached.open(presenter(), state=state)
    assert not resumed.presenter_cached and resumed.next_clip == 0
    got = [c.frames for c in resumed]
    assert len(got) == CLIPS
    for a, b in zip(got, cold["talking"], strict=True):
        assert np.array_equal(a, b)


def test_a_hit_at_fp8_attention_gives_the_cold_frames(tiny_fp8_attention):
    # the e4m3 caches' multipliers, picked by the sink's prefill, come back with the sink
    gen = tiny_fp8_attention
    cold_frames = frames(gen, presenter())
    gen.presenter_cache = PresenterCache(device_bytes=1 << 30, host_bytes=1 << 30)
    try:
        assert_same(frames(gen, presenter(), namespace="t"), cold_frames)
        hit = gen.open(presenter(), namespace="t")
        assert hit.presenter_cached
        assert_same([c.frames for c in hit], cold_frames)
    finally:
        gen.presenter_cache = None
