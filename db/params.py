"""A job's parameters: one typed model, built by the API, stored in the job's row, read by the
worker, the repository, the benchmarks and the tests.

`JobParams` is what `jobs.params` holds (as JSON); `Job.job_params` reads it back. Nothing reads
a parameter with a default of its own: a default lives here or in `pipeline.params` (the
model's ranges), once. The watermark's settings live here too: the operator's default
(`WatermarkSpec`, from the environment) and what a job may change of it (`WatermarkParams`).

Plain pydantic over `pipeline.params`: no torch is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from pipeline import params as P
from pipeline.presenter_key import presenter_key as _presenter_key

Corner = Literal["top-left", "top-right", "bottom-left", "bottom-right"]
CORNERS: tuple[Corner, ...] = ("top-left", "top-right", "bottom-left", "bottom-right")
WATERMARK_TEXT_MAX = 64


def _size_key(key: str) -> str:
    P.check_size_key(key)
    return key


# The model's ranges as types: every model that holds one of these checks it the same way
# (pipeline.params says what the ranges are and words the error).
SizeKey = Annotated[str, AfterValidator(_size_key)]
InferFrames = Annotated[int, AfterValidator(P.check_infer_frames)]
SampleSteps = Annotated[int, AfterValidator(P.check_sample_steps)]
PrecisionName = Annotated[str, AfterValidator(P.check_precision)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class MarkBox:
    """The mark's text laid out for one frame height: the font size and outline it is drawn
    with, the offset of its bounding box from the drawing origin, its size, the margin."""

    text_px: int
    stroke: int
    left: int
    top: int
    width: int
    height: int
    margin: int


class WatermarkSpec(_Frozen):
    """What the visible mark says and where it goes on every frame.

    ``scale`` is the text height as a fraction of the frame height, ``margin`` the gap to the
    frame edges as a fraction of the frame height, ``opacity`` the mark's alpha in [0, 1].

    ``box`` lays the text out (Pillow's built-in font) and ``misfit`` says whether it fits a
    frame: the API refuses at submit a job whose mark would not fit the frame it renders, so
    both need the one computation the worker draws with, and it lives with the spec.
    """

    enabled: bool = True
    text: str = Field("AI-generated", max_length=WATERMARK_TEXT_MAX)
    corner: Corner = "bottom-right"
    opacity: float = Field(0.8, ge=0.0, le=1.0)
    scale: float = Field(0.05, ge=0.01, le=0.5)
    margin: float = Field(0.025, ge=0.0, le=0.25)

    @model_validator(mode="after")
    def _text_when_enabled(self) -> WatermarkSpec:
        if self.enabled and not self.text.strip():
            raise ValueError("watermark text must not be empty when the watermark is enabled")
        return self

    @property
    def draws(self) -> bool:
        """Whether the mark changes any pixel."""
        return self.enabled and self.opacity > 0

    def box(self, frame_height: int) -> MarkBox:
        """The text's layout in a frame `frame_height` pixels high."""
        from PIL import ImageFont  # imported here: only who draws or checks a mark needs it

        text_px = max(8, round(self.scale * frame_height))
        stroke = max(1, text_px // 12)
        font = ImageFont.load_default(size=text_px)
        left, top, right, bottom = font.getbbox(self.text, stroke_width=stroke)
        margin = round(self.margin * frame_height)
        return MarkBox(text_px, stroke, left, top, right - left, bottom - top, margin)

    def misfit(self, width: int, height: int) -> str | None:
        """Why the mark does not fit a `width` x `height` frame, or None if it fits (or draws
        nothing)."""
        if not self.draws:
            return None
        box = self.box(height)
        if box.width + box.margin > width or box.height + box.margin > height:
            return (
                f"watermark {self.text!r} at scale {self.scale} ({box.width}x{box.height} px) "
                f"does not fit a {width}x{height} frame: use a shorter text or a smaller scale"
            )
        return None


class WatermarkParams(_Frozen):
    """What a job may change of the operator's mark: its text and its place and look. Whether
    there is a mark at all is the operator's decision (`LONGTAKE_WATERMARK_ENABLED`).

    Strict: a request's JSON is taken as typed (`"opacity": true` is not 1.0)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    text: str | None = Field(
        None, min_length=1, max_length=WATERMARK_TEXT_MAX, description="The mark's text."
    )
    corner: Corner | None = Field(None, description="Where the mark goes.")
    opacity: float | None = Field(None, ge=0.0, le=1.0, description="The mark's alpha.")
    scale: float | None = Field(
        None, ge=0.01, le=0.5, description="Text height as a fraction of the frame height."
    )
    margin: float | None = Field(
        None, ge=0.0, le=0.25, description="Gap to the frame edges, a fraction of its height."
    )

    @field_validator("text")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("watermark text must not be blank")
        return v

    def over(self, default: WatermarkSpec, *, allowed: bool = True) -> WatermarkSpec:
        """The job's mark: `default` with this job's fields over it; none when not `allowed`."""
        spec = default.model_copy(update=self.model_dump(exclude_none=True))
        spec = WatermarkSpec.model_validate(spec.model_dump())  # the merged whole is valid too
        return spec if allowed else spec.model_copy(update={"enabled": False})


class ImageFacts(_Frozen):
    """The portrait as it was checked at submit."""

    width: int
    height: int
    format: str


class AudioFacts(_Frozen):
    """The speech track as it was checked at submit."""

    codec: str
    sample_rate: int
    channels: int


class ScriptParams(_Frozen):
    """The text a job's speech was synthesised from at submit, and how: the engine, its
    language and voice. The synthesised track is the job's audio input (`audio` describes
    it); the script is kept to show and to submit again."""

    text: str
    language: str
    voice: str
    engine: str


class JobParams(_Frozen):
    """A render job's parameters, resolved and validated at submit."""

    prompt: str
    size: SizeKey = Field(description="The size key asked for (an area: pipeline.params.SIZES).")
    width: int = Field(description="The output width the size key gives for this portrait.")
    height: int
    num_clips: int | None = Field(
        description="Clips asked for; null rendered to the end of the audio (see clips_total)."
    )
    infer_frames: InferFrames = P.INFER_FRAMES_DEFAULT
    sample_steps: SampleSteps = P.SAMPLE_STEPS_DEFAULT
    seed: int = Field(ge=0, le=P.SEED_MAX)
    checkpoint_every: int = Field(ge=1, description="Clips between checkpoints.")
    audio_duration_s: float = Field(gt=0)
    image: ImageFacts
    audio: AudioFacts
    watermark: WatermarkParams | None = None
    script: ScriptParams | None = Field(
        None, description="The script the audio was synthesised from; null for uploaded audio."
    )

    def frames_total(self, clips_total: int) -> int:
        """The frames the video delivers: it ends with the speech (frame-accurate), not at a
        clip boundary, unless fewer clips than the speech needs were asked for."""
        speech = P.frames_for_duration(self.audio_duration_s)
        return min(clips_total * self.infer_frames, speech)

    def frames_for(self, clips: int, clips_total: int) -> int:
        """Delivered frames in the first `clips` clips of a `clips_total`-clip job."""
        return min(clips * self.infer_frames, self.frames_total(clips_total))


def presenter_key(tenant: str, image_sha256: str, params: JobParams, precision: str) -> str:
    """What `jobs.presenter_key` holds: the key under which a worker's presenter cache keeps
    this job's presenter (`pipeline.presenter_key`, namespaced by the tenant), so that a
    worker holding it can prefer the job in the claim."""
    return _presenter_key(tenant, image_sha256, params.prompt, params.size, precision)
