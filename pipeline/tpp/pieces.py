"""Stream-state tensors split across ranks, and where a restoring rank finds its share.

The engine's state uses the single-device names (pipeline.state): `sink.latent`, `step.<i>.ring`,
`decoder.*`. A tensor whose layers are split between ranks is saved as pieces named
`<name>.layers.<a>-<b>` (layers a .. b-1 of the whole), one per rank. With whole steps per rank
every name is the single-device one, so such a checkpoint is also a single-device checkpoint.

A restoring rank reads what it needs from a `pipeline.state.TensorSource`: a checkpoint
directory (only the tensors it asks for are read from the shard files) or an in-memory state.
"""

from __future__ import annotations

import re

import torch

from pipeline import state as state_io

_PIECE = re.compile(r"^(?P<base>.+)\.layers\.(?P<a>\d+)-(?P<b>\d+)$")


def piece_name(base: str, layers: range, num_layers: int) -> str:
    if layers.start == 0 and layers.stop == num_layers:
        return base
    return f"{base}.layers.{layers.start}-{layers.stop}"


def parse_piece(name: str, num_layers: int) -> tuple[str, range]:
    """(whole tensor's name, the layers this tensor holds)."""
    m = _PIECE.match(name)
    if m is None:
        return name, range(0, num_layers)
    return m["base"], range(int(m["a"]), int(m["b"]))


def gather_layers(
    source: state_io.TensorSource, base: str, want: range, num_layers: int
) -> torch.Tensor:
    """Layers `want` of tensor `base` (dim 0 = layers), assembled from whichever pieces hold
    them. Raises ValueError if some layer is in no piece."""
    parts: list[tuple[range, str]] = []
    for name in source.names():
        whole, layers = parse_piece(name, num_layers)
        if whole == base:
            parts.append((layers, name))
    parts.sort(key=lambda p: p[0].start)
    out: list[torch.Tensor] = []
    at = want.start
    for layers, name in parts:
        if at >= want.stop:
            break
        if layers.start <= at < layers.stop:
            upto = min(want.stop, layers.stop)
            out.append(source.get(name)[at - layers.start : upto - layers.start])
            at = upto
    if at < want.stop:
        raise ValueError(f"the state has no {base} for layer {at}")
    return out[0] if len(out) == 1 else torch.cat(out)
