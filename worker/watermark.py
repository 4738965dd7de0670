"""The visible "AI-generated" mark composited onto every frame before it is encoded.

The text is rendered once per (spec, frame size) with Pillow into a small RGB + alpha patch;
each clip then only blends that patch into one corner of its frames with integer numpy
arithmetic, so the cost is proportional to the patch, not to the frame.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from db.params import WatermarkSpec


class Watermark:
    """A spec rendered for one frame size; ``apply`` composites it onto uint8 RGB frames."""

    def __init__(self, spec: WatermarkSpec, width: int, height: int) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        self.spec = spec
        self.width = width
        self.height = height
        # Patch placement in the frame: rows y0:y1, columns x0:x1.
        self.y0 = self.y1 = self.x0 = self.x1 = 0
        # Blend terms in uint16: out = (frame * inv_alpha + premultiplied + 127) // 255.
        # Both terms together never exceed 255 * 255, so uint16 does not overflow.
        self._inv_alpha = np.zeros((0, 0, 1), np.uint16)
        self._premultiplied = np.zeros((0, 0, 3), np.uint16)
        if spec.enabled and spec.opacity > 0:
            self._render()

    @property
    def active(self) -> bool:
        """False when applying the mark changes nothing (disabled or fully transparent)."""
        return self._premultiplied.size > 0

    @property
    def box(self) -> tuple[int, int, int, int]:
        """The frame region the mark may touch, as (x0, y0, x1, y1)."""
        return self.x0, self.y0, self.x1, self.y1

    def _render(self) -> None:
        spec = self.spec
        text_px = max(8, round(spec.scale * self.height))
        stroke = max(1, text_px // 12)
        font = ImageFont.load_default(size=text_px)
        left, top, right, bottom = font.getbbox(spec.text, stroke_width=stroke)
        w, h = right - left, bottom - top
        margin = round(spec.margin * self.height)
        if w + margin > self.width or h + margin > self.height:
            raise ValueError(
                f"watermark {spec.text!r} at scale {spec.scale} ({w}x{h} px) does not fit a "
                f"{self.width}x{self.height} frame: use a shorter text or a smaller scale"
            )
        # White text with a dark outline: readable on light and dark backgrounds alike.
        fill = Image.new("L", (w, h), 0)
        ImageDraw.Draw(fill).text((-left, -top), spec.text, font=font, fill=255)
        outline = Image.new("L", (w, h), 0)
        ImageDraw.Draw(outline).text(
            (-left, -top), spec.text, font=font, fill=255, stroke_width=stroke, stroke_fill=255
        )
        fill_a = np.asarray(fill, np.float32) / 255.0  # [h, w]
        outline_a = np.asarray(outline, np.float32) / 255.0
        alpha = np.maximum(fill_a, outline_a) * spec.opacity
        # Colour where the mark is opaque: white inside the glyphs, black in the outline ring.
        white_share = np.divide(
            fill_a, np.maximum(outline_a, fill_a), where=outline_a > 0, out=np.zeros_like(fill_a)
        )
        color = np.repeat((white_share * 255.0)[..., None], 3, axis=2)  # [h, w, 3]
        alpha8 = np.round(alpha * 255.0).astype(np.uint16)[..., None]  # [h, w, 1]
        self._inv_alpha = 255 - alpha8
        self._premultiplied = np.round(color * alpha8).astype(np.uint16)

        self.y0 = margin if spec.corner.startswith("top") else self.height - margin - h
        self.x0 = margin if spec.corner.endswith("left") else self.width - margin - w
        self.y1, self.x1 = self.y0 + h, self.x0 + w

    def apply(self, frames: np.ndarray, *, inplace: bool = False) -> np.ndarray:
        """Composite the mark onto ``frames`` (uint8 [T, H, W, 3]); return the marked frames.

        With ``inplace=True`` the caller's array is modified and returned (no copy of the
        frames); otherwise the input is left untouched. A disabled mark returns the input.
        """
        if (
            frames.dtype != np.uint8
            or frames.ndim != 4
            or frames.shape[1:] != (self.height, self.width, 3)
        ):
            raise ValueError(
                f"watermark expects uint8 frames of shape [T, {self.height}, {self.width}, 3], "
                f"got {frames.dtype} {tuple(frames.shape)}"
            )
        if not self.active:
            return frames
        out = frames if inplace else frames.copy()
        region = out[:, self.y0 : self.y1, self.x0 : self.x1]  # [T, h, w, 3] view
        blended = region.astype(np.uint16)
        blended *= self._inv_alpha
        blended += self._premultiplied
        blended += 127
        blended //= 255
        region[...] = blended
        return out
