"""Filling a module's parameters and buffers one tensor at a time.

A target module is either materialised (its tensors already live on some device: we copy into
them) or built on the meta device (no storage yet: we allocate each tensor on the target device
in the dtype the module declared, fill it, and put it in place). Either way each tensor is
written exactly once, so a 14B model never needs a second full copy anywhere.

Tied tensors (the same Parameter reachable under two names, e.g. UMT5's `shared.weight` and
`encoder.embed_tokens.weight`) are filled once and stay tied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .errors import KeyMismatchError, ShapeMismatchError


@dataclass
class _Slot:
    names: list[str]  # every state-dict name that reaches this tensor; names[0] is canonical
    owners: list[tuple[nn.Module, str]]  # (module, attribute) pairs holding it
    is_param: bool
    tensor: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)


class ModuleTensors:
    """The persistent tensors of `module` (its state dict), addressable by name."""

    def __init__(self, module: nn.Module, source: str) -> None:
        self.module = module
        self.source = source  # named in error messages: which file feeds this module
        self._slots: dict[str, _Slot] = {}
        by_id: dict[int, _Slot] = {}
        wanted = set(module.state_dict(keep_vars=True))
        for prefix, sub in module.named_modules(remove_duplicate=False):
            for attr, tensor in list(sub._parameters.items()) + list(sub._buffers.items()):
                name = f"{prefix}.{attr}" if prefix else attr
                if tensor is None or name not in wanted:
                    continue
                slot = by_id.get(id(tensor))
                if slot is None:
                    is_param = attr in sub._parameters
                    slot = by_id[id(tensor)] = _Slot([], [], is_param, tensor)
                slot.names.append(name)
                slot.owners.append((sub, attr))
                self._slots[name] = slot
        self._filled: set[int] = set()

    def names(self) -> set[str]:
        return set(self._slots)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._slots[name].shape

    def dtype(self, name: str) -> torch.dtype:
        return self._slots[name].tensor.dtype

    def get(self, name: str) -> torch.Tensor:
        return self._slots[name].tensor

    def check_names(self, names: set[str]) -> None:
        """Raise if `names` (what a checkpoint holds) differs from what the module needs.

        A checkpoint may name only one of several tied aliases.
        """
        unexpected = names - set(self._slots)
        covered = {id(self._slots[n]) for n in names if n in self._slots}
        missing = {s.names[0] for s in self._slots.values() if id(s) not in covered}
        if missing or unexpected:
            raise KeyMismatchError(self.source, missing=missing, unexpected=unexpected)

    def check_shape(self, name: str, shape: tuple[int, ...], where: str) -> None:
        expected = self._slots[name].shape
        if tuple(shape) != expected:
            raise ShapeMismatchError(
                f"{where}: tensor {name} has shape {list(shape)}, the model expects "
                f"{list(expected)}"
            )

    def fill(
        self,
        name: str,
        device: torch.device,
        write: Callable[[torch.Tensor], None],
    ) -> torch.Tensor:
        """Give tensor `name` its data: `write(dst)` must fill `dst` completely.

        For a materialised tensor `dst` is the tensor itself; for a meta tensor it is a fresh
        tensor on `device` with the declared dtype, installed under every alias afterwards.
        """
        slot = self._slots[name]
        old = slot.tensor
        if old.device.type != "meta":
            with torch.no_grad():
                write(old)
            self._filled.add(id(slot))
            return old
        new = torch.empty(old.shape, dtype=old.dtype, device=device)
        with torch.no_grad():
            write(new)
        installed: torch.Tensor = (
            nn.Parameter(new, requires_grad=old.requires_grad) if slot.is_param else new
        )
        for owner, attr in slot.owners:
            if slot.is_param:
                owner._parameters[attr] = installed  # type: ignore[assignment]
            else:
                owner._buffers[attr] = installed
        slot.tensor = installed
        self._filled.add(id(slot))
        return installed

    def unfilled(self) -> set[str]:
        return {s.names[0] for s in self._slots.values() if id(s) not in self._filled}

    def require_complete(self) -> None:
        missing = self.unfilled()
        if missing:
            raise KeyMismatchError(self.source, missing=missing)


def meta_leftovers(module: nn.Module) -> list[str]:
    """Parameters and buffers still on the meta device (non-persistent buffers included)."""
    left = [n for n, p in module.named_parameters() if p.device.type == "meta"]
    left += [n for n, b in module.named_buffers() if b.device.type == "meta"]
    return left


@contextmanager
def building(device: str | torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Construct modules on `device` with floating tensors in `dtype` (no cast afterwards)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)
