"""3D rotary position embeddings over (frame, row, column) token positions.

Each head's D channels form D/2 complex pairs: the first D/2 - 2*(D//6) rotate with the frame
index, the next D//6 with the row, the last D//6 with the column, each part with its own
frequency ladder (base 10000). Positions are plain signed integers: motion tokens sit at negative
frames, the stream's frames count up from 0 without bound, the sink sits ahead of them. Angles are
computed in float64 so that large frame indices (hours of video) keep their precision.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.model import fused


def _inv_freqs(dim: int) -> torch.Tensor:
    # built on the CPU explicitly: the model may be constructed under a meta-device context
    steps = torch.arange(0, dim, 2, dtype=torch.float64, device="cpu")
    return 1.0 / torch.pow(10000.0, steps / dim)


class Rope:
    def __init__(self, head_dim: int):
        self.head_dim = head_dim
        spatial = 2 * (head_dim // 6)
        self.inv_f = _inv_freqs(head_dim - 2 * spatial)
        self.inv_s = _inv_freqs(spatial)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def freqs(self, positions: torch.Tensor, device: torch.device | str) -> torch.Tensor:
        """Rotations for tokens at `positions` [L, 3] (int64: frame, row, column).

        Returns float32 [L, 1, D/2, 2]: (cos, sin) of each channel pair, broadcastable over heads.
        Computed where `positions` live (keep them on the GPU to avoid a host round trip).
        """
        inv_f, inv_s = self._inverse_frequencies(positions.device)
        p = positions.to(torch.float64)
        angles = torch.cat([p[:, 0:1] * inv_f, p[:, 1:2] * inv_s, p[:, 2:3] * inv_s], dim=1)
        rot = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1).float()
        return rot.unsqueeze(1).to(device)

    def _inverse_frequencies(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on_device:
            self._on_device[device] = (self.inv_f.to(device), self.inv_s.to(device))
        return self._on_device[device]


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, L, H, D] by freqs [L, 1, D/2, 2]; float32 arithmetic, result in x's dtype."""
    return fused.rope(x, freqs)


def grid(frames: list[int], rows: list[int] | range, cols: list[int] | range) -> torch.Tensor:
    """Positions [F*R*C, 3] of a token grid in frame-major order (the patch embedding's order)."""
    f, r, c = (torch.as_tensor(list(v), dtype=torch.int64) for v in (frames, rows, cols))
    ff, rr, cc = torch.meshgrid(f, r, c, indexing="ij")
    return torch.stack([ff.flatten(), rr.flatten(), cc.flatten()], dim=1)


def spread(span: int, count: int) -> list[int]:
    """`count` integer positions spread over [0, span): where coarse motion tokens sit.

    A token of a 2x- or 4x-compressed grid takes the position of the fine-grid token its
    left/top edge falls on, so the coarse grid covers the same extent as the fine one.
    """
    return np.linspace(0, span - 1, count).astype(np.int64).tolist()
