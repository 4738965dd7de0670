"""The residual stream's layout (WanS2VTransformer.row_major_stream): row-major, every block of
every step reads a token's channels together; otherwise the patch embedding's layout (token
stride 1) runs through. Both render the same video up to rounding."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from pipeline.model import WanS2VTransformer
from tests.pipeline.conftest import request


@contextmanager
def layout(tiny, row_major: bool) -> Iterator[list[bool]]:
    """New streams in this layout; yields, for each block call meanwhile, whether its tokens
    were row-major."""
    dit = tiny.components.dit
    seen: list[bool] = []
    hooks = [
        b.register_forward_pre_hook(lambda _m, args: seen.append(args[0].is_contiguous()))
        for b in dit.blocks
    ]
    default = WanS2VTransformer.row_major_stream
    WanS2VTransformer.row_major_stream = row_major  # the layout of the streams opened next
    try:
        yield seen
    finally:
        WanS2VTransformer.row_major_stream = default
        for h in hooks:
            h.remove()


def render(tiny, row_major: bool) -> tuple[list[np.ndarray], list[bool]]:
    """Two clips' frames, and for each block call whether its tokens were row-major."""
    with layout(tiny, row_major) as seen:
        frames = [clip.frames for clip in tiny.open(request(seconds=3.0, num_clips=2))]
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


def _resume_second_clip(tiny, state, default: bool) -> tuple[bool, list[bool]]:
    """Resume `state`'s stream while new streams default to `default`: its `row_major`, and
    for each block call of its clip whether the tokens were row-major."""
    with layout(tiny, default) as seen:
        resumed = tiny.open(request(seconds=3.0, num_clips=2), state=state)
        seen.clear()  # the clip's blocks, not the open's prefill
        assert len([clip.frames for clip in resumed]) == 1
    return resumed.row_major, seen


def _state_after_clip_0(tiny, row_major: bool) -> dict:
    with layout(tiny, row_major):
        stream = tiny.open(request(seconds=3.0, num_clips=2))
        next(stream)
        state = stream.state_dict()
        stream.close()
    return state


@pytest.mark.parametrize("rendered_row_major", [False, True])
def test_a_stream_resumes_in_the_layout_it_was_rendered_in(tiny, rendered_row_major):
    """The layouts round differently on a GPU: a state records its own, and a resume takes it
    whatever the layout of new streams has become since."""
    state = _state_after_clip_0(tiny, rendered_row_major)
    assert state["meta"]["layout"] == ("row-major" if rendered_row_major else "conv")
    row_major, seen = _resume_second_clip(tiny, state, default=not rendered_row_major)
    assert row_major is rendered_row_major
    assert seen and all(seen) is rendered_row_major


def test_a_state_from_before_the_layout_was_recorded_resumes_in_the_convolutions(tiny):
    state = _state_after_clip_0(tiny, False)
    del state["meta"]["layout"]
    row_major, seen = _resume_second_clip(tiny, state, default=True)
    assert row_major is False and not all(seen)
    state["meta"]["layout"] = "diagonal"
    with pytest.raises(ValueError, match="unknown layout"):
        tiny.open(request(seconds=3.0, num_clips=2), state=state)
