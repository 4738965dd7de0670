"""The visible "AI-generated" mark: present in its corner, nowhere else, and off when disabled."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from db.params import CORNERS, WatermarkSpec
from tests.worker.media_helpers import make_clip
from worker.segments import SegmentEncoder
from worker.watermark import Watermark

FW, FH = 320, 180


def gray_frames(value: int, frames: int = 3) -> np.ndarray:
    return np.full((frames, FH, FW, 3), value, np.uint8)


def changed_mask(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """[H, W] True where any frame's pixel changed."""
    return np.any(before != after, axis=(0, 3))


@pytest.mark.parametrize("corner", CORNERS)
def test_mark_changes_pixels_in_its_corner_and_nowhere_else(corner: str):
    wm = Watermark(WatermarkSpec(corner=corner), FW, FH)
    frames = make_clip(3, width=FW, height=FH)
    marked = wm.apply(frames)

    changed = changed_mask(frames, marked)
    x0, y0, x1, y1 = wm.box
    assert changed[y0:y1, x0:x1].sum() > 50, "the mark is not visible"
    outside = changed.copy()
    outside[y0:y1, x0:x1] = False
    assert not outside.any(), "pixels outside the mark's box changed"
    ys, xs = np.nonzero(changed)
    assert (ys.mean() < FH / 2) == corner.startswith("top")
    assert (xs.mean() < FW / 2) == corner.endswith("left")
    # Every frame of the clip carries the mark.
    assert all(changed_mask(frames[i : i + 1], marked[i : i + 1]).sum() > 50 for i in range(3))


def test_mark_is_readable_on_light_and_dark_frames():
    wm = Watermark(WatermarkSpec(opacity=1.0), FW, FH)
    x0, y0, x1, y1 = wm.box
    on_black = wm.apply(gray_frames(0))[0, y0:y1, x0:x1]
    on_white = wm.apply(gray_frames(255))[0, y0:y1, x0:x1]
    assert on_black.max() >= 220  # white glyphs
    assert on_white.min() <= 30  # dark outline


def test_opacity_scales_the_change():
    frames = gray_frames(0)
    faint = Watermark(WatermarkSpec(opacity=0.25), FW, FH).apply(frames)
    strong = Watermark(WatermarkSpec(opacity=1.0), FW, FH).apply(frames)
    assert strong.max() >= 220
    assert abs(int(faint.max()) - strong.max() / 4) <= 2


def test_apply_copies_unless_asked_to_work_in_place():
    wm = Watermark(WatermarkSpec(), FW, FH)
    frames = gray_frames(100)
    marked = wm.apply(frames)
    assert np.all(frames == 100), "apply() modified its input"
    same = wm.apply(frames, inplace=True)
    assert same is frames and np.array_equal(frames, marked)


def test_disabled_or_transparent_mark_leaves_frames_untouched():
    frames = make_clip(4, width=FW, height=FH)
    for spec in (WatermarkSpec(enabled=False), WatermarkSpec(opacity=0.0)):
        wm = Watermark(spec, FW, FH)
        assert not wm.active
        out = wm.apply(frames.copy(), inplace=True)
        assert np.array_equal(out, frames)


def test_larger_scale_gives_a_larger_mark():
    small = Watermark(WatermarkSpec(scale=0.05), FW, FH).box
    large = Watermark(WatermarkSpec(scale=0.1), FW, FH).box
    assert (large[3] - large[1]) > 1.6 * (small[3] - small[1])
    assert (large[2] - large[0]) > 1.6 * (small[2] - small[0])


def test_bad_specs_and_frames_are_rejected_with_what_to_fix():
    with pytest.raises(ValueError, match="corner"):
        WatermarkSpec(corner="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="opacity"):
        WatermarkSpec(opacity=1.5)
    with pytest.raises(ValueError, match="text must not be empty"):
        WatermarkSpec(text="  ")
    with pytest.raises(ValueError, match="does not fit"):
        Watermark(WatermarkSpec(text="AI-generated " * 4, scale=0.3), FW, FH)
    wm = Watermark(WatermarkSpec(), FW, FH)
    with pytest.raises(ValueError, match=r"\[T, 180, 320, 3\]"):
        wm.apply(np.zeros((2, 100, 100, 3), np.uint8))


def test_segment_encoder_composites_the_mark_before_encoding(tmp_path: Path):
    frames = gray_frames(40, frames=5)
    wm = Watermark(WatermarkSpec(opacity=1.0), FW, FH)
    enc = SegmentEncoder(tmp_path / "seg.mp4", FW, FH, watermark=wm)
    enc.submit(frames.copy())
    enc.close()
    with av.open(str(tmp_path / "seg.mp4")) as c:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    x0, y0, x1, y1 = wm.box
    assert decoded[:, y0:y1, x0:x1].max() > 200  # the white text survived encoding
    outside = decoded.copy()
    # Elsewhere the flat gray is intact, up to compression error in the macroblocks (16x16)
    # the mark's edges share.
    outside[:, y0 - 16 : y1 + 16, x0 - 16 : x1 + 16] = 40
    assert np.abs(outside.astype(int) - 40).max() <= 2
