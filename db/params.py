"""A job's parameters: one typed model, built by the API, stored in the job's row, read by the
worker, the repository, the benchmarks and the tests.

`JobParams` is what `jobs.params` holds (as JSON); `Job.job_params` reads it back. Nothing reads
a parameter with a default of its own: a default lives here or in `pipeline.params` (the
model's ranges), once. The watermark's settings live here too: the operator's default
(`WatermarkSpec`, from the environment) and what a job may change of it (`WatermarkParams`).

Plain pydantic over `pipeline.params`: no torch is imported.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline import params as P

Corner = Literal["top-left", "top-right", "bottom-left", "bottom-right"]
CORNERS: tuple[Corner, ...] = ("top-left", "top-right", "bottom-left", "bottom-right")
WATERMARK_TEXT_MAX = 64


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WatermarkSpec(_Frozen):
    """What the visible mark says and where it goes on every frame.

    ``scale`` is the text height as a fraction of the frame height, ``margin`` the gap to the
    frame edges as a fraction of the frame height, ``opacity`` the mark's alpha in [0, 1].
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


class WatermarkParams(_Frozen):
    """What a job may change of the operator's mark: its text and its place and look. Whether
    there is a mark at all is the operator's decision (`LONGTAKE_WATERMARK_ENABLED`)."""

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


class JobParams(_Frozen):
    """A render job's parameters, resolved and validated at submit."""

    prompt: str
    size: str = Field(description="The size key asked for (an area, see pipeline.params.SIZES).")
    width: int = Field(description="The output width the size key gives for this portrait.")
    height: int
    num_clips: int | None = Field(
        description="Clips asked for; null rendered to the end of the audio (see clips_total)."
    )
    infer_frames: int = P.INFER_FRAMES_DEFAULT
    sample_steps: int = P.SAMPLE_STEPS_DEFAULT
    seed: int = Field(ge=0, le=P.SEED_MAX)
    checkpoint_every: int = Field(ge=1, description="Clips between checkpoints.")
    audio_duration_s: float = Field(gt=0)
    image: ImageFacts
    audio: AudioFacts
    watermark: WatermarkParams | None = None

    @field_validator("size")
    @classmethod
    def _size(cls, v: str) -> str:
        P.check_size_key(v)
        return v

    @field_validator("infer_frames")
    @classmethod
    def _infer_frames(cls, v: int) -> int:
        return P.check_infer_frames(v)

    @field_validator("sample_steps")
    @classmethod
    def _sample_steps(cls, v: int) -> int:
        return P.check_sample_steps(v)

    def frames_total(self, clips_total: int) -> int:
        """The frames the video delivers: it ends with the speech (frame-accurate), not at a
        clip boundary, unless fewer clips than the speech needs were asked for."""
        speech = P.frames_for_duration(self.audio_duration_s)
        return min(clips_total * self.infer_frames, speech)

    def frames_for(self, clips: int, clips_total: int) -> int:
        """Delivered frames in the first `clips` clips of a `clips_total`-clip job."""
        return min(clips * self.infer_frames, self.frames_total(clips_total))
