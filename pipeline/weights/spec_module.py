"""A bare module whose tensors have exactly the names and shapes of a release table.

Loading depends on names, shapes and dtypes only, so this stand-in lets the load benchmark and
the loader's own tests run the full 14B layout without the model code or its compute.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .specs import Shape


def module_from_shapes(
    shapes: Mapping[str, Shape], dtype: torch.dtype, device: str | torch.device = "meta"
) -> nn.Module:
    root = nn.Module()
    for name, shape in shapes.items():
        *path, leaf = name.split(".")
        module = root
        for part in path:
            if part not in module._modules:
                module.add_module(part, nn.Module())
            module = module._modules[part]  # type: ignore[assignment]
        tensor = torch.empty(shape, dtype=dtype, device=device)
        module.register_parameter(leaf, nn.Parameter(tensor, requires_grad=False))
    return root
