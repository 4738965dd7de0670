"""A package's exports imported on first use (a module-level `__getattr__`, PEP 562), so that
importing a light module of the package does not import what its heavy ones need."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def exports(package: str, table: Mapping[str, str]) -> Callable[[str], Any]:
    """The `__getattr__` of `package`: each name of `table` is imported, at its first use,
    from the module the table gives (absolute, or relative to `package` with a leading dot)."""

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(table[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
