"""Where every token of a stream lives: sizes of latents, blocks, the ring and the sink."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import params


def _conv_out(n: int, k: int) -> int:
    """Length after a kernel-k, stride-k convolution."""
    return (n - k) // k + 1


@dataclass(frozen=True)
class Geometry:
    width: int
    height: int
    infer_frames: int
    motion_buckets: tuple[int, int, int] = (1, 2, 16)

    def __post_init__(self) -> None:
        params.check_infer_frames(self.infer_frames)
        if self.width % 16 or self.height % 16 or min(self.width, self.height) < 64:
            raise ValueError(f"{self.width}x{self.height}: sides must be multiples of 16, >= 64")

    # latent grid
    @property
    def latent_h(self) -> int:
        return self.height // params.VAE_SPATIAL_STRIDE

    @property
    def latent_w(self) -> int:
        return self.width // params.VAE_SPATIAL_STRIDE

    @property
    def grid(self) -> tuple[int, int]:
        """Token rows and columns of one latent frame (patch 2x2)."""
        return self.latent_h // 2, self.latent_w // 2

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    # time
    @property
    def frames_per_block(self) -> int:
        return params.FRAMES_PER_BLOCK

    @property
    def latent_frames_per_clip(self) -> int:
        return self.infer_frames // params.VAE_TEMPORAL_STRIDE

    @property
    def blocks_per_clip(self) -> int:
        return self.latent_frames_per_clip // self.frames_per_block

    @property
    def video_frames_per_block(self) -> int:
        return params.FRAMES_PER_BLOCK_VIDEO

    # attention
    @property
    def block_tokens(self) -> int:
        return self.frames_per_block * self.tokens_per_frame

    @property
    def ring_tokens(self) -> int:
        """The ring holds one clip of blocks."""
        return self.blocks_per_clip * self.block_tokens

    @property
    def ref_tokens(self) -> int:
        return self.tokens_per_frame

    @property
    def motion_tokens(self) -> int:
        n1, n2, n4 = self.motion_buckets
        h, w = self.latent_h, self.latent_w
        return (
            n1 * self.tokens_per_frame
            + (n2 // 2) * _conv_out(h, 4) * _conv_out(w, 4)
            + (n4 // 4) * _conv_out(h, 8) * _conv_out(w, 8)
        )

    @property
    def sink_tokens(self) -> int:
        return self.ref_tokens + self.motion_tokens

    @property
    def cache_tokens(self) -> int:
        return self.sink_tokens + self.ring_tokens
