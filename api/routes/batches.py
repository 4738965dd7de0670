"""/v1/batches: many jobs in one request, their combined status, and cancel for all.

A batch is JSON: `jobs` (each a job request, as for POST /v1/jobs), `defaults` merged under
every job, and `inputs`, shared inputs named once (`s3://` URIs or upload ids) that jobs
refer to by name. Each distinct input is read and checked once, however many jobs use it; an
`s3://` input is stored once, as an upload. Every job is validated before anything is written;
then the batch and all its jobs are written in one transaction.
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from api import presenters
from api.auth import Caller
from api.deps import CallerDep, ServicesDep
from api.errors import ApiError, error_responses, pydantic_error
from api.inputs import AudioInfo, ImageInfo, inspect_audio, inspect_image
from api.limits import read_json_object
from api.references import (
    LocalInput,
    StoredInput,
    check_stored,
    download_reference,
    input_sha256,
    load_uploads,
    reference_kind,
    upload_not_found,
)
from api.routes.jobs import decode_cursor, encode_cursor, page_size
from api.routes.uploads import store_upload
from api.schemas import Cursor, IdempotencyKey, JobRequest, PageSize, id_links, job_schema
from api.scripts import resolve_script, script_identity, synthesise
from api.services import Services
from api.submission import (
    check_idempotency_key,
    check_quota,
    inspect_speech,
    job_params,
    request_fingerprint,
)
from db import batches, job_store, tenants, webhooks
from db.models import Batch
from db.params import ScriptParams, presenter_key

router = APIRouter(prefix="/v1/batches", tags=["batches"], responses=error_responses())
INPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = Field(None, max_length=255, description="A label for people.")
    inputs: dict[str, str] = Field(
        default_factory=dict,
        description="Shared inputs by name: s3://bucket/key or an upload id. A job's image or "
        "audio may be one of these names.",
    )
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="Parameters every job gets unless it sets its own."
    )
    jobs: list[dict[str, Any]] = Field(
        min_length=1,
        description="Job requests (see JobRequest), image and audio by reference, or a script "
        "(with its language) instead of audio.",
    )


FROM_PRESENTER = ("prompt", "image")
"""Required in each job (or the defaults) unless it names a presenter; and audio or a script
in each job (or the defaults)."""


def request_schemas(ref_template: str, reference: str) -> dict[str, dict[str, Any]]:
    """The published schemas of a batch: `BatchRequest`, and `BatchJob`, a job request whose
    fields may come from `defaults` (so none is required on its own), with image and audio
    also by input name. Each of prompt and image must be in every job or in the defaults
    unless a presenter is named instead, and so must audio or a script, as the server checks.
    `reference` is the pattern of an input reference."""
    job = job_schema(ref_template)
    job.pop("allOf", None)
    job["title"] = "BatchJob"
    job["description"] = "A job of a batch: a JobRequest whose fields `defaults` may give."
    for kind in ("image", "audio"):
        job["properties"][kind] = {
            "type": "string",
            "description": f"The {kind}: s3://bucket/key, an upload id or the name of an input.",
            "pattern": f"{reference}|{INPUT_NAME.pattern}",
        }
    batch = BatchRequest.model_json_schema(ref_template=ref_template)
    ref = {"$ref": ref_template.format(model="BatchJob")}
    batch["properties"]["defaults"] = {
        **ref,
        "description": batch["properties"]["defaults"]["description"],
    }
    batch["properties"]["jobs"]["items"] = ref
    batch["properties"]["inputs"]["propertyNames"] = {"pattern": INPUT_NAME.pattern}
    batch["properties"]["inputs"]["additionalProperties"] = {
        "type": "string", "pattern": reference,
    }  # fmt: skip
    batch["allOf"] = [
        {
            "anyOf": [
                {
                    "required": ["defaults"],
                    "properties": {"defaults": {"anyOf": [own, by_presenter]}},
                },
                {"properties": {"jobs": {"items": {"anyOf": [own, by_presenter]}}}},
            ]
        }
        for name in FROM_PRESENTER
        for own, by_presenter in [({"required": [name]}, {"required": ["presenter"]})]
    ] + [
        {
            "anyOf": [
                *(
                    {"required": ["defaults"], "properties": {"defaults": {"required": [name]}}}
                    for name in ("audio", "script")
                ),
                {"properties": {"jobs": {"items": {
                    "anyOf": [{"required": ["audio"]}, {"required": ["script"]}]
                }}}},
            ]
        }
    ]  # fmt: skip
    return {"BatchRequest": batch, "BatchJob": job}


class BatchCreated(BaseModel):
    id: uuid.UUID
    name: str | None
    jobs_total: int
    job_ids: list[uuid.UUID] = Field(description="In the order of the request's jobs.")
    created_at: datetime


class BatchOut(BaseModel):
    id: uuid.UUID
    name: str | None
    jobs_total: int
    counts: dict[str, int] = Field(description="Jobs by status.")
    clips_done: int
    clips_total: int
    finished: bool = Field(description="No job is queued, running or stitching.")
    created_at: datetime
    links: dict[str, str]

    @classmethod
    def of(cls, summary: batches.BatchSummary) -> BatchOut:
        b = summary.batch
        return cls(
            id=b.id,
            name=b.name,
            jobs_total=b.jobs_total,
            counts=summary.counts,
            clips_done=summary.clips_done,
            clips_total=summary.clips_total,
            finished=summary.finished,
            created_at=b.created_at,
            links={
                "self": f"/v1/batches/{b.id}",
                "jobs": f"/v1/jobs?batch_id={b.id}",
                "cancel": f"/v1/batches/{b.id}/cancel",
            },
        )


class BatchList(BaseModel):
    batches: list[BatchOut]
    next_cursor: str | None


class BatchCanceled(BaseModel):
    batch: BatchOut
    canceled: int = Field(description="Jobs canceled now, or flagged to stop after their clip.")


# --------------------------------------------------------------------------- validation


@dataclass
class _Ref:
    value: str
    kind: str
    field: str
    got: LocalInput | StoredInput | None = None
    info: ImageInfo | AudioInfo | None = None
    key: str | None = None
    script: ScriptParams | None = None
    """The audio is this script, spoken (`value` is its identity)."""


@dataclass
class _Checked:
    req: JobRequest
    image: str
    audio: str
    """The audio's reference, or the identity of its script."""
    script: ScriptParams | None


SPEECH_FIELDS = ("script", "language", "voice", "speech_engine")
PRESENTER_TAKES = ("image", "prompt", "size")


def merge_defaults(defaults: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    """A job's fields over the defaults'.

    The speech: the job's own audio sets aside the defaults' script, its own script the
    defaults' audio, and the defaults' language, voice and engine apply only to a job that
    ends up with a script. The portrait: a presenter gives a job its image, prompt and size,
    so the job's own image or prompt sets the defaults' presenter aside, and a presenter (the
    job's or the defaults') sets the defaults' image, prompt and size aside."""
    drop = set()
    if job.get("audio") is not None:
        drop.add("script")
    if job.get("script") is not None:
        drop.add("audio")
    if job.get("script", None if "script" in drop else defaults.get("script")) is None:
        drop.update(SPEECH_FIELDS)
    base = {k: v for k, v in defaults.items() if k not in drop}
    if "image" in job or "prompt" in job:
        base.pop("presenter", None)
    if "presenter" in job or "presenter" in base:
        for name in PRESENTER_TAKES:
            base.pop(name, None)
    return {**base, **job}


def _validate_jobs(services: Services, body: BatchRequest, caller: Caller) -> list[_Checked]:
    """Each job as a JobRequest with the references of its image and audio (a presenter's
    job: with what it takes from its presenter; a script's: the script's identity)."""
    for name, value in body.inputs.items():
        if not INPUT_NAME.match(name):
            raise ApiError(
                422, "invalid_parameter", f"inputs: {name!r} is not a valid input name", "inputs"
            )
        reference_kind(value, f"inputs.{name}")
    validated: list[tuple[JobRequest, ScriptParams | None]] = []
    for i, job in enumerate(body.jobs):
        field = f"jobs[{i}]"
        try:
            req = JobRequest.model_validate(
                merge_defaults(body.defaults, job), context={"limits": caller.limits}
            )
        except ValidationError as e:
            error = pydantic_error(list(e.errors()))
            error.field = f"{field}.{error.field}" if error.field else field
            error.message = f"{field}.{error.message}"
            raise error from None
        req.check_presenter_choice(f"{field}.")
        if req.audio and req.script is not None:
            raise ApiError(
                422, "script_and_audio", f"{field}: send either audio or a script, not both "
                "(the batch's defaults may give one of them)", f"{field}.script",
            )  # fmt: skip
        validated.append((req, resolve_script(services.speech, req, f"{field}.")))
    named = [req.presenter for req, _ in validated if req.presenter is not None]
    found = presenters.find_many(services, caller.tenant, named) if named else {}
    checked = []
    for i, (req, script) in enumerate(validated):
        field = f"jobs[{i}]"
        if req.presenter is not None:
            if req.presenter not in found:
                raise presenters.not_found(req.presenter, f"{field}.presenter")
            req = req.with_presenter(found[req.presenter])
        refs = []
        for kind in ("image", "audio"):
            value = getattr(req, kind)
            if kind == "audio" and script is not None:
                refs.append(script_identity(script))
                continue
            if not value:
                raise ApiError(
                    422,
                    "missing_input",
                    f"{field}.{kind} is required: an input name, s3:// URI or upload id"
                    + (", or a script (with its language)" if kind == "audio" else ""),
                    f"{field}.{kind}",
                )
            value = body.inputs.get(value, value)
            reference_kind(value, f"{field}.{kind}")
            refs.append(value)
        checked.append(_Checked(req, refs[0], refs[1], script))
    return checked


def _check_webhooks(services: Services, requests: list[JobRequest]) -> None:
    """Each distinct webhook URL checked (resolved) once, the first job using it named."""
    urls = {}
    for i, req in enumerate(requests):
        if req.webhook_url:
            urls.setdefault(req.webhook_url, f"jobs[{i}].webhook_url")
    for url, field in urls.items():
        services.check_webhook_url(url, field)


def _speak(services: Services, caller: Caller, scripts: list[_Ref], workdir: Path) -> None:
    """Each distinct script spoken once, several at a time (each engine call is its own
    process or holds its own model), and checked as audio."""

    def speak(n: int, ref: _Ref) -> None:
        assert ref.script is not None
        field = ref.field.removesuffix("script")
        ref.got = synthesise(services.speech, ref.script, workdir / f"script-{n}", field)
        ref.info = inspect_speech(ref.got.path, caller, field)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for done in [pool.submit(speak, n, ref) for n, ref in enumerate(scripts)]:
            done.result()  # the first job's error, in the order of the jobs


def _resolve(
    services: Services, caller: Caller, refs: dict[tuple[str, str], _Ref], workdir: Path
) -> None:
    """Read and check each distinct input once (uploads: look up; s3: download and inspect;
    scripts: speak)."""
    scripts = [r for r in refs.values() if r.script is not None]
    refs = {k: r for k, r in refs.items() if r.script is None}
    upload_ids = [r.value for r in refs.values() if reference_kind(r.value, r.field) == "upload"]
    stored = load_uploads(services.database, caller.tenant, upload_ids)
    limits = caller.limits
    for n, ref in enumerate(refs.values()):
        if ref.value in stored:
            ref.got = stored[ref.value]
            check_stored(ref.got, ref.kind, limits, ref.field)  # type: ignore[arg-type]
            ref.info, ref.key = ref.got.info(), ref.got.key
            continue
        if ref.value in upload_ids:
            raise upload_not_found(ref.value, ref.field)
        limit = limits.max_image_bytes if ref.kind == "image" else limits.max_audio_bytes
        local = download_reference(
            services.s3_reader,
            services.config.allowed_input_buckets,
            ref.value,
            ref.kind,
            limit,
            workdir / str(n),
            ref.field,
        )
        try:
            ref.info = (inspect_image if ref.kind == "image" else inspect_audio)(local.path, limits)
        except ApiError as e:
            e.message, e.field = f"{ref.field} ({ref.value}): {e.message}", ref.field
            raise
        ref.got = local
    _speak(services, caller, scripts, workdir)


def _store_imports(services: Services, caller: Caller, refs: dict[tuple[str, str], _Ref]) -> None:
    for ref in refs.values():
        if isinstance(ref.got, LocalInput):
            upload, _ = store_upload(
                services, caller.tenant, ref.kind, ref.got, caller.limits, ref.info
            )
            ref.key = upload.key


def _create(
    services: Services,
    caller: Caller,
    body: BatchRequest,
    idempotency_key: str | None,
    fingerprint: str,
    workdir: Path,
) -> tuple[Batch, list[uuid.UUID], bool]:
    if idempotency_key is not None:
        replayed = _replay(services, caller, idempotency_key, fingerprint)
        if replayed is not None:
            return *replayed, False
    checked = _validate_jobs(services, body, caller)
    _check_webhooks(services, [c.req for c in checked])
    refs: dict[tuple[str, str], _Ref] = {}
    for i, c in enumerate(checked):
        refs.setdefault((c.image, "image"), _Ref(c.image, "image", f"jobs[{i}].image"))
        audio_field = f"jobs[{i}].script" if c.script is not None else f"jobs[{i}].audio"
        refs.setdefault((c.audio, "audio"), _Ref(c.audio, "audio", audio_field, script=c.script))
    _resolve(services, caller, refs, workdir)

    job_ids = sorted(uuid.uuid4() for _ in checked)  # ascending: listing by id keeps the order
    planned = []  # (request, params, clips_total) per job
    for i, c in enumerate(checked):
        params, clips_total = job_params(
            c.req,
            refs[(c.image, "image")].info,  # type: ignore[arg-type]
            refs[(c.audio, "audio")].info,  # type: ignore[arg-type]
            services.config,
            field=f"jobs[{i}].",
            script=c.script,
        )
        planned.append((c.req, params, clips_total))
    requests = [req for req, _, _ in planned]
    with services.database.transaction() as s:
        check_quota(services, s, caller, len(planned))
        secret = None
        if any(req.webhook_url and not req.webhook_secret for req in requests):
            secret = tenants.ensure_tenant(s, caller.tenant).webhook_secret
    _store_imports(services, caller, refs)

    batch_id = uuid.uuid4()
    jobs = []
    for job_id, (req, params, clips_total), c in zip(job_ids, planned, checked, strict=True):
        precision = req.precision or services.config.default_precision
        portrait = refs[(c.image, "image")]
        assert portrait.got is not None
        jobs.append(
            job_store.NewJob(
                id=job_id,
                tenant=caller.tenant,
                params=params,
                image_key=portrait.key,  # type: ignore[arg-type]
                audio_key=refs[(c.audio, "audio")].key,  # type: ignore[arg-type]
                clips_total=clips_total,
                max_attempts=services.config.max_attempts,
                priority=req.priority,
                precision=precision,
                batch_id=batch_id,
                presenter_key=presenter_key(
                    caller.tenant, input_sha256(portrait.got), params, precision
                ),
                presenter=req.presenter,
            )
        )
    job_hooks = [
        batches.JobWebhook(
            url=req.webhook_url,
            events=req.webhook_events or list(webhooks.WEBHOOK_EVENTS),
            secret=req.webhook_secret or secret,  # type: ignore[arg-type]
        )
        if req.webhook_url
        else None
        for req in requests
    ]
    new = batches.NewBatch(
        id=batch_id,
        tenant=caller.tenant,
        jobs=jobs,
        webhooks=job_hooks,
        name=body.name,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
    )
    try:
        with services.database.transaction() as s:
            batch = batches.create_batch(s, new)
        services.quota.admitted(caller.tenant, len(jobs))
    except sa.exc.IntegrityError:
        replayed = (
            _replay(services, caller, idempotency_key, fingerprint) if idempotency_key else None
        )
        if replayed is None:
            raise
        return *replayed, False
    return batch, job_ids, True


def _replay(
    services: Services, caller: Caller, key: str, fingerprint: str
) -> tuple[Batch, list[uuid.UUID]] | None:
    with services.database.transaction() as s:
        batch = batches.find_by_idempotency_key(s, caller.tenant, key)
        if batch is None:
            return None
        if batch.request_hash != fingerprint:
            raise ApiError(
                409,
                "idempotency_key_reused",
                f"Idempotency-Key {key!r} was sent before with a different batch ({batch.id}); "
                "send the same batch to get it back, or use a new key",
            )
        return batch, batches.job_ids(s, batch.id)


# --------------------------------------------------------------------------- routes


BATCH_LINKS = id_links(
    "batch_id",
    GetBatch=("get", "/v1/batches/{batch_id}"),
    CancelBatch=("post", "/v1/batches/{batch_id}/cancel"),
)
BATCH_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchRequest"}}},
    }
}


@router.post(
    "",
    status_code=201,
    response_model=BatchCreated,
    openapi_extra=BATCH_DOC,
    responses={
        200: {
            "description": "an earlier batch with the same Idempotency-Key and request",
            "links": BATCH_LINKS,
        },
        201: {"description": "the batch, its jobs queued", "links": BATCH_LINKS},
        **error_responses(400, 409, 413, 503),
    },
)
async def create_batch(
    request: Request,
    services: ServicesDep,
    caller: CallerDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Queue many jobs at once; their ids come back in the order of `jobs`."""
    check_idempotency_key(idempotency_key)
    raw = await read_json_object(request, services.config.max_batch_bytes, "batch requests")
    try:
        body = BatchRequest.model_validate(raw)
    except ValidationError as e:
        raise pydantic_error(list(e.errors())) from None
    limit = services.config.max_batch_jobs
    if len(body.jobs) > limit:
        raise ApiError(
            422,
            "too_many_jobs",
            f"a batch holds at most {limit} jobs, this one has {len(body.jobs)}; split it",
            "jobs",
        )
    fingerprint = request_fingerprint(raw, "", "")
    with tempfile.TemporaryDirectory(prefix="longtake-batch-") as workdir:
        batch, job_ids, created = await run_in_threadpool(
            _create, services, caller, body, idempotency_key, fingerprint, Path(workdir)
        )
    if created:
        services.job_queued()
    out = BatchCreated(
        id=batch.id,
        name=batch.name,
        jobs_total=batch.jobs_total,
        job_ids=job_ids,
        created_at=batch.created_at,
    )
    return JSONResponse(
        out.model_dump(mode="json"),
        status_code=201 if created else 200,
        headers={"Location": f"/v1/batches/{batch.id}"},
    )


def _get(services: Services, caller: Caller, batch_id: uuid.UUID) -> batches.BatchSummary:
    with services.database.transaction() as s:
        batch = batches.get_batch(s, batch_id, tenant=caller.tenant)
        if batch is None:
            raise ApiError(404, "batch_not_found", f"batch {batch_id} does not exist")
        return batches.summarize(s, batch)


@router.get("", response_model=BatchList, responses=error_responses(400))
def list_batches(
    services: ServicesDep,
    caller: CallerDep,
    limit: PageSize = 50,
    cursor: Cursor = None,
) -> BatchList:
    """Batches, newest first."""
    limit = page_size(services, limit)
    before = decode_cursor(cursor) if cursor is not None else None
    with services.database.transaction() as s:
        rows = batches.list_batches(s, tenant=caller.tenant, before=before, limit=limit + 1)
        page = [BatchOut.of(batches.summarize(s, b)) for b in rows[:limit]]
    more = len(rows) > limit
    return BatchList(
        batches=page,
        next_cursor=encode_cursor(rows[limit - 1].created_at, rows[limit - 1].id) if more else None,
    )


@router.get("/{batch_id}", response_model=BatchOut, responses=error_responses(404))
def get_batch(batch_id: uuid.UUID, services: ServicesDep, caller: CallerDep) -> BatchOut:
    """How far the batch is: its jobs by status and their clips."""
    return BatchOut.of(_get(services, caller, batch_id))


@router.post("/{batch_id}/cancel", response_model=BatchCanceled, responses=error_responses(404))
def cancel_batch(batch_id: uuid.UUID, services: ServicesDep, caller: CallerDep) -> BatchCanceled:
    """Cancel every unfinished job: queued ones at once, running ones after their clip."""
    with services.database.transaction() as s:
        batch = batches.get_batch(s, batch_id, tenant=caller.tenant)
        if batch is None:
            raise ApiError(404, "batch_not_found", f"batch {batch_id} does not exist")
        changed = batches.cancel_batch(s, batch, reason="batch canceled through the API")
    return BatchCanceled(batch=BatchOut.of(_get(services, caller, batch_id)), canceled=changed)
