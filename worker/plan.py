"""What a job asks the worker to do, read from its row: the render request, intervals, mark."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from db.models import Job
from db.params import JobParams, WatermarkParams, WatermarkSpec
from pipeline import params as P

if TYPE_CHECKING:
    from pipeline import RenderRequest


@dataclass(frozen=True)
class JobPlan:
    job_id: uuid.UUID
    tenant: str
    clips_total: int
    params: JobParams
    watermark: WatermarkSpec
    """The mark this job's frames get: the operator's, with the job's fields over it."""
    image_key: str
    audio_key: str
    precision: str
    """The DiT precision the job was submitted for: its engine, and its checkpoints'."""

    @classmethod
    def from_job(
        cls, job: Job, *, default_watermark: WatermarkSpec, watermark_allowed: bool
    ) -> JobPlan:
        """Read a job's parameters (ValueError naming what is wrong otherwise)."""
        try:
            params = job.job_params
            mark = params.watermark or WatermarkParams()
            watermark = mark.over(default_watermark, allowed=watermark_allowed)
        except ValidationError as e:
            raise ValueError(f"job {job.id} has invalid parameters: {e}") from None
        if job.clips_total < 1:
            raise ValueError(f"job {job.id} has no clips to render")
        return cls(
            job_id=job.id,
            tenant=job.tenant,
            clips_total=job.clips_total,
            params=params,
            watermark=watermark,
            image_key=job.image_key,
            audio_key=job.audio_key,
            precision=job.precision,
        )

    @property
    def infer_frames(self) -> int:
        return self.params.infer_frames

    @property
    def checkpoint_every(self) -> int:
        return self.params.checkpoint_every

    @property
    def frames_total(self) -> int:
        return self.params.frames_total(self.clips_total)

    @property
    def duration_s(self) -> float:
        return self.frames_total / P.FPS

    def delivered(self, clip: int) -> int:
        """How many of clip `clip`'s frames the video keeps: all but in the last clip, which
        is cut where the speech ends."""
        return self.params.frames_for(clip + 1, self.clips_total) - self.params.frames_for(
            clip, self.clips_total
        )

    def is_boundary(self, clips_done: int) -> bool:
        """Whether a checkpoint interval ends after `clips_done` clips."""
        return clips_done % self.checkpoint_every == 0 or clips_done == self.clips_total

    def request(self, image: bytes, audio: Path) -> RenderRequest:
        from pipeline import RenderRequest

        p = self.params
        # num_clips is explicit: the stream renders exactly the clips the job was accepted for.
        return RenderRequest(
            image=image,
            audio=audio,
            prompt=p.prompt,
            size=p.size,
            num_clips=self.clips_total,
            infer_frames=p.infer_frames,
            sample_steps=p.sample_steps,
            seed=p.seed,
        )
