"""The compiler settings the glue and the decoder need reach every graph, whichever thread
compiles it and whatever compiled before it.

Two ways torch loses a setting assigned to its config: it keeps the assignment per thread (a
stream compiles in several: the open's, the engine's decoder thread), and dynamo, after
tracing a frame, restores torch's deterministic-algorithms flag, which sets inductor's
`deterministic` along with it. So the dynamo settings are applied in each thread before its
compiles (`fused.configure_compiler`), and inductor's are handed to torch.compile itself
(`fused.compile_options`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch._inductor.compile_fx
from torch._dynamo import register_backend

from pipeline.model import fused

SEEN: list[dict[str, Any]] = []
"""What each compile saw, in compile order (the probe backend's record)."""


@register_backend(name="longtake_settings_probe")
def _probe(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
    cfg = torch._dynamo.config
    limit = getattr(cfg, "recompile_limit", None) or cfg.cache_size_limit
    SEEN.append({"thread": threading.current_thread().name, "recompile_limit": limit})
    return gm.forward


@pytest.fixture
def probed() -> Iterator[list[dict[str, Any]]]:
    """Compiles on the CPU go to the probe backend."""
    SEEN.clear()
    fused.set_compile(True, devices=("cpu",), backend="longtake_settings_probe")
    try:
        yield SEEN
    finally:
        fused.set_compile(True)


@pytest.fixture
def inductor_asked(monkeypatch) -> Iterator[list[dict[str, Any]]]:
    """Compiles on the CPU go to inductor's torch.compile entry, which records the settings it
    is asked to compile with (its `config_patches`) and runs the graph as traced."""
    asked: list[dict[str, Any]] = []

    def record(gm: torch.fx.GraphModule, inputs: Any, **kwargs: Any) -> Callable[..., Any]:
        patches = dict(kwargs.get("config_patches") or {})
        asked.append({"thread": threading.current_thread().name, **patches})
        return gm.forward

    monkeypatch.setattr(torch._inductor.compile_fx, "compile_fx", record)
    fused.set_compile(True, devices=("cpu",), backend="inductor")
    try:
        yield asked
    finally:
        fused.set_compile(True)
        fused.set_inductor_settings({})


def in_thread(fn: Callable[[], Any], name: str) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)

    t = threading.Thread(target=run, name=name)
    t.start()
    t.join()
    if errors:
        raise errors[0]


def test_a_graph_compiled_in_another_thread_gets_the_recompile_limit(probed):
    w = torch.ones(8)
    fused.rms_norm(torch.randn(2, 8), w, 1e-6)  # the function's first graph, in this thread
    # a new shape in a thread that never compiled before: a second graph, compiled there
    in_thread(lambda: fused.rms_norm(torch.randn(3, 8), w, 1e-6), "decoder-like")
    assert [s["thread"] for s in probed] == ["MainThread", "decoder-like"]
    assert all(s["recompile_limit"] >= fused.RECOMPILE_LIMIT for s in probed), probed


def test_every_inductor_compile_is_asked_for_deterministic_mode(inductor_asked):
    w = torch.ones(8)
    fused.rms_norm(torch.randn(2, 8), w, 1e-6)
    # after a compile, this thread's own setting is gone (dynamo's restore of torch's flag)
    fused.rms_norm(torch.randn(3, 8), w, 1e-6)
    fused.gated_residual(torch.randn(2, 8), torch.randn(2, 8), torch.randn(8))
    in_thread(lambda: fused.rms_norm(torch.randn(4, 8), w, 1e-6), "other")
    assert [a["thread"] for a in inductor_asked] == ["MainThread"] * 3 + ["other"]
    assert all(a.get("deterministic") is True for a in inductor_asked), inductor_asked


def test_extra_settings_reach_every_compile_and_a_change_compiles_again(inductor_asked):
    import torch._inductor.config as inductor

    x, w = torch.randn(2, 8), torch.ones(8)
    fused.rms_norm(x, w, 1e-6)
    flipped = not inductor.fallback_random
    fused.set_inductor_settings({"fallback_random": flipped})
    fused.rms_norm(x, w, 1e-6)  # the same shape: compiled again under the new setting
    in_thread(lambda: fused.rms_norm(torch.randn(3, 8), w, 1e-6), "other")
    assert "fallback_random" not in inductor_asked[0]
    assert [a["fallback_random"] for a in inductor_asked[1:]] == [flipped, flipped]
    assert all(a["deterministic"] is True for a in inductor_asked)


def test_an_unknown_setting_is_refused():
    with pytest.raises(ValueError, match="no_such_setting"):
        fused.set_inductor_settings({"no_such_setting": 1})


def test_a_decoder_in_another_thread_compiles_with_the_settings(tiny, probed, monkeypatch):
    """The engine decodes in a thread of its own: graphs the decoder compiles there (here a new
    frame size after the warm-up of another in this thread) get the settings too, and a
    decoder compiled with inductor is asked for deterministic mode."""
    from pipeline import Generator
    from pipeline import vae as vae_mod
    from pipeline.vae import StreamingDecoder

    vae = Generator.from_preset("tiny", device="cpu", seed=5).components.vae  # not shared
    StreamingDecoder(vae, compiled=True).decode(torch.randn(16, 3, 8, 8))
    on_main = len(probed)
    in_thread(
        lambda: StreamingDecoder(vae, compiled=True).decode(torch.randn(16, 3, 8, 16)), "decoder"
    )
    assert on_main > 0 and len(probed) > on_main  # the second size compiled in the thread
    assert {s["thread"] for s in probed[on_main:]} == {"decoder"}
    assert all(s["recompile_limit"] >= fused.RECOMPILE_LIMIT for s in probed), probed

    asked: list[dict[str, Any]] = []
    monkeypatch.setattr(
        torch._inductor.compile_fx,
        "compile_fx",
        lambda gm, inputs, **kw: asked.append(dict(kw.get("config_patches") or {})) or gm.forward,
    )
    fused.set_compile(True, devices=("cpu",), backend="inductor")
    eager = StreamingDecoder(vae)
    eager.decode(torch.randn(16, 2, 8, 8))  # the frames before the compiled steady state
    frame = torch.randn(1, vae.config.z_dim, 1, 8, 8)  # a latent frame after post_quant_conv
    in_thread(lambda: vae_mod.compiled_decoder(vae)(frame, list(eager._cache)), "decoder")
    assert asked and all(a.get("deterministic") is True for a in asked), asked
