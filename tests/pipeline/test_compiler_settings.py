"""The compiler settings the glue and the decoder need (pipeline.model.fused.configure_compiler)
reach every graph, whichever thread compiles it: torch keeps a setting assigned to its config
per thread, and a stream compiles in several (the open's, the engine's decoder thread)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch._inductor.config as inductor
from torch._dynamo import register_backend

from pipeline.model import fused

SEEN: list[dict[str, Any]] = []
"""What each compile saw, in compile order (the probe backend's record)."""


@register_backend(name="longtake_settings_probe")
def _probe(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
    cfg = torch._dynamo.config
    limit = getattr(cfg, "recompile_limit", None) or cfg.cache_size_limit
    SEEN.append(
        {
            "thread": threading.current_thread().name,
            "deterministic": getattr(inductor, "deterministic", True),
            "recompile_limit": limit,
            "settings": {k: getattr(inductor, k) for k in ("fallback_random",)},
        }
    )
    return gm.forward


@pytest.fixture
def probed() -> Iterator[list[dict[str, Any]]]:
    SEEN.clear()
    fused.set_compile(True, devices=("cpu",), backend="longtake_settings_probe")
    try:
        yield SEEN
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


def test_a_graph_compiled_in_another_thread_gets_the_settings(probed):
    w = torch.ones(8)
    fused.rms_norm(torch.randn(2, 8), w, 1e-6)  # the function's first graph, in this thread
    # a new shape in a thread that never compiled before: a second graph, compiled there
    in_thread(lambda: fused.rms_norm(torch.randn(3, 8), w, 1e-6), "decoder-like")
    assert [s["thread"] for s in probed] == ["MainThread", "decoder-like"]
    for seen in probed:
        assert seen["deterministic"] is True, seen
        assert seen["recompile_limit"] >= fused.RECOMPILE_LIMIT, seen


def test_the_first_graph_compiled_in_another_thread_gets_the_settings(probed):
    in_thread(lambda: fused.rope(torch.randn(1, 4, 2, 8), torch.randn(4, 1, 4, 2)), "worker")
    assert len(probed) == 1 and probed[0]["deterministic"] is True


def test_extra_settings_reach_every_thread_and_a_change_compiles_again(probed):
    x, w = torch.randn(2, 8), torch.ones(8)
    fused.rms_norm(x, w, 1e-6)
    default = inductor.fallback_random
    fused.set_inductor_settings({"fallback_random": not default})
    fused.rms_norm(x, w, 1e-6)  # the same shape: compiled again under the new setting
    in_thread(lambda: fused.rms_norm(torch.randn(3, 8), w, 1e-6), "other")
    assert [s["settings"]["fallback_random"] for s in probed] == [default, not default, not default]
    assert probed[-1]["deterministic"] is True


def test_an_unknown_setting_is_refused():
    with pytest.raises(ValueError, match="no_such_setting"):
        fused.set_inductor_settings({"no_such_setting": 1})


def test_a_decoder_in_another_thread_compiles_with_the_settings(probed, tiny):
    """The engine decodes in a thread of its own: graphs the decoder compiles there (here a new
    frame size after the warm-up of another in this thread) get the settings too."""
    from pipeline import Generator
    from pipeline.vae import StreamingDecoder

    vae = Generator.from_preset("tiny", device="cpu", seed=5).components.vae  # not shared
    StreamingDecoder(vae, compiled=True).decode(torch.randn(16, 3, 8, 8))
    on_main = len(probed)
    in_thread(
        lambda: StreamingDecoder(vae, compiled=True).decode(torch.randn(16, 3, 8, 16)), "decoder"
    )
    assert on_main > 0 and len(probed) > on_main  # the second size compiled in the thread
    assert {s["thread"] for s in probed[on_main:]} == {"decoder"}
    assert all(s["deterministic"] is True for s in probed), probed
