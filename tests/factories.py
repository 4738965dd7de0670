"""Test data built through the real contracts (never hand-written dicts of parameters)."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from db.failures import Failure, FailureKind
from db.leases import Lease
from db.models import utcnow
from db.params import AudioFacts, ImageFacts, JobParams, presenter_key
from pipeline import params as P


def job_params(**overrides: Any) -> JobParams:
    """A valid job's parameters: a 720×400 portrait, 4 s of 16 kHz speech; override any field."""
    fields: dict[str, Any] = dict(
        prompt="a person talking",
        size="720*400",
        width=720,
        height=400,
        num_clips=None,
        infer_frames=P.INFER_FRAMES_DEFAULT,
        sample_steps=P.SAMPLE_STEPS_DEFAULT,
        seed=0,
        checkpoint_every=2,
        audio_duration_s=4.0,
        image=ImageFacts(width=720, height=400, format="PNG"),
        audio=AudioFacts(codec="pcm_s16le", sample_rate=16000, channels=1),
    )
    fields.update(overrides)
    return JobParams(**fields)


def presenter(
    tenant: str, portrait: bytes = b"portrait", params: JobParams | None = None, precision="bf16"
) -> str:
    """The presenter key of a job of `tenant` with this portrait (`jobs.presenter_key`)."""
    digest = hashlib.sha256(portrait).hexdigest()
    return presenter_key(tenant, digest, params or job_params(), precision)


def lease_for(job_id: uuid.UUID, worker_id: str, attempt: int) -> Lease:
    """The lease a worker would hold for `attempt` of a job (whether or not it still does)."""
    return Lease(job_id, worker_id, attempt, expires_at=utcnow())


def failure(message: str, kind: FailureKind = "render") -> Failure:
    """A failed attempt as a worker records it."""
    return Failure(message, kind, detail=f"RuntimeError: {message}")
