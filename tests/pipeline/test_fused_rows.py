"""The compiled glue's row reductions (pipeline.model.fused.set_persistent_rows): inductor's
heuristics replaced through its own configuration, part of its cache key, and put back."""

from __future__ import annotations

import pytest
import torch
import torch._inductor.config as inductor
from torch._inductor.choices import InductorChoices
from torch._inductor.virtualized import V

from pipeline.model import fused


@pytest.fixture
def restored():
    yield
    fused.set_persistent_rows(False)


@pytest.mark.skipif(
    not hasattr(inductor, "inductor_choices_class"), reason="this torch has no heuristics seam"
)
def test_long_rows_are_held_whole_while_it_is_on(restored):
    assert fused.set_persistent_rows(True)
    choices = inductor.inductor_choices_class()
    assert isinstance(choices, InductorChoices)
    assert type(V.choices) is type(choices)  # this thread's handler too
    # the override is what differs from inductor's own heuristics, and the cache key says so
    assert type(choices).should_use_persistent_reduction is not (
        InductorChoices.should_use_persistent_reduction
    )
    assert str(fused.PERSISTENT_ROW_MAX) in choices.uuid()
    assert fused.PERSISTENT_ROW_MAX >= 13824  # the 14B FFN's rows

    assert fused.set_persistent_rows(False)
    assert inductor.inductor_choices_class is None
    assert type(V.choices) is InductorChoices


@pytest.mark.skipif(
    not hasattr(inductor, "inductor_choices_class"), reason="this torch has no heuristics seam"
)
def test_functions_compile_again_after_a_change(restored):
    """A compiled glue function made before the change is not kept (it would hold kernels
    chosen by the other heuristics)."""
    fused.set_compile(True, devices=("cpu",), backend="eager")
    try:
        x = torch.randn(2, 8)
        w = torch.ones(8)
        fused.rms_norm(x, w, 1e-6)
        before = fused.graphs_compiled()
        fused.set_persistent_rows(True)
        fused.rms_norm(x, w, 1e-6)
        assert fused.graphs_compiled() == before + 1
    finally:
        fused.set_compile(True)
