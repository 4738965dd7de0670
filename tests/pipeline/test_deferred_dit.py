"""A generator whose DiT is still loading: streams open meanwhile, do their other work first, and
render what a generator built whole renders; a failed load fails the open and loads again. The
DiT's compiled glue is made before the DiT is there (pipeline/warm_up.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from pipeline import Generator
from pipeline import state as state_io
from pipeline.components import build_deferred
from pipeline.model import fused
from pipeline.presets import get_preset
from tests.pipeline.conftest import request

WAIT_S = 120  # a bound on conditions, never a sleep


def deferred(prepare=None) -> Generator:
    preset = get_preset("tiny")
    comps = build_deferred(
        preset, torch.device("cpu"), torch.float32, "bf16", seed=0, prepare=prepare
    )
    return Generator(preset, comps)


def test_a_deferred_dit_renders_the_frames_of_a_generator_built_whole(tiny, tmp_path):
    req = request(seconds=3.0, num_clips=3)
    want = [c.frames for c in tiny.open(req)]
    gen = Generator.from_preset("tiny", device="cpu", defer_dit=True)
    assert gen.precision == "bf16"  # known before the DiT is there
    stream = gen.open(req)
    got = [next(stream).frames]
    stream.checkpoint(tmp_path / "ckpt")
    got += [c.frames for c in stream]
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w)
    # and a resume on another deferred generator continues exactly
    again = Generator.from_preset("tiny", device="cpu", defer_dit=True)
    rest = [c.frames for c in again.open(req, resume_from=tmp_path / "ckpt")]
    for g, w in zip(rest, want[1:], strict=True):
        assert np.array_equal(g, w)


@pytest.mark.parametrize("resume", [False, True])
def test_the_open_encodes_reads_and_primes_before_it_waits_for_the_dit(tiny, tmp_path, resume):
    req = request(seconds=3.0, num_clips=3)
    checkpoint = None
    if resume:
        stream = tiny.open(req)
        next(stream)
        checkpoint = tmp_path / "ckpt"
        stream.checkpoint(checkpoint)
    gate = threading.Event()

    def held(_dit: object) -> None:  # the DiT's load ends when the test says so
        assert gate.wait(WAIT_S)

    gen = deferred(prepare=held)
    comps = gen.components
    assert comps.dit_loading is not None
    seen: dict[str, int] = {"text": 0, "decoder": 0}
    comps.text_encoder.register_forward_hook(lambda *a: seen.__setitem__("text", 1))
    # the decoder runs a frame at a time through its modules (pipeline.vae.decode_frame)
    comps.vae.decoder.conv_in.register_forward_hook(lambda *a: seen.__setitem__("decoder", 1))
    opened: list[object] = []
    failed: list[BaseException] = []

    def open_it() -> None:
        try:
            opened.append(gen.open(req, resume_from=checkpoint))
        except BaseException as exc:  # reported below
            failed.append(exc)

    opener = threading.Thread(target=open_it)
    opener.start()
    try:
        assert comps.dit_loading.waiting.wait(WAIT_S), "the open never waited for the DiT"
        assert not opened and not failed  # it waits: the DiT is not there
        # the prompt was encoded first (a resume reads it from the state)
        assert seen["text"] == (0 if resume else 1)
        # a fresh stream primed its decoder; a resumed one restored it (no decode needed)
        assert seen["decoder"] == (0 if resume else 1)
    finally:
        gate.set()
        opener.join(WAIT_S)
    assert not failed, failed
    stream = opened[0]
    assert "dit_wait" in stream.open_seconds
    frames = [c.frames for c in stream]
    want = [c.frames for c in tiny.open(req)][1 if resume else 0 :]
    for g, w in zip(frames, want, strict=True):
        assert np.array_equal(g, w)


def test_a_dit_that_fails_to_load_fails_the_open_and_loads_again_at_the_next():
    attempts: list[int] = []

    def flaky(_dit: object) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("the disk went away")

    gen = deferred(prepare=flaky)
    req = request(seconds=1.0, num_clips=1)
    with pytest.raises(OSError, match="the disk went away"):
        gen.open(req)
    clips = list(gen.open(req))  # the second wait loaded it again
    assert len(clips) == 1 and len(attempts) == 2


def test_a_resume_of_another_precision_is_refused_before_the_dit_is_there(tiny, tmp_path):
    stream = tiny.open(request(seconds=2.0, num_clips=2))
    next(stream)
    stream.checkpoint(tmp_path / "ckpt")
    gate = threading.Event()
    preset = get_preset("tiny")
    comps = build_deferred(
        preset, torch.device("cpu"), torch.float32, "fp8", prepare=lambda d: gate.wait(WAIT_S)
    )
    gen = Generator(preset, comps)
    try:
        assert gen.precision == "fp8"
        with pytest.raises(state_io.PrecisionMismatch):
            gen.open(request(seconds=2.0, num_clips=2), resume_from=tmp_path / "ckpt")
        assert not comps.dit_loading.waiting.is_set()
    finally:
        gate.set()


@pytest.fixture
def glue_compiled_on_cpu() -> Iterator[None]:
    """The glue compiled on the CPU with dynamo's eager backend: the graphs a GPU would make,
    counted, without code generation."""
    from pipeline import warm_up

    torch._dynamo.reset()
    warm_up._WARMED.clear()
    fused.set_compile(True, devices=("cuda", "cpu"), backend="eager")
    try:
        yield
    finally:
        fused.set_compile(True)
        torch._dynamo.reset()
        warm_up._WARMED.clear()


def test_the_warm_up_makes_every_graph_a_stream_runs(glue_compiled_on_cpu, tmp_path):
    gen = deferred()
    req = request(seconds=3.0, num_clips=3)
    before = fused.graphs_compiled()
    stream = gen.open(req)
    assert stream.open_seconds["dit_warm_up"] > 0
    warmed = fused.graphs_compiled()
    assert warmed > before  # the glue did compile here
    first = next(stream)  # the first clip, the adaptive sink, and a steady clip: nothing new
    stream.checkpoint(tmp_path / "ckpt")
    rest = [c.frames for c in stream]
    assert fused.graphs_compiled() == warmed
    resumed = [c.frames for c in gen.open(req, resume_from=tmp_path / "ckpt")]
    assert fused.graphs_compiled() == warmed
    for g, w in zip(resumed, rest, strict=True):
        assert np.array_equal(g, w)
    assert first.index == 0


def test_an_fp8_dit_is_quantised_in_its_loading_thread():
    req = request(seconds=1.0, num_clips=1)
    whole = Generator.from_preset("tiny", device="cpu", precision="fp8")
    want = [c.frames for c in whole.open(req)]
    gen = Generator.from_preset("tiny", device="cpu", precision="fp8", defer_dit=True)
    assert gen.precision == "fp8"
    got = [c.frames for c in gen.open(req)]
    assert gen.components.dit is not None and gen.components.dit.precision == "fp8"
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w)


def test_the_build_says_what_each_part_took():
    """Where a worker's start goes (benchmarks report it): every part built in the calling
    thread is timed; a deferred DiT is timed by its loader instead."""
    gen = deferred()
    built = gen.components.build_seconds
    assert set(built) == {"empty", "text", "audio", "vae"}
    assert all(s >= 0 for s in built.values())
    gen.components.wait_dit()
    whole = Generator.from_preset("tiny", random_weights=True).components.build_seconds
    assert set(whole) == {"empty", "dit", "text", "audio", "vae"}


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_a_dit_load_started_ahead_gives_the_dit_from_preset_builds(precision):
    """A worker starts its DiT's load before importing the rest (pipeline.dit_loading): the
    generator built on that load holds the very DiT a plain build makes, FP8 conversion
    included."""
    from pipeline.dit_loading import start_preset_dit

    loading = start_preset_dit("tiny", device="cpu", precision=precision)
    ahead = Generator.from_preset("tiny", device="cpu", precision=precision, dit_loading=loading)
    assert ahead.components.dit_loading is loading  # used, not started again
    plain = Generator.from_preset("tiny", device="cpu", precision=precision)
    got = ahead.components.wait_dit().state_dict()
    want = plain.components.wait_dit().state_dict()
    assert got.keys() == want.keys()
    for name, t in want.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name
    assert ahead.precision == precision


def test_a_dit_load_of_another_precision_or_device_is_refused():
    from pipeline.dit_loading import start_preset_dit

    loading = start_preset_dit("tiny", device="cpu", precision="fp8")
    with pytest.raises(ValueError, match="not the one asked for"):
        Generator.from_preset("tiny", device="cpu", precision="bf16", dit_loading=loading)
    loading.result()  # its thread done before the test ends


def test_a_release_preset_without_a_release_is_refused_before_any_load_starts():
    from pipeline.dit_loading import start_preset_dit

    with pytest.raises(ValueError, match="needs checkpoint_dir"):
        start_preset_dit("liveavatar-14b", device="cpu", precision="bf16")
