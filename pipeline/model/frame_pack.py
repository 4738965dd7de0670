"""Frame packing of motion latents into sink tokens (checkpoint name: `frame_packer`).

The last 19 motion latent frames become tokens at three compressions: the nearest frame at full
resolution (patch 1x2x2), the next 2 frames at 2x (patch 2x4x4), the 16 oldest at 4x (patch
4x8x8). Each group sits at negative RoPE frame indices behind the stream's frame 0.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from pipeline.model import rope


class FramePacker(nn.Module):
    def __init__(self, dim: int, in_dim: int = 16, buckets: tuple[int, int, int] = (1, 2, 16)):
        super().__init__()
        self.buckets = buckets
        self.in_dim = in_dim
        self.proj = nn.Conv3d(in_dim, dim, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.proj_2x = nn.Conv3d(in_dim, dim, kernel_size=(2, 4, 4), stride=(2, 4, 4))
        self.proj_4x = nn.Conv3d(in_dim, dim, kernel_size=(4, 8, 8), stride=(4, 8, 8))

    def forward(self, motion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """motion [C, T, h, w] latents -> (tokens [1, N, dim], positions [N, 3]).

        Fewer than sum(buckets) frames are padded with zeros in front (the oldest side).
        """
        c, t, h, w = motion.shape
        total = sum(self.buckets)
        packed = motion.new_zeros(c, total, h, w)
        keep = min(total, t)
        if keep:
            packed[:, total - keep :] = motion[:, t - keep :]
        n1, n2, n4 = self.buckets
        oldest, middle, newest = packed.unsqueeze(0).split([n4, n2, n1], dim=2)

        rows, cols = h // 2, w // 2  # the fine token grid
        tokens, positions = [], []
        # (projection, frames in, frame compression, first RoPE frame)
        for proj, x, tc, first in (
            (self.proj, newest, 1, -n1),
            (self.proj_2x, middle, 2, -(n1 + n2)),
            (self.proj_4x, oldest, 4, -(n1 + n2 + n4)),
        ):
            y = proj(x)  # [1, dim, f, rh, rw]
            f, rh, rw = y.shape[2:]
            tokens.append(y.flatten(2).transpose(1, 2))
            frames = _coarse_frames(first, f, f * tc)
            positions.append(rope.grid(frames, rope.spread(rows, rh), rope.spread(cols, rw)))
        return torch.cat(tokens, dim=1), torch.cat(positions, dim=0)


def _coarse_frames(first: int, count: int, span: int) -> list[int]:
    """RoPE frames of `count` coarse frames covering the `span` fine frames from `first` (< 0):
    spread evenly from the oldest fine frame to the newest, rounded towards zero."""
    magnitudes = np.linspace(-first, -first - span + 1, count).astype(np.int64)
    return (-magnitudes).tolist()
