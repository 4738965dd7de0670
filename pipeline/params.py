"""What a render request may ask of the model: size keys, frame and step ranges, precisions.

Pure Python with no torch import, so the API can validate requests without loading the model.
This module is the one place these facts live.
"""

from __future__ import annotations

import math
from typing import Literal

FPS = 25
"""Output frame rate. Audio features are resampled to this rate."""

VAE_TEMPORAL_STRIDE = 4
VAE_SPATIAL_STRIDE = 8
PATCH_SIZE = (1, 2, 2)
FRAMES_PER_BLOCK = 3
"""Latent frames denoised together as one causal block."""

FRAMES_PER_BLOCK_VIDEO = FRAMES_PER_BLOCK * VAE_TEMPORAL_STRIDE  # 12 video frames

INFER_FRAMES_DEFAULT = 48
INFER_FRAMES_MIN = FRAMES_PER_BLOCK_VIDEO
INFER_FRAMES_MAX = 96

SAMPLE_STEPS_DEFAULT = 4
SAMPLE_STEPS_MIN = 1
SAMPLE_STEPS_MAX = 8

Precision = Literal["bf16", "fp8", "fp8-attention"]
PRECISIONS: tuple[Precision, ...] = ("bf16", "fp8", "fp8-attention")
"""How the DiT runs. "bf16": in the model's dtype (bf16 on a GPU; the CPU's float32 in tests).
"fp8": the blocks' linear layers in float8 e4m3, weights (one scale per output channel,
quantised at load) and activations (one scale per token), products in float32 accumulators
(pipeline/model/fp8.py); attention, norms, modulation, embeddings and the head in the model's
dtype. "fp8-attention": "fp8", and self-attention in e4m3 too: its key/value caches held in
e4m3 (half the bytes, in memory and in checkpoints) and cuDNN's FP8 attention kernel on a
Hopper GPU (pipeline/model/fp8_attention.py; its float32 emulation on the CPU).
A stream's precision is part of its identity: its checkpoints resume only at that precision."""
PRECISION_DEFAULT: Precision = "bf16"

NUM_CLIPS_MAX = 100_000
PROMPT_MAX_CHARS = 2_000
SEED_MAX = 2**63 - 1

SIZE_DIVISOR = 64
"""Output sides are multiples of this, unless the image already has the key's own aspect ratio."""

# Area keys, as "width*height". A key names an area budget; the output keeps the reference
# image's aspect ratio within it.
SIZES: dict[str, tuple[int, int]] = {
    "720*1280": (720, 1280),
    "1280*720": (1280, 720),
    "480*832": (480, 832),
    "832*480": (832, 480),
    "704*1280": (704, 1280),
    "1280*704": (1280, 704),
    "1024*704": (1024, 704),
    "704*1024": (704, 1024),
    "720*400": (720, 400),
    "704*384": (704, 384),
    "688*368": (688, 368),
    "384*256": (384, 256),
    # small sizes for previews and the tiny model
    "128*128": (128, 128),
    "64*64": (64, 64),
}
SIZE_DEFAULT = "720*400"


def check_size_key(key: str) -> tuple[int, int]:
    """(width, height) of a size key, or ValueError naming the known keys."""
    try:
        return SIZES[key]
    except KeyError:
        known = ", ".join(sorted(SIZES))
        raise ValueError(f"unknown size key {key!r}; use one of: {known}") from None


def fit_size(image_width: int, image_height: int, key: str) -> tuple[int, int]:
    """Output (width, height) for a reference image under a size key.

    If the image has the key's own aspect ratio (within 1%), either orientation, the key's exact
    dimensions are used (720*400 renders at 720x400). Otherwise the largest size whose sides are
    multiples of 64, whose area fits the key's area and whose aspect ratio is the image's.
    """
    if image_width <= 0 or image_height <= 0:
        raise ValueError("image has no pixels")
    key_w, key_h = check_size_key(key)
    aspect = image_width / image_height
    for w, h in ((key_w, key_h), (key_h, key_w)):
        if abs(aspect / (w / h) - 1.0) <= 0.01:
            return w, h
    area = key_w * key_h
    best: tuple[int, int] | None = None
    best_err = math.inf
    d = SIZE_DIVISOR
    for h in range(d, int(math.sqrt(area / 0.1)) + d, d):
        # the widest multiple of d that fits the area at this height, and the one below it
        w_max = (area // h) // d * d
        for w in (w_max, w_max - d):
            if w < d:
                continue
            err = abs(math.log((w / h) / aspect))
            # prefer the better aspect match; among equal matches, the larger area
            if err < best_err - 1e-9 or (
                abs(err - best_err) <= 1e-9 and best and w * h > best[0] * best[1]
            ):
                best, best_err = (w, h), err
    assert best is not None
    return best


def frames_for_duration(duration_s: float) -> int:
    """Video frames that cover `duration_s` seconds of audio (at least one)."""
    return max(1, math.ceil(duration_s * FPS - 1e-6))


def clips_for_duration(duration_s: float, infer_frames: int = INFER_FRAMES_DEFAULT) -> int:
    """How many clips cover `duration_s` seconds of audio (the last one padded with silence)."""
    return math.ceil(frames_for_duration(duration_s) / infer_frames)


def check_infer_frames(n: int) -> int:
    if not (INFER_FRAMES_MIN <= n <= INFER_FRAMES_MAX) or n % FRAMES_PER_BLOCK_VIDEO:
        raise ValueError(
            f"infer_frames must be a multiple of {FRAMES_PER_BLOCK_VIDEO} between "
            f"{INFER_FRAMES_MIN} and {INFER_FRAMES_MAX}, got {n}"
        )
    return n


def check_sample_steps(n: int) -> int:
    if not (SAMPLE_STEPS_MIN <= n <= SAMPLE_STEPS_MAX):
        raise ValueError(
            f"sample_steps must be between {SAMPLE_STEPS_MIN} and {SAMPLE_STEPS_MAX}, got {n}"
        )
    return n


def linears_in_fp8(precision: Precision) -> bool:
    """Whether `precision` quantises the blocks' linear layers."""
    return precision in ("fp8", "fp8-attention")


def attention_in_fp8(precision: Precision) -> bool:
    """Whether `precision` runs self-attention (and holds its caches) in e4m3."""
    return precision == "fp8-attention"


def check_precision(name: str) -> Precision:
    """`name` as a precision, or ValueError naming the precisions there are."""
    for p in PRECISIONS:
        if name == p:
            return p
    raise ValueError(f"unknown precision {name!r}; use one of: {', '.join(PRECISIONS)}")


class PrecisionMismatch(ValueError):
    """A stream state taken at one precision, offered to an engine of another."""

    def __init__(self, saved: str, engine: str):
        self.saved = saved
        self.engine = engine
        super().__init__(
            f"this checkpoint was rendered at precision {saved!r} and this engine runs "
            f"{engine!r}: a stream resumes only at its own precision. Resume it on an engine "
            f"built with precision {saved!r}, or start the render over at {engine!r}."
        )
