"""Request and response bodies of the /v1 API."""

from __future__ import annotations

import json
import secrets
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from api.config import InputLimits
from db.models import Job, JobEvent
from db.params import WatermarkParams
from db.webhooks import WEBHOOK_EVENTS
from pipeline import params as P

TO_END_OF_AUDIO = {"", "audio", "to_end_of_audio", "null", "none"}


def check_webhook_url(url: str) -> str:
    parsed = urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError("a webhook URL must be an absolute http:// or https:// URL")
    if len(url) > 2048:
        raise ValueError("a webhook URL may have at most 2048 characters")
    return url


def check_webhook_events(events: list[str]) -> list[str]:
    unknown = [e for e in events if e not in WEBHOOK_EVENTS]
    if unknown or not events:
        raise ValueError(
            f"webhook events must be some of {', '.join(WEBHOOK_EVENTS)}"
            + (f"; {unknown[0]!r} is not one" if unknown else "")
        )
    return list(dict.fromkeys(events))


def check_webhook_secret(secret: str) -> str:
    if not 16 <= len(secret) <= 128:
        raise ValueError("a webhook secret must have 16 to 128 characters")
    return secret


class JobRequest(BaseModel):
    """Render parameters. Validate with `context={"limits": InputLimits}`."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    prompt: str = Field(description="What the video shows, in a sentence or a paragraph.")
    size: str = Field(P.SIZE_DEFAULT, description="An area key such as 720*400.")
    num_clips: int | None = Field(
        None, description="Clips to render; null (or omitted) renders to the end of the audio."
    )
    infer_frames: int = P.INFER_FRAMES_DEFAULT
    sample_steps: int = P.SAMPLE_STEPS_DEFAULT
    seed: int | None = Field(None, description="Fixes the output; a random one when omitted.")
    checkpoint_every: int | None = Field(None, description="Clips between checkpoints.")
    priority: int = Field(0, ge=-100, le=100, description="Higher runs first.")
    image: str | None = Field(
        None, description="The portrait by reference (JSON): s3://bucket/key or an upload id."
    )
    audio: str | None = Field(
        None, description="The speech by reference (JSON): s3://bucket/key or an upload id."
    )
    webhook_url: str | None = Field(
        None, description="POST this job's events to this http(s) URL, signed (see docs/api.md)."
    )
    webhook_events: list[str] | None = Field(
        None,
        description="Which events the webhook receives (a list, or comma-separated): any of "
        + ", ".join(WEBHOOK_EVENTS)
        + "; all when omitted.",
    )
    webhook_secret: str | None = Field(
        None, description="Signs this job's deliveries (16 to 128 characters); the tenant's "
        "webhook secret (GET /v1/webhooks/secret) when omitted.",
    )  # fmt: skip
    precision: str | None = Field(
        None,
        description="The model's precision: " + " or ".join(P.PRECISIONS) + "; the server's "
        "default when omitted. fp8 renders faster with a small loss of fidelity.",
    )
    watermark: WatermarkParams | None = Field(
        None,
        description="Changes to the operator's visible mark for this job: text, corner, "
        "opacity, scale, margin (a JSON object; in a multipart form, its JSON text).",
    )

    @staticmethod
    def _limits(info: ValidationInfo) -> InputLimits:
        return (info.context or {}).get("limits") or InputLimits()

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str, info: ValidationInfo) -> str:
        limit = cls._limits(info).max_prompt_chars
        if not v:
            raise ValueError("the prompt is empty; describe the speaker and the scene")
        if len(v) > limit:
            raise ValueError(f"the prompt has {len(v)} characters; at most {limit} are allowed")
        return v

    @field_validator("size")
    @classmethod
    def _size(cls, v: str) -> str:
        P.check_size_key(v)
        return v

    @field_validator("num_clips", mode="before")
    @classmethod
    def _num_clips_words(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.strip().lower() in TO_END_OF_AUDIO else v

    @field_validator("num_clips")
    @classmethod
    def _num_clips(cls, v: int | None, info: ValidationInfo) -> int | None:
        limit = cls._limits(info).max_num_clips
        if v is not None and not 1 <= v <= limit:
            raise ValueError(
                f"num_clips must be between 1 and {limit}, or null to render to the end of the audio"
            )
        return v

    @field_validator("infer_frames")
    @classmethod
    def _infer_frames(cls, v: int) -> int:
        return P.check_infer_frames(v)

    @field_validator("sample_steps")
    @classmethod
    def _sample_steps(cls, v: int) -> int:
        return P.check_sample_steps(v)

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int | None) -> int | None:
        if v is not None and not 0 <= v <= P.SEED_MAX:
            raise ValueError(f"seed must be between 0 and {P.SEED_MAX}")
        return v

    @field_validator("checkpoint_every")
    @classmethod
    def _checkpoint_every(cls, v: int | None, info: ValidationInfo) -> int | None:
        limit = cls._limits(info).max_checkpoint_every
        if v is not None and not 1 <= v <= limit:
            raise ValueError(f"checkpoint_every must be between 1 and {limit} clips")
        return v

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, v: str | None) -> str | None:
        return None if v is None else check_webhook_url(v)

    @field_validator("webhook_events", mode="before")
    @classmethod
    def _webhook_events_words(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [e.strip() for e in v.split(",") if e.strip()]
        return v

    @field_validator("webhook_events")
    @classmethod
    def _webhook_events(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else check_webhook_events(v)

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, v: str | None) -> str | None:
        return None if v is None else check_webhook_secret(v)

    @field_validator("precision")
    @classmethod
    def _precision(cls, v: str | None) -> str | None:
        return None if v is None else P.check_precision(v)

    @field_validator("watermark", mode="before")
    @classmethod
    def _watermark_json(cls, v: Any) -> Any:
        if isinstance(v, str):  # a multipart form field carries the object as JSON text
            try:
                return json.loads(v)
            except json.JSONDecodeError:
                raise ValueError("watermark must be a JSON object of watermark settings") from None
        return v

    def resolved_seed(self) -> int:
        return self.seed if self.seed is not None else secrets.randbelow(2**31)


class Progress(BaseModel):
    clips_done: int
    clips_total: int
    frames_done: int
    frames_total: int
    fps: float | None
    eta_s: float | None
    last_checkpoint_clip: int | None


class JobOut(BaseModel):
    id: uuid.UUID
    status: str
    priority: int
    precision: str
    batch_id: uuid.UUID | None
    params: dict[str, Any]
    inputs: dict[str, str]
    progress: Progress
    attempt: int
    max_attempts: int
    cancel_requested: bool
    error: str | None
    output_key: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: dict[str, str]

    @classmethod
    def of(cls, job: Job) -> JobOut:
        base = f"/v1/jobs/{job.id}"
        return cls(
            id=job.id,
            status=job.status,
            priority=job.priority,
            precision=job.precision,
            batch_id=job.batch_id,
            params=job.params,
            inputs={"image": job.image_key, "audio": job.audio_key},
            progress=Progress(
                clips_done=job.clips_done,
                clips_total=job.clips_total,
                frames_done=job.frames_done,
                frames_total=job.frames_total,
                fps=job.fps,
                eta_s=job.eta_s,
                last_checkpoint_clip=job.last_checkpoint_clip,
            ),
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            cancel_requested=job.cancel_requested,
            error=job.error,
            output_key=job.output_key,
            created_at=job.created_at,
            updated_at=job.updated_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            links={
                "self": base,
                "events": f"{base}/events",
                "cancel": f"{base}/cancel",
                "retry": f"{base}/retry",
                "result": f"{base}/result",
                "segments": f"{base}/segments",
            },
        )


class JobList(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page.")


class EventOut(BaseModel):
    id: int = Field(description="Increases with every event of a job; the SSE event id.")
    at: datetime
    event: str
    from_status: str | None
    to_status: str | None
    reason: str
    worker_id: str | None
    attempt: int | None
    data: dict[str, Any] | None = Field(
        description="Facts of the event: progress, the checkpoint's clip, a segment's size..."
    )

    @classmethod
    def of(cls, e: JobEvent) -> EventOut:
        return cls(
            id=e.id,
            at=e.at,
            event=e.event,
            from_status=e.from_status,
            to_status=e.to_status,
            reason=e.reason,
            worker_id=e.worker_id,
            attempt=e.attempt,
            data=e.data,
        )


class EventList(BaseModel):
    events: list[EventOut]


class OutputMeta(BaseModel):
    bytes: int
    sha256: str
    frames: int | None
    duration_s: float | None


class ResultOut(BaseModel):
    url: str
    expires_in_s: int
    output_key: str
    output: OutputMeta


class SegmentOut(BaseModel):
    index: int
    first_clip: int
    clips: int
    frames: int
    bytes: int
    sha256: str
    url: str
    created_at: datetime


class SegmentList(BaseModel):
    job_id: uuid.UUID
    status: str
    clips_total: int
    expires_in_s: int
    segments: list[SegmentOut] = Field(description="Finished segments in order, with URLs.")
