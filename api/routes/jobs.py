"""/v1/jobs: submit, inspect, list, follow (events, SSE), cancel, retry, segments, result.

Every route acts for the calling tenant only: another tenant's job is a 404, never a 403.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from api import event_stream, submission
from api.auth import Caller
from api.deps import CallerDep, ServicesDep
from api.errors import ApiError, error_responses
from api.outputs import measure_output
from api.schemas import (
    CURSOR_PATTERN,
    LAST_EVENT_ID_PATTERN,
    After,
    Cursor,
    EventList,
    EventOut,
    IdempotencyKey,
    JobList,
    JobOut,
    OutputMeta,
    PageSize,
    ResultOut,
    SegmentList,
    SegmentOut,
    id_links,
)
from api.services import Services
from db import job_store
from db.models import Job
from db.states import IllegalTransition, JobStatus
from storage.base import StorageError

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=error_responses())

SUBMIT_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            # the form's schema is made from JobRequest when the document is (api.app)
            "multipart/form-data": {
                "schema": {"$ref": "#/components/schemas/JobForm"},
                "encoding": {"watermark": {"contentType": "application/json"}},
            },
            "application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}},
        },
    }
}


JOB_LINKS = id_links(
    "job_id",
    GetJob=("get", "/v1/jobs/{job_id}"),
    GetJobEvents=("get", "/v1/jobs/{job_id}/events"),
    CancelJob=("post", "/v1/jobs/{job_id}/cancel"),
    RetryJob=("post", "/v1/jobs/{job_id}/retry"),
    GetJobSegments=("get", "/v1/jobs/{job_id}/segments"),
    GetJobResult=("get", "/v1/jobs/{job_id}/result"),
)


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
    responses={
        200: {
            "description": "an earlier job with the same Idempotency-Key and request",
            "links": JOB_LINKS,
        },
        201: {"description": "the job, queued", "links": JOB_LINKS},
        **error_responses(400, 409, 411, 413, 415, 503),
    },
)
async def submit_job(
    request: Request,
    services: ServicesDep,
    caller: CallerDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Validate the inputs and parameters, store the inputs, queue the job."""
    with submission.Scratch() as scratch:
        job, created = await submission.submit(request, services, caller, scratch, idempotency_key)
    request.state.job_id = str(job.id)
    return _job_response(job, 201 if created else 200)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def encode_cursor(created_at: datetime, item_id: uuid.UUID) -> str:
    """The position after an item: its creation time (microseconds since 1970, 14 hex digits,
    good until the year 4253) and its id (32 hex digits). Every string of the published
    pattern decodes to a position, so a cursor the schema allows is one the server takes."""
    micros = (created_at - _EPOCH) // _MICROSECOND
    return f"{micros:014x}{item_id.hex}"


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    if not re.fullmatch(CURSOR_PATTERN, cursor):
        raise ApiError(
            400, "invalid_cursor", "cursor is not one this API returned; start without it"
        )
    return _EPOCH + int(cursor[:14], 16) * _MICROSECOND, uuid.UUID(hex=cursor[14:])


def page_size(services: Services, limit: int) -> int:
    most = services.config.max_page_size
    if not 1 <= limit <= most:
        raise ApiError(
            422, "invalid_parameter", f"limit: must be between 1 and {most}, got {limit}", "limit"
        )
    return limit


@router.get("", response_model=JobList, responses=error_responses(400))
def list_jobs(
    services: ServicesDep,
    caller: CallerDep,
    status: Annotated[list[JobStatus] | None, Query(description="Repeat to match several.")] = None,
    batch_id: Annotated[uuid.UUID | None, Query(description="Only this batch's jobs.")] = None,
    limit: PageSize = 50,
    cursor: Cursor = None,
) -> JobList:
    """Jobs, newest first, one page at a time."""
    statuses = list(status or [])
    limit = page_size(services, limit)
    before = decode_cursor(cursor) if cursor is not None else None
    with services.database.transaction() as s:
        jobs = job_store.list_jobs(
            s,
            tenant=caller.tenant,
            statuses=statuses,
            before=before,
            limit=limit + 1,
            batch_id=batch_id,
        )
    page, more = jobs[:limit], len(jobs) > limit
    return JobList(
        jobs=[JobOut.of(j) for j in page],
        next_cursor=encode_cursor(page[-1].created_at, page[-1].id) if more else None,
    )


def get_owned(services: Services, caller: Caller, job_id: uuid.UUID) -> Job:
    with services.database.transaction() as s:
        job = job_store.get_job(s, job_id, tenant=caller.tenant)
    if job is None:
        raise _not_found(job_id)
    return job


@router.get("/{job_id}", response_model=JobOut, responses=error_responses(404))
def get_job(job_id: uuid.UUID, services: ServicesDep, caller: CallerDep) -> JobOut:
    return JobOut.of(get_owned(services, caller, job_id))


EVENTS_DOC = {
    200: {
        "description": "JSON (the history), or with `Accept: text/event-stream` a live stream",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **error_responses(400, 404),
}


@router.get("/{job_id}/events", response_model=EventList, responses=EVENTS_DOC)
async def get_events(
    job_id: uuid.UUID,
    request: Request,
    services: ServicesDep,
    caller: CallerDep,
    after: After = None,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="The last event id a stream delivered: replay what came after it.",
            json_schema_extra={"pattern": LAST_EVENT_ID_PATTERN},
        ),
    ] = None,
):
    """The job's history, every state change with its reason, progress, checkpoints and
    segments; as Server-Sent Events when asked for `text/event-stream` (replaying events after
    `Last-Event-ID`, then live until the job ends)."""
    await run_in_threadpool(get_owned, services, caller, job_id)
    start = after or 0
    if last_event_id is not None:
        if not re.fullmatch(LAST_EVENT_ID_PATTERN, last_event_id.strip()):
            raise ApiError(
                400,
                "invalid_last_event_id",
                "Last-Event-ID must be an event id: a number of at most 18 digits",
            )
        start = max(start, int(last_event_id))
    if "text/event-stream" in request.headers.get("accept", ""):
        return StreamingResponse(
            event_stream.stream(services, job_id, start),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def history() -> EventList:
        with services.database.transaction() as s:
            events = job_store.list_events(s, job_id, after_id=start or None)
        return EventList(events=[EventOut.of(e) for e in events])

    return await run_in_threadpool(history)


@router.post("/{job_id}/cancel", response_model=JobOut, responses=error_responses(404, 409))
def cancel_job(job_id: uuid.UUID, services: ServicesDep, caller: CallerDep) -> JobOut:
    """A queued job is canceled at once; a running one stops at its next clip boundary."""
    try:
        with services.database.transaction() as s:
            job = job_store.request_cancel(
                s, job_id, tenant=caller.tenant, reason="canceled through the API"
            )
    except job_store.JobNotFound:
        raise _not_found(job_id) from None
    except IllegalTransition as e:
        raise _conflict(e) from None
    return JobOut.of(job)


@router.post("/{job_id}/retry", response_model=JobOut, responses=error_responses(404, 409))
def retry_job(job_id: uuid.UUID, services: ServicesDep, caller: CallerDep) -> JobOut:
    """Queue a failed or canceled job again; it resumes from its last checkpoint."""
    try:
        with services.database.transaction() as s:
            job = job_store.retry(
                s,
                job_id,
                tenant=caller.tenant,
                attempts=services.config.max_attempts,
                reason="retried through the API",
            )
    except job_store.JobNotFound:
        raise _not_found(job_id) from None
    except IllegalTransition as e:
        raise _conflict(e) from None
    services.job_queued()
    return JobOut.of(job)


ExpiresIn = Annotated[
    int | None,
    Query(ge=1, description="Lifetime of the URLs in seconds (default: the server's; at most "
          "its maximum, 7 days by default)."),
]  # fmt: skip


def _expires(services: Services, expires_in: int | None) -> int:
    if expires_in is None:
        return services.config.presign_expires_s
    if expires_in > services.config.presign_max_s:
        raise ApiError(
            422,
            "invalid_parameter",
            f"expires_in: at most {services.config.presign_max_s} seconds",
            "expires_in",
        )
    return expires_in


def _presign(services: Services, key: str, expires: int) -> str:
    try:
        return services.storage.presign_get(key, expires)
    except StorageError as e:
        raise ApiError(503, "storage_unavailable", f"could not sign a URL: {e}") from None


@router.get("/{job_id}/segments", response_model=SegmentList, responses=error_responses(404, 503))
def get_segments(
    job_id: uuid.UUID, services: ServicesDep, caller: CallerDep, expires_in: ExpiresIn = None
) -> SegmentList:
    """The segments finished so far, in order, with presigned URLs: a long render can be
    watched or used before it ends. A resumed interval's segment replaces the old one. Once
    the job has succeeded they are listed only while they are kept (the output has them)."""
    job = get_owned(services, caller, job_id)
    expires = _expires(services, expires_in)
    with services.database.transaction() as s:
        segments = job_store.list_segments(s, job_id)
    if segments and job.status == JobStatus.SUCCEEDED:
        # workers remove a finished job's segments (the output holds the same frames) unless
        # told to keep them: hand out no links to objects that are gone
        try:
            if not services.storage.exists(segments[0].key):
                segments = []
        except StorageError as e:
            raise ApiError(503, "storage_unavailable", f"could not read storage: {e}") from None
    return SegmentList(
        job_id=job.id,
        status=job.status,
        clips_total=job.clips_total,
        expires_in_s=expires,
        segments=[
            SegmentOut(
                index=g.index,
                first_clip=g.first_clip,
                clips=g.clips,
                frames=g.frames,
                bytes=g.bytes,
                sha256=g.sha256,
                url=_presign(services, g.key, expires),
                created_at=g.created_at,
            )
            for g in segments
        ],
    )


@router.get(
    "/{job_id}/result",
    response_model=ResultOut,
    responses={307: {"description": "with ?redirect=true"}, **error_responses(404, 409, 503)},
)
def get_result(
    job_id: uuid.UUID,
    services: ServicesDep,
    caller: CallerDep,
    redirect: bool = False,
    expires_in: ExpiresIn = None,
):
    """A presigned URL of the finished video and what it is (bytes, sha256, frames,
    duration); `?redirect=true` answers with a redirect to the URL."""
    expires = _expires(services, expires_in)
    job = get_owned(services, caller, job_id)
    if job.status != JobStatus.SUCCEEDED or not job.output_key:
        progress = f"clip {job.clips_done} of {job.clips_total}"
        raise ApiError(
            409,
            "result_not_ready",
            f"job {job_id} is {job.status} ({progress}); its result exists once it has succeeded",
        )
    url = _presign(services, job.output_key, expires)
    if redirect:
        return RedirectResponse(url, status_code=307)
    meta = job.output_meta or {}
    if not {"bytes", "sha256"} <= meta.keys():
        try:
            meta = {**measure_output(services.storage, job.output_key), **meta}
        except StorageError as e:
            raise ApiError(503, "storage_unavailable", f"could not read the output: {e}") from None
        with services.database.transaction() as s:
            job_store.set_output_meta(s, job.id, meta)
    return ResultOut(
        url=url,
        expires_in_s=expires,
        output_key=job.output_key,
        output=OutputMeta(
            bytes=meta["bytes"],
            sha256=meta["sha256"],
            frames=meta.get("frames"),
            duration_s=meta.get("duration_s"),
        ),
    )
