"""POST /v1/jobs: read the request, validate everything, then store inputs and write the job.

Nothing is stored before every check has passed; if writing the job fails afterwards, the
stored inputs are deleted again. A rejected request leaves no row, no object, no message.

Idempotency: a request with an `Idempotency-Key` is fingerprinted (its parameters and the
sha256 of its files, or the references it names). The same key with the same fingerprint
returns the first job; with another fingerprint it is a 409. Concurrent twins race on the
unique (tenant, idempotency_key) constraint: one inserts, the others find its job.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import Request
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api import forms, presenters, text
from api.auth import Caller
from api.config import ApiConfig, InputLimits
from api.errors import ApiError, pydantic_error
from api.inputs import AudioInfo, ImageInfo, inspect_audio, inspect_image
from api.limits import declared_length, read_json_object
from api.references import (
    LocalInput,
    StoredInput,
    check_stored,
    copy_upload,
    download_reference,
    input_sha256,
    reference_kind,
    upload_not_found,
)
from api.schemas import JobRequest
from api.scripts import resolve_script, script_identity, synthesise
from api.services import Services
from db import job_store, tenants, uploads, webhooks
from db.models import Job
from db.params import (
    AudioFacts,
    ImageFacts,
    JobParams,
    ScriptParams,
    WatermarkParams,
    presenter_key,
)
from pipeline import params as P
from storage import keys
from storage.base import StorageError

log = logging.getLogger(__name__)

FORM_FIELD_LIMIT = 256 * 1024
IDEMPOTENCY_KEY_MAX = 255

Input = LocalInput | StoredInput


@dataclass
class Submission:
    request: JobRequest
    image: UploadFile | str | None
    """None for a job that names a presenter."""
    audio: UploadFile | str | ScriptParams
    """An uploaded file, a reference, or a script to synthesise."""


def check_idempotency_key(key: str | None) -> None:
    if key is not None and not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX:
        raise ApiError(
            400,
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} characters",
        )


async def submit(
    request: Request,
    services: Services,
    caller: Caller,
    scratch: Scratch,
    idempotency_key: str | None,
) -> tuple[Job, bool]:
    """Returns (job, created). An idempotency key seen before returns the earlier job."""
    check_idempotency_key(idempotency_key)
    async with contextlib.AsyncExitStack() as opened:  # closes the form's spooled files
        submission = await read_request(request, services, caller, opened)
        req = submission.request
        image: LocalInput | UploadRef | None = None
        if submission.image is not None:
            image = await materialise(services, caller, submission.image, "image", scratch)
        audio = await materialise(services, caller, submission.audio, "audio", scratch)
    # a presenter's job is fingerprinted as sent (by the presenter's name): retrying it returns
    # the job even when the presenter has changed or gone since
    fingerprint = request_fingerprint(
        req.model_dump(mode="json", exclude={"image", "audio"} | _unset_presenter(req)),
        f"presenter:{req.presenter}" if image is None else _identity(submission.image, image),
        _identity(submission.audio, audio),
    )
    script = submission.audio if isinstance(submission.audio, ScriptParams) else None
    if req.presenter is not None:
        try:
            presenter = await run_in_threadpool(
                presenters.find, services, caller.tenant, req.presenter
            )
        except ApiError:
            earlier = idempotency_key and await run_in_threadpool(
                _find_idempotent, services, caller.tenant, idempotency_key
            )
            if earlier:
                return replay(earlier, fingerprint, idempotency_key), False  # type: ignore[arg-type]
            raise
        req = req.with_presenter(presenter)
        image = UploadRef(presenter.portrait.id)
    assert image is not None
    return await run_in_threadpool(
        _accept, services, caller, req, image, audio, idempotency_key, fingerprint, script
    )


def _unset_presenter(req: JobRequest) -> set[str]:
    """Left out of the fingerprint when unused, so a job's fingerprint is what it was before
    jobs could name presenters."""
    return {"presenter"} if req.presenter is None else set()


def request_fingerprint(fields: dict[str, Any], image: str, audio: str) -> str:
    canonical = json.dumps({**fields, "image": image, "audio": audio}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _identity(source: UploadFile | str | ScriptParams, got: LocalInput | UploadRef) -> str:
    """What identifies an input in a fingerprint: the bytes of a file, a script's text and
    voice, else its reference."""
    if isinstance(source, ScriptParams):
        return script_identity(source)
    if isinstance(source, UploadFile):
        assert isinstance(got, LocalInput)
        return f"sha256:{got.sha256}"
    return source


# --------------------------------------------------------------------------- parsing


async def read_request(
    request: Request, services: Services, caller: Caller, opened: contextlib.AsyncExitStack
) -> Submission:
    """The request's parameters and inputs; a form's files stay open until `opened` closes."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    form = content_type == "multipart/form-data"
    if form:
        raw, files = await _read_form(request, caller, opened)
    elif content_type == "application/json":
        raw, files = await read_json_object(request, services.config.max_json_bytes), {}
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type {content_type or '(none)'} is not accepted; send multipart/form-data "
            "(files image and audio, plus parameters) or application/json (references to "
            "s3:// objects or uploads)",
        )
    try:
        job_request = JobRequest.model_validate(
            raw, context={"limits": caller.limits, "form": form}
        )
    except ValidationError as e:
        raise pydantic_error(list(e.errors())) from None
    job_request.check_presenter_choice(image_file="image" in files)
    image = files.get("image") or job_request.image
    audio = files.get("audio") or job_request.audio
    if audio and job_request.script is not None:
        raise ApiError(
            422, "script_and_audio", "send either audio or a script, not both: the script is "
            "spoken into the job's audio", "script",
        )  # fmt: skip
    how = "upload it as a file field" if form else "give an s3:// reference or an upload id"
    if not image and job_request.presenter is None:
        raise ApiError(
            422, "missing_input", f"image is required: {how} named image, or name a presenter",
            "image",
        )  # fmt: skip
    # which engine, language and voice (their lists may take the engine a moment to read)
    script = await run_in_threadpool(resolve_script, services.speech, job_request)
    if not audio and script is None:
        raise ApiError(
            422, "missing_input", f"audio is required: {how} named audio, or send a script "
            "(with its language) to be spoken", "audio",
        )  # fmt: skip
    # a presenter's job has no image of its own: check_presenter_choice refused one
    return Submission(job_request, image or None, audio or script)  # type: ignore[arg-type]


def field_too_large(limits: InputLimits) -> Callable[[str, int], ApiError]:
    def too_large(name: str, limit: int) -> ApiError:
        if name == "prompt":
            return ApiError(
                422, "invalid_parameter", f"prompt: the prompt is longer than {limit} bytes; "
                f"at most {limits.max_prompt_chars} characters are allowed", "prompt",
            )  # fmt: skip
        if name == "script":
            return ApiError(
                422, "invalid_parameter", f"script: the script is longer than {limit} bytes; "
                f"at most {limits.max_script_chars} characters are allowed, split it into "
                "several jobs", "script",
            )  # fmt: skip
        return forms.field_too_large(name, limit)

    return too_large


async def _read_form(
    request: Request, caller: Caller, opened: contextlib.AsyncExitStack
) -> tuple[dict[str, Any], dict[str, UploadFile]]:
    length = declared_length(request.headers)
    limit = caller.limits.max_request_bytes
    if length is None:
        raise ApiError(411, "length_required", "send a Content-Length header with uploads")
    if length > limit:
        raise ApiError(
            413,
            "request_too_large",
            f"the request is {length} bytes; uploads are limited to {limit} bytes in all",
        )
    form = await forms.read_form(
        request,
        max_files=2,
        max_fields=32,
        max_field_bytes=FORM_FIELD_LIMIT,
        too_large=field_too_large(caller.limits),
    )
    opened.push_async_callback(form.close)
    fields: dict[str, Any] = {}
    params: dict[str, Any] = {}
    files: dict[str, UploadFile] = {}
    for name, value in form.multi_items():  # each name once: the parser refuses repeats
        if isinstance(value, UploadFile):
            if name not in ("image", "audio"):
                raise ApiError(
                    422,
                    "unexpected_file",
                    f"unexpected file field {name!r}; send image and audio",
                    name,
                )
            try:
                keys.check_filename(value.filename or "upload")
            except keys.InvalidKey as e:
                raise ApiError(422, "invalid_filename", str(e), name) from None
            files[name] = value
        elif name == "params":
            params = text.parse_json(value, "the params field")
            if not isinstance(params, dict):
                raise ApiError(
                    400, "malformed_json", "the params field must be a JSON object", "params"
                )
        else:
            fields[name] = value
    if twice := sorted(params.keys() & fields.keys()):
        raise forms.duplicate(twice[0])
    return {**params, **fields}, files


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class UploadRef:
    """An earlier upload named by id: looked up in the transaction that writes the job."""

    id: str


class Scratch:
    """A temporary directory for the request's files, made only if one is needed (a
    submission by upload id needs none), and removed with everything in it at the end."""

    def __init__(self) -> None:
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def path(self, name: str) -> Path:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="longtake-submit-")
        return Path(self._dir.name) / name

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._dir is not None:
            self._dir.cleanup()


async def materialise(
    services: Services,
    caller: Caller,
    source: UploadFile | str | ScriptParams,
    kind: str,
    scratch: Scratch,
) -> LocalInput | UploadRef:
    """An upload copied out, an s3:// reference downloaded, a script spoken, or an upload id
    to look up."""
    if isinstance(source, ScriptParams):
        return await run_in_threadpool(synthesise, services.speech, source, scratch.path(kind))
    limits = caller.limits
    limit = limits.max_image_bytes if kind == "image" else limits.max_audio_bytes
    if isinstance(source, UploadFile):
        return await copy_upload(source, kind, limit, scratch.path(kind))
    if reference_kind(source, kind) == "upload":
        return UploadRef(source)
    dest = scratch.path(kind)
    return await run_in_threadpool(
        download_reference,
        services.s3_reader,
        services.config.allowed_input_buckets,
        source,
        kind,
        limit,
        dest,
    )


def _resolve(
    services: Services,
    session: Session,
    caller: Caller,
    image: LocalInput | UploadRef,
    audio: LocalInput | UploadRef,
) -> tuple[Input, Input]:
    cache = services.upload_cache
    ids = [got.id for got in (image, audio) if isinstance(got, UploadRef)]
    found = {i: row for i in ids if (row := cache.get(caller.tenant, i)) is not None}
    missing = [i for i in ids if i not in found]
    if missing:
        for record in uploads.get_upload_records(session, missing, tenant=caller.tenant).values():
            cache.put(record)
            found[record.id] = record
    resolved: list[Input] = []
    for kind, got in (("image", image), ("audio", audio)):
        if isinstance(got, UploadRef):
            if got.id not in found:
                raise upload_not_found(got.id, kind)
            stored = StoredInput(found[got.id])
            check_stored(stored, kind, caller.limits, kind)  # type: ignore[arg-type]
            got = stored
        resolved.append(got)
    return resolved[0], resolved[1]


def inspect(got: Input, kind: str, caller: Caller) -> ImageInfo | AudioInfo:
    if isinstance(got, StoredInput):
        return got.info()
    check = inspect_image if kind == "image" else inspect_audio
    return check(got.path, caller.limits)


def inspect_speech(path: Path, caller: Caller, field: str = "") -> AudioInfo:
    """A script's synthesised speech, checked as any audio is (its duration above all); an
    error names the script, which is what the sender can change."""
    try:
        return inspect_audio(path, caller.limits)
    except ApiError as e:
        raise ApiError(
            e.status, e.code, f"{field}script: the speech spoken from it is refused: {e.message}",
            f"{field}script",
        ) from None  # fmt: skip


# --------------------------------------------------------------------------- accepting


def job_params(
    req: JobRequest,
    image: ImageInfo,
    audio: AudioInfo,
    config: ApiConfig,
    field: str = "",
    script: ScriptParams | None = None,
) -> tuple[JobParams, int]:
    """The stored parameters of a validated request, and its number of clips. `field` is the
    request's place in a batch (`jobs[3].`); `script` what its audio was synthesised from."""
    covered = P.clips_for_duration(audio.duration_s, req.infer_frames)
    if req.num_clips is not None and req.num_clips > covered:
        raise ApiError(
            422,
            "num_clips_exceeds_audio",
            f"{field}num_clips={req.num_clips} needs more audio than the {audio.duration_s:.2f} s "
            f"sent (it covers {covered} clips of {req.infer_frames} frames); lower num_clips or "
            "omit it to render to the end of the audio",
            f"{field}num_clips",
        )
    width, height = P.fit_size(image.width, image.height, req.size)
    check_watermark(req.watermark, width, height, config, field)
    assert req.prompt is not None  # check_presenter_choice; a presenter's job has its prompt
    params = JobParams(
        prompt=req.prompt,
        size=req.size,
        width=width,
        height=height,
        num_clips=req.num_clips,
        infer_frames=req.infer_frames,
        sample_steps=req.sample_steps,
        seed=req.resolved_seed(),
        checkpoint_every=req.checkpoint_every or config.checkpoint_every,
        audio_duration_s=audio.duration_s,
        image=ImageFacts(width=image.width, height=image.height, format=image.format),
        audio=AudioFacts(codec=audio.codec, sample_rate=audio.sample_rate, channels=audio.channels),
        watermark=req.watermark,
        script=script,
    )
    return params, req.num_clips or covered


def check_watermark(
    mark: WatermarkParams | None, width: int, height: int, config: ApiConfig, field: str = ""
) -> None:
    """422 unless the job's mark (the operator's, with the job's changes) fits its frames:
    the worker would fail the job on its first clip."""
    try:
        spec = (mark or WatermarkParams()).over(config.watermark, allowed=config.watermark_allowed)
    except ValidationError as e:
        error = pydantic_error(list(e.errors()))
        raise ApiError(422, "invalid_parameter", f"{field}watermark: {error.message}",
                       f"{field}watermark") from None  # fmt: skip
    if (why := spec.misfit(width, height)) is not None:
        raise ApiError(
            422, "watermark_does_not_fit",
            f"{field}watermark: {why} (this job's output size)",
            f"{field}watermark",
        )  # fmt: skip


def check_quota(services: Services, session: Session, caller: Caller, adding: int) -> None:
    """429 when `adding` more jobs would take the tenant past its unfinished-job limit
    (a soft limit: see api.quota)."""
    unfinished = services.quota.unfinished(session, caller.tenant)
    if unfinished + adding > caller.max_queued_jobs:
        raise ApiError(
            429,
            "queued_job_limit",
            f"tenant {caller.tenant} has {unfinished} unfinished jobs and may have at most "
            f"{caller.max_queued_jobs}; {adding} more do not fit. Wait for some to finish or "
            "cancel some",
        )


def replay(existing: Job, fingerprint: str, key: str) -> Job:
    """The job an idempotent retry gets back; 409 when the key came with another request."""
    if existing.request_hash is not None and existing.request_hash != fingerprint:
        raise ApiError(
            409,
            "idempotency_key_reused",
            f"Idempotency-Key {key!r} was sent before with a different request (job "
            f"{existing.id}); send the same request to get that job, or use a new key",
        )
    return existing


def _find_idempotent(services: Services, tenant: str, key: str) -> Job | None:
    with services.database.transaction() as s:
        return job_store.find_by_idempotency_key(s, tenant, key)


def _accept(
    services: Services,
    caller: Caller,
    req: JobRequest,
    image_in: LocalInput | UploadRef,
    audio_in: LocalInput | UploadRef,
    idempotency_key: str | None,
    fingerprint: str,
    script: ScriptParams | None = None,
) -> tuple[Job, bool]:
    """Check, store and write the job. Inputs by reference need no storing: then everything,
    from the idempotency check to the insert, is one transaction. `script`: what the audio
    (a local file) was synthesised from."""
    job_id = uuid.uuid4()
    stored: list[str] = []
    if req.webhook_url:
        services.check_webhook_url(req.webhook_url, "webhook_url")
    # files are decoded before the transaction, so no connection waits on a decode
    local_info = {
        kind: inspect_speech(got.path, caller)
        if script is not None and kind == "audio"
        else inspect(got, kind, caller)
        for kind, got in (("image", image_in), ("audio", audio_in))
        if isinstance(got, LocalInput)
    }
    try:
        with services.database.transaction() as s:
            if idempotency_key is not None:
                existing = job_store.find_by_idempotency_key(s, caller.tenant, idempotency_key)
                if existing is not None:
                    return replay(existing, fingerprint, idempotency_key), False
            image_got, audio_got = _resolve(services, s, caller, image_in, audio_in)
            image = local_info.get("image") or inspect(image_got, "image", caller)
            audio = local_info.get("audio") or inspect(audio_got, "audio", caller)
            assert isinstance(image, ImageInfo) and isinstance(audio, AudioInfo)
            params, clips_total = job_params(req, image, audio, services.config, script=script)
            check_quota(services, s, caller, 1)
            local = isinstance(image_got, LocalInput) or isinstance(audio_got, LocalInput)
            if not local:
                job = _create(s, services, caller, req, job_id, params, clips_total,
                              image_got.key, audio_got.key, idempotency_key, fingerprint,
                              input_sha256(image_got))  # fmt: skip
        if local:  # store the files, then write the job (deleting them again if that fails)
            image_key = _store(services, job_id, image_got, image, "image", stored)
            audio_key = _store(services, job_id, audio_got, audio, "audio", stored)
            with services.database.transaction() as s:
                job = _create(s, services, caller, req, job_id, params, clips_total,
                              image_key, audio_key, idempotency_key, fingerprint,
                              input_sha256(image_got))  # fmt: skip
    except sa.exc.IntegrityError:
        _delete_quietly(services, stored)
        existing = (
            _find_idempotent(services, caller.tenant, idempotency_key) if idempotency_key else None
        )
        if existing is None:
            raise
        # the same key was submitted concurrently and that one won
        return replay(existing, fingerprint, idempotency_key), False  # type: ignore[arg-type]
    except StorageError as e:
        _delete_quietly(services, stored)
        raise ApiError(
            503, "storage_unavailable", f"could not store the inputs ({e}); retry later"
        ) from None
    except sa.exc.OperationalError:
        _delete_quietly(services, stored)
        log.exception("could not write job %s", job_id)
        raise ApiError(
            503, "database_unavailable", "the job database is unreachable; retry later"
        ) from None
    except BaseException:
        _delete_quietly(services, stored)
        raise
    services.quota.admitted(caller.tenant, 1)
    try:
        services.job_queued()
    except Exception:  # the outbox row is committed: the relay's next poll publishes it
        log.exception("wake-up after job %s failed", job_id)
    return job, True


def _create(
    s: Session,
    services: Services,
    caller: Caller,
    req: JobRequest,
    job_id: uuid.UUID,
    params: dict[str, Any],
    clips_total: int,
    image_key: str,
    audio_key: str,
    idempotency_key: str | None,
    fingerprint: str,
    image_sha256: str,
) -> Job:
    precision = req.precision or services.config.default_precision
    job = job_store.create_job(
        s,
        job_store.NewJob(
            id=job_id,
            tenant=caller.tenant,
            params=params,
            image_key=image_key,
            audio_key=audio_key,
            clips_total=clips_total,
            max_attempts=services.config.max_attempts,
            priority=req.priority,
            precision=precision,
            idempotency_key=idempotency_key,
            request_hash=fingerprint,
            presenter_key=presenter_key(caller.tenant, image_sha256, params, precision),
            presenter=req.presenter,
        ),
    )
    if req.webhook_url:
        add_job_webhook(s, caller.tenant, job_id, req)
    return job


def add_job_webhook(session: Session, tenant: str, job_id: uuid.UUID, req: JobRequest) -> None:
    secret = req.webhook_secret or tenants.ensure_tenant(session, tenant).webhook_secret
    webhooks.create_webhook(
        session,
        tenant=tenant,
        url=req.webhook_url,  # type: ignore[arg-type]
        events=req.webhook_events or list(webhooks.WEBHOOK_EVENTS),
        secret=secret,
        job_id=job_id,
    )


def _store(
    services: Services,
    job_id: uuid.UUID,
    got: Input,
    info: ImageInfo | AudioInfo,
    kind: str,
    stored: list[str],
) -> str:
    if isinstance(got, StoredInput):
        return got.key
    key = keys.input_key(job_id, kind, info.ext)  # type: ignore[arg-type]
    services.storage.put_file(key, got.path, info.content_type)
    stored.append(key)
    return key


def _delete_quietly(services: Services, stored: list[str]) -> None:
    for key in stored:
        try:
            services.storage.delete(key)
        except Exception:  # the job does not exist, so these are orphans to log, not to fail on
            log.exception("could not delete input %s of a rejected job", key)
