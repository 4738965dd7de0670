"""Online decode: decoding block by block equals one `vae.decode()` of the whole latent video."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.vae import StreamingDecoder, denormalize_latents


@pytest.fixture(scope="module")
def vae(tiny):
    return tiny.components.vae


def one_shot(vae, latents: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vae.decode(denormalize_latents(vae, latents.unsqueeze(0))).sample


@pytest.mark.parametrize("splits", [[1, 3, 3, 3, 3, 3], [7, 3, 3, 3, 3], [2, 1, 5, 4, 6]])
def test_streaming_decode_equals_one_shot_bit_for_bit(vae, splits):
    torch.manual_seed(0)
    latents = torch.randn(16, sum(splits), 8, 8)
    decoder = StreamingDecoder(vae)
    pieces, at = [], 0
    for n in splits:
        pieces.append(decoder.decode(latents[:, at : at + n]))
        at += n
    streamed = torch.cat(pieces, dim=2)
    reference = one_shot(vae, latents)
    assert streamed.shape == reference.shape == (1, 3, 1 + 4 * (sum(splits) - 1), 64, 64)
    assert torch.equal(streamed, reference)


def test_decoder_state_resumes_exactly(vae):
    torch.manual_seed(1)
    latents = torch.randn(16, 13, 8, 8)
    whole = StreamingDecoder(vae)
    expected = [
        whole.decode(latents[:, :7]),
        whole.decode(latents[:, 7:10]),
        whole.decode(latents[:, 10:]),
    ]

    first = StreamingDecoder(vae)
    first.decode(latents[:, :7])
    first.decode(latents[:, 7:10])
    tensors, meta = first.state_dict()
    tensors = {k: v.clone() for k, v in tensors.items()}

    resumed = StreamingDecoder(vae)
    resumed.load_state_dict(tensors, meta)
    assert torch.equal(resumed.decode(latents[:, 10:]), expected[2])


def test_decoder_cache_does_not_grow(vae):
    decoder = StreamingDecoder(vae)
    decoder.decode(torch.randn(16, 7, 8, 8))
    sizes = []
    for _ in range(5):
        decoder.decode(torch.randn(16, 3, 8, 8))
        sizes.append(decoder.nbytes())
    assert len(set(sizes)) == 1 and sizes[0] > 0


def test_offline_stream_equals_online_stream(tiny):
    from tests.pipeline.conftest import request

    req = request(seconds=2.0, num_clips=3)
    online = [c.frames for c in tiny.open(req)]
    offline = [c.frames for c in tiny.open(req, decode="offline")]
    assert len(online) == len(offline) == 3
    for a, b in zip(online, offline, strict=True):
        assert a.dtype == np.uint8 and a.shape == (24, 64, 64, 3)
        assert np.array_equal(a, b)


@pytest.mark.slow
def test_compiled_decoder_runs_one_graph_per_stream_position(tmp_path, monkeypatch):
    """The compiled decoder (as on a GPU: channels-last, torch.compile) picks its graph by where
    the stream stands, not by what the process decoded before: its graphs are all compiled,
    in a fixed order, before its first frame, and a later stream and a stream resumed from a
    saved state run the graphs the first one ran, so they give the same frames. (On an H200
    a graph of its own for a restored cache entry's strides, and graphs compiled in another
    order, gave a resumed stream other frames.)"""
    from torch._dynamo.utils import counters

    from pipeline import Generator
    from pipeline.vae import use_channels_last

    # a compile cache of its own: no steady graph saved by an earlier run to load
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    vae = Generator.from_preset("tiny", device="cpu", seed=7).components.vae  # not shared
    use_channels_last(vae)
    torch._dynamo.reset()
    torch.manual_seed(2)
    latents = torch.randn(16, 2 + 3 * 4, 8, 8)
    prime, blocks = latents[:, :2], [latents[:, 2 + 3 * i : 5 + 3 * i] for i in range(4)]

    def graphs() -> int:
        return counters["stats"]["unique_graphs"]

    def stream(restore_at: int | None = None) -> list[torch.Tensor]:
        decoder = StreamingDecoder(vae, channels_last=True, compiled=True)
        decoder.decode(prime)
        out = []
        for i, z in enumerate(blocks):
            if i == restore_at:
                tensors, meta = decoder.state_dict()
                tensors = {k: v.clone() for k, v in tensors.items()}  # dense, as from disk
                decoder = StreamingDecoder(vae, channels_last=True, compiled=True)
                decoder.load_state_dict(tensors, meta)
            out.append(decoder.decode(z))
        assert decoder.compiled  # no fallback to the eager decoder
        return out

    before = graphs()
    StreamingDecoder(vae, channels_last=True, compiled=True).decode(prime[:, :1])
    compiled = graphs() - before
    # the steady state's graph, there before frame one (the first two frames run eagerly)
    assert compiled == 1
    first = stream()
    assert all(torch.equal(a, b) for a, b in zip(stream(), first, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(stream(restore_at=2), first, strict=True))
    assert graphs() - before == compiled


def test_decoder_never_compares_a_tensor_with_a_string(vae, monkeypatch):
    """The temporal upsamplers' "seen one frame" marker is told from a cached tensor by type.
    (Comparing a tensor with the marker string is an op torch 2.11's compiler cannot trace: it
    broke the compiled decoder into a graph per module and shape, ~30 in all, whose warm-up
    took ~19 s of every process's first open on an H200.)"""
    eq, ne = torch.Tensor.__eq__, torch.Tensor.__ne__

    def strict(op):
        def compare(self, other):
            if isinstance(other, str):
                raise AssertionError(f"a tensor compared with {other!r}")
            return op(self, other)

        return compare

    monkeypatch.setattr(torch.Tensor, "__eq__", strict(eq))
    monkeypatch.setattr(torch.Tensor, "__ne__", strict(ne))
    decoder = StreamingDecoder(vae)
    for n in (1, 1, 3, 3):  # the first frame, the second, then steady ones
        decoder.decode(torch.randn(16, n, 8, 8))
    assert decoder.frames_decoded == 8


def test_compiled_decoder_and_glue_choose_kernels_without_timing_them(vae):
    """Kernels chosen by timing candidates on the GPU depend on what else runs meanwhile (a
    resumed process's decoder compiles while its checkpoint streams in): every process must
    compile the same kernels for the same graphs, so the compiler's deterministic mode is on
    before the decoder or the glue compiles anything, in whichever thread (torch keeps the
    setting per thread; tests/pipeline/test_compiler_settings.py follows compiles into
    threads)."""
    import threading

    import torch._inductor.config as inductor

    from pipeline.model import fused
    from pipeline.vae import compiled_decoder

    seen: dict[str, object] = {}

    def fresh_thread() -> None:
        compiled_decoder(vae)
        fused.configure_compiler()
        seen["deterministic"] = inductor.deterministic
        seen["limit"] = getattr(torch._dynamo.config, "recompile_limit", None)

    t = threading.Thread(target=fresh_thread)
    t.start()
    t.join()
    assert seen["deterministic"] is True
    assert isinstance(seen["limit"], int) and seen["limit"] >= fused.RECOMPILE_LIMIT


def test_the_steady_graph_is_looked_up_once_per_frame_size(vae, monkeypatch):
    """Finding a saved graph hashes the decoder's weights' and inputs' layouts (~0.5 ms): a
    decoder does it once per frame size, not at every frame of the stream."""
    from pipeline import vae as vae_mod

    looked_up: list[tuple[int, ...]] = []

    def lookup(v, x, cache):
        looked_up.append(tuple(x.shape))
        return lambda frame, entries: vae_mod.decode_frame(v.decoder, frame, entries)

    monkeypatch.setattr(vae_mod, "precompiles", lambda: True)
    monkeypatch.setattr(vae_mod, "precompiled", lookup)
    decoder = StreamingDecoder(vae, compiled=True)
    monkeypatch.setattr(decoder, "warm_up", lambda *a: None)
    for n in (2, 3, 3, 3):
        decoder.decode(torch.randn(16, n, 8, 8))
    assert decoder.compiled and decoder.frames_decoded == 11
    assert looked_up == [looked_up[0]]  # nine steady frames, one look-up


def test_canonical_cache_entries_keep_their_values():
    """The compiled decoder's inputs are handed canonical strides; the values must not change,
    whatever the order an entry's memory is in. (A temporal upsampler's cache, made by a
    concatenation along time, can be stored time-major; giving it the default strides by
    reinterpreting its memory permuted its values, on every frame of a compiled stream, while
    a stream restored from disk read them right: its frames differed, on an H200.)"""
    from pipeline.vae import _canonical, _dense_strides

    torch.manual_seed(3)
    base = torch.randn(1, 6, 2, 5, 7)
    time_major = base.permute(0, 2, 1, 3, 4).contiguous().permute(0, 2, 1, 3, 4)
    channels_last = base.contiguous(memory_format=torch.channels_last_3d)
    sliced = torch.randn(1, 6, 4, 5, 7)[:, :, -2:]
    one_frame = torch.randn(1, 6, 1, 5, 7)
    odd_size_one = one_frame.as_strided(one_frame.shape, (210, 35, 999, 7, 1))
    for t in (base, time_major, channels_last, sliced, one_frame, odd_size_one):
        for cl, layout in ((False, torch.contiguous_format), (True, torch.channels_last_3d)):
            c = _canonical(t, cl)
            assert torch.equal(c, t)
            assert c.stride() == _dense_strides(tuple(t.shape), layout)
    assert time_major.stride() != base.stride() and torch.equal(time_major, base)


def test_compiled_decoder_inputs_have_one_layout_whatever_made_them(vae):
    """Every tensor the compiled steady-frame graph receives is dense in the decoder's layout,
    whether the eager prime, the graph itself or a restored state made it: the strides of each
    input are a function of its shape. (A saved graph accepts only the strides it was compiled
    for; on an H200 a cache entry that a concatenation left time-major reached it in the
    default layout instead of channels-last, and it was refused.)"""
    from pipeline.vae import _dense_strides

    torch.manual_seed(4)
    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def spy(decoder: StreamingDecoder) -> StreamingDecoder:
        decoder.compiled = True  # the compiled path's inputs, decoded by the eager decoder
        eager = decoder._eager

        def steady(x, cache):
            for t in (x, *cache):
                if isinstance(t, torch.Tensor):
                    seen.append((tuple(t.shape), t.stride()))
            return eager(x, cache)

        decoder._steady = lambda x, cache: steady  # noqa: ARG005
        decoder.warm_up = lambda *a: None  # noqa: ARG005
        return decoder

    for channels_last in (True, False):
        seen.clear()
        first = spy(StreamingDecoder(vae, channels_last=channels_last))
        first.decode(torch.randn(16, 5, 8, 8))
        tensors, meta = first.state_dict()
        resumed = spy(StreamingDecoder(vae, channels_last=channels_last))
        resumed.load_state_dict({k: v.clone() for k, v in tensors.items()}, meta)
        resumed.decode(torch.randn(16, 3, 8, 8))
        layout = torch.channels_last_3d if channels_last else torch.contiguous_format
        assert len(seen) > 20
        assert all(stride == _dense_strides(shape, layout) for shape, stride in seen)


@pytest.mark.slow
def test_compiled_decoder_repeats_the_eager_decoder_bit_for_bit():
    """Compiled with dynamo's eager backend (the same graphs, run without code generation),
    the compiled path, canonical strides and all, must give the eager decoder's frames, also
    across a saved and restored state."""
    from pipeline import Generator
    from pipeline.model import fused

    vae = Generator.from_preset("tiny", device="cpu", seed=11).components.vae  # not shared
    torch._dynamo.reset()
    torch.manual_seed(4)
    latents = torch.randn(16, 2 + 3 * 4, 8, 8)
    prime, blocks = latents[:, :2], [latents[:, 2 + 3 * i : 5 + 3 * i] for i in range(4)]

    def stream(compiled: bool, restore_at: int | None = None) -> list[torch.Tensor]:
        decoder = StreamingDecoder(vae, compiled=compiled)
        decoder.decode(prime)
        out = []
        for i, z in enumerate(blocks):
            if i == restore_at:
                tensors, meta = decoder.state_dict()
                tensors = {k: v.contiguous() for k, v in tensors.items()}  # as from disk
                decoder = StreamingDecoder(vae, compiled=compiled)
                decoder.load_state_dict(tensors, meta)
            out.append(decoder.decode(z))
        assert decoder.compiled == compiled
        return out

    eager = stream(False)
    fused.set_compile(True, devices=("cpu",), backend="eager")
    try:
        for restore_at in (None, 2):
            got = stream(True, restore_at)
            assert all(torch.equal(a, b) for a, b in zip(got, eager, strict=True))
    finally:
        fused.set_compile(True)
