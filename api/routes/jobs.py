"""/v1/jobs: submit, inspect, list, cancel, retry, fetch the result."""

from __future__ import annotations

import base64
import binascii
import tempfile
import uuid
from datetime import datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse

from api import submission
from api.errors import ApiError
from api.schemas import EventList, EventOut, JobList, JobOut, ResultOut
from api.services import Services, get_services
from db import repository as repo
from db.models import Job
from db.states import IllegalTransition, JobStatus
from storage.base import StorageError

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
ServicesDep = Annotated[Services, Depends(get_services)]

SUBMIT_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "audio", "prompt"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "audio": {"type": "string", "format": "binary"},
                        "prompt": {"type": "string"},
                        "params": {
                            "type": "string",
                            "description": "all parameters as one JSON object (instead of fields)",
                        },
                    },
                }
            },
            "application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}},
        },
    }
}


def _job_response(job: Job, status_code: int = 200) -> JSONResponse:
    return JSONResponse(
        JobOut.of(job).model_dump(mode="json"),
        status_code=status_code,
        headers={"Location": f"/v1/jobs/{job.id}"},
    )


def _not_found(job_id: uuid.UUID) -> ApiError:
    return ApiError(404, "job_not_found", f"job {job_id} does not exist")


def _conflict(e: IllegalTransition) -> ApiError:
    return ApiError(409, "invalid_state", str(e))


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    openapi_extra=SUBMIT_DOC,
    responses={200: {"description": "an earlier job with the same Idempotency-Key"}},
)
async def submit_job(
    request: Request,
    services: ServicesDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    """Validate the inputs and parameters, store the inputs, queue the job."""
    with tempfile.TemporaryDirectory(prefix="longtake-submit-") as workdir:
        job, created = await submission.submit(request, services, Path(workdir), idempotency_key)
    return _job_response(job, 201 if created else 200)


def _encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, job_id = raw.partition("|")
        return datetime.fromisoformat(created), uuid.UUID(job_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ApiError(
            400, "invalid_cursor", "cursor is not one this API returned; start without it"
        ) from None


@router.get("", response_model=JobList)
def list_jobs(
    services: ServicesDep,
    status: Annotated[list[str] | None, Query(description="Repeat to match several.")] = None,
    limit: Annotated[int, Query(ge=1)] = 50,
    cursor: str | None = None,
) -> JobList:
    """Jobs, newest first, one page at a time."""
    statuses = []
    for value in status or []:
        try:
            statuses.append(JobStatus(value))
        except ValueError:
            known = ", ".join(s.value for s in JobStatus)
            raise ApiError(
                422,
                "invalid_parameter",
                f"status {value!r} is unknown; use one of: {known}",
                "status",
            ) from None
    limit = min(limit, services.config.max_page_size)
    before = _decode_cursor(cursor) if cursor else None
    with services.database.transaction() as s:
        jobs = repo.list_jobs(
            s, tenant=services.config.tenant, statuses=statuses, before=before, limit=limit + 1
        )
    page, more = jobs[:limit], len(jobs) > limit
    return JobList(
        jobs=[JobOut.of(j) for j in page],
        next_cursor=_encode_cursor(page[-1]) if more else None,
    )


def _get(services: Services, job_id: uuid.UUID) -> Job:
    with services.database.transaction() as s:
        job = repo.get_job(s, job_id, tenant=services.config.tenant)
    if job is None:
        raise _not_found(job_id)
    return job


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: uuid.UUID, services: ServicesDep) -> JobOut:
    return JobOut.of(_get(services, job_id))


@router.get("/{job_id}/events", response_model=EventList)
def get_events(job_id: uuid.UUID, services: ServicesDep) -> EventList:
    """The job's history: every state change with its reason."""
    _get(services, job_id)
    with services.database.transaction() as s:
        return EventList(events=[EventOut.of(e) for e in repo.list_events(s, job_id)])


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: uuid.UUID, services: ServicesDep) -> JobOut:
    """A queued job is canceled at once; a running one stops at its next clip boundary."""
    try:
        with services.database.transaction() as s:
            job = repo.request_cancel(
                s, job_id, tenant=services.config.tenant, reason="canceled through the API"
            )
    except repo.JobNotFound:
        raise _not_found(job_id) from None
    except IllegalTransition as e:
        raise _conflict(e) from None
    return JobOut.of(job)


@router.post("/{job_id}/retry", response_model=JobOut)
def retry_job(job_id: uuid.UUID, services: ServicesDep) -> JobOut:
    """Queue a failed or canceled job again; it resumes from its last checkpoint."""
    try:
        with services.database.transaction() as s:
            job = repo.retry(
                s,
                job_id,
                tenant=services.config.tenant,
                attempts=services.config.max_attempts,
                reason="retried through the API",
            )
    except repo.JobNotFound:
        raise _not_found(job_id) from None
    except IllegalTransition as e:
        raise _conflict(e) from None
    services.job_queued()
    return JobOut.of(job)


@router.get("/{job_id}/result", response_model=ResultOut)
def get_result(job_id: uuid.UUID, services: ServicesDep, redirect: bool = False):
    """A presigned URL of the finished video (`?redirect=true`: a redirect to it)."""
    job = _get(services, job_id)
    if job.status != JobStatus.SUCCEEDED or not job.output_key:
        progress = f"clip {job.clips_done} of {job.clips_total}"
        raise ApiError(
            409,
            "result_not_ready",
            f"job {job_id} is {job.status} ({progress}); its result exists once it has succeeded",
        )
    expires = services.config.presign_expires_s
    try:
        url = services.storage.presign_get(job.output_key, expires)
    except StorageError as e:
        raise ApiError(503, "storage_unavailable", f"could not sign the result URL: {e}") from None
    if redirect:
        return RedirectResponse(url, status_code=307)
    return ResultOut(url=url, expires_in_s=expires, output_key=job.output_key)
