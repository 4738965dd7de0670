"""Loading an original-format state dict into a module whose tensor names differ.

Names and shapes are first checked against the release's own table (specs.py), so errors
speak of the names in the user's file; then each tensor is renamed and copied in place.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import torch
from torch import nn

from .errors import KeyMismatchError, ShapeMismatchError, name_list
from .module_tensors import ModuleTensors, meta_leftovers
from .specs import TensorSpec
from .streaming import CopyStats


def check_against_specs(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, TensorSpec], source: str
) -> None:
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    if missing or unexpected:
        raise KeyMismatchError(source, missing=missing, unexpected=unexpected)
    wrong = [
        f"{name} {list(state[name].shape)} (expected {list(spec.shape)})"
        for name, spec in expected.items()
        if tuple(state[name].shape) != spec.shape
    ]
    if wrong:
        raise ShapeMismatchError(
            f"{source}: {len(wrong)} tensors have the wrong shape: " + (name_list(wrong))
        )


def load_renamed(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, TensorSpec],
    rename: Callable[[str], str],
    module: nn.Module,
    device: torch.device,
    source: str,
) -> CopyStats:
    """Copy `state` (original names) into `module` (names given by `rename`)."""
    start = time.perf_counter()
    check_against_specs(state, expected, source)
    targets = ModuleTensors(module, source)
    renamed = {rename(name): name for name in state}
    targets.check_names(set(renamed))
    for new, old in renamed.items():
        targets.check_shape(new, tuple(state[old].shape), source)
    nbytes = 0
    for new, old in renamed.items():
        tensor = state[old]
        targets.fill(new, device, lambda dst, t=tensor: dst.copy_(t))
        nbytes += tensor.numel() * tensor.element_size()
    targets.require_complete()
    left = meta_leftovers(module)
    if left:
        raise RuntimeError(
            f"{source}: loaded, but these tensors are still unset: {name_list(left)}"
        )
    return CopyStats(len(state), nbytes, time.perf_counter() - start)
