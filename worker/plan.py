"""What a job asks the worker to do, read from its row: the render request, intervals, mark."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from db.models import Job
from pipeline import params as P
from worker.watermark import WatermarkSpec

if TYPE_CHECKING:
    from pipeline import RenderRequest

WATERMARK_FIELDS = {f.name for f in dataclasses.fields(WatermarkSpec)}


@dataclass(frozen=True)
class JobPlan:
    job_id: uuid.UUID
    tenant: str
    clips_total: int
    infer_frames: int
    sample_steps: int
    seed: int
    size: str
    prompt: str
    checkpoint_every: int
    watermark: WatermarkSpec
    image_key: str
    audio_key: str

    @classmethod
    def from_job(
        cls, job: Job, *, default_watermark: WatermarkSpec, watermark_allowed: bool
    ) -> JobPlan:
        """Read a job's validated parameters (ValueError naming what is wrong otherwise)."""
        p = job.params
        try:
            plan = cls(
                job_id=job.id,
                tenant=job.tenant,
                clips_total=int(job.clips_total),
                infer_frames=P.check_infer_frames(
                    int(p.get("infer_frames", P.INFER_FRAMES_DEFAULT))
                ),
                sample_steps=P.check_sample_steps(
                    int(p.get("sample_steps", P.SAMPLE_STEPS_DEFAULT))
                ),
                seed=int(p["seed"]),
                size=p.get("size", P.SIZE_DEFAULT),
                prompt=str(p.get("prompt", "")),
                checkpoint_every=int(p["checkpoint_every"]),
                watermark=watermark_for(p.get("watermark"), default_watermark, watermark_allowed),
                image_key=job.image_key,
                audio_key=job.audio_key,
            )
        except KeyError as e:
            raise ValueError(f"job {job.id} has no {e.args[0]!r} parameter") from None
        P.check_size_key(plan.size)
        if plan.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be at least 1, got {plan.checkpoint_every}")
        if plan.clips_total < 1:
            raise ValueError(f"job {job.id} has no clips to render")
        return plan

    @property
    def frames_total(self) -> int:
        return self.clips_total * self.infer_frames

    @property
    def duration_s(self) -> float:
        return self.frames_total / P.FPS

    def is_boundary(self, clips_done: int) -> bool:
        """Whether a checkpoint interval ends after `clips_done` clips."""
        return clips_done % self.checkpoint_every == 0 or clips_done == self.clips_total

    def request(self, image: bytes, audio: Path) -> RenderRequest:
        from pipeline import RenderRequest

        # num_clips is explicit: the stream renders exactly the clips the job was accepted for.
        return RenderRequest(
            image=image,
            audio=audio,
            prompt=self.prompt,
            size=self.size,
            num_clips=self.clips_total,
            infer_frames=self.infer_frames,
            sample_steps=self.sample_steps,
            seed=self.seed,
        )


def watermark_for(requested: Any, default: WatermarkSpec, allowed: bool = True) -> WatermarkSpec:
    """The job's mark: the operator's default with the job's (tenant's) fields over it.

    `requested` is the job's ``params["watermark"]``: None, or a mapping of WatermarkSpec
    fields (text, corner, opacity, scale, margin, enabled). An operator who disallows the mark
    turns it off for every job.
    """
    spec = default
    if requested is not None:
        if not isinstance(requested, dict):
            raise ValueError("the watermark parameter must be an object of watermark settings")
        unknown = set(requested) - WATERMARK_FIELDS
        if unknown:
            raise ValueError(
                f"unknown watermark settings {', '.join(sorted(unknown))}; "
                f"use {', '.join(sorted(WATERMARK_FIELDS))}"
            )
        spec = dataclasses.replace(default, **requested)
    if not allowed and spec.enabled:
        spec = dataclasses.replace(spec, enabled=False)
    return spec
