"""Reading the original `.pth` state dicts (umT5 encoder, Wan VAE).

`torch.load(mmap=True, weights_only=True)` reads only the zip directory and the pickle: tensor
data stays on disk until a tensor is copied, so listing shapes is instant and loading touches
each byte once. weights_only refuses pickled code, which a downloaded file must never run.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch

from .errors import CorruptFileError, MissingFileError


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict in `path`, memory-mapped; raises a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: file not found")
    if not zipfile.is_zipfile(path):
        raise CorruptFileError(
            f"{path}: not a PyTorch zip checkpoint (truncated or corrupt download?); "
            "download it again"
        )
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, pickle errors, EOFError, ...
        raise CorruptFileError(
            f"{path}: cannot be read as a PyTorch state dict ({type(exc).__name__}: {exc}); "
            "download it again"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CorruptFileError(f"{path}: does not hold a flat state dict of tensors")
    return state
