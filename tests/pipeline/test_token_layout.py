"""The residual stream's layout (WanS2VTransformer.row_major_stream): row-major, every block of
every step reads a token's channels together; otherwise the patch embedding's layout (token
stride 1) runs through. Both render the same video up to rounding."""

from __future__ import annotations

import numpy as np
import pytest

from tests.pipeline.conftest import request


def render(tiny, row_major: bool) -> tuple[list[np.ndarray], list[bool]]:
    """Two clips' frames, and for each block call whether its tokens were row-major."""
    dit = tiny.components.dit
    seen: list[bool] = []
    hooks = [
        b.register_forward_pre_hook(lambda _m, args: seen.append(args[0].is_contiguous()))
        for b in dit.blocks
    ]
    dit.row_major_stream = row_major
    try:
        frames = [clip.frames for clip in tiny.open(request(seconds=3.0, num_clips=2))]
    finally:
        dit.row_major_stream = type(dit).row_major_stream
        for h in hooks:
            h.remove()
    return frames, seen


@pytest.fixture(scope="module")
def conv_layout(tiny):
    return render(tiny, row_major=False)


def test_row_major_tokens_reach_every_block(tiny, conv_layout):
    frames, seen = render(tiny, row_major=True)
    assert len(seen) > len(tiny.components.dit.blocks) and all(seen)
    # the same video: a layout changes the order of sums, not what is computed
    for a, b in zip(frames, conv_layout[0], strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_the_patch_embeddings_layout_is_kept_otherwise(conv_layout):
    _, seen = conv_layout
    # a block's noisy tokens come channels-first from the convolution; the sink's prefill
    # (its own tokens, concatenated: contiguous) is the exception
    assert not all(seen)
