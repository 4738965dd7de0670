"""POST /v1/jobs: read the request, validate everything, then store inputs and write the job.

Nothing is stored before every check has passed; if writing the job fails afterwards, the
stored inputs are deleted again. A rejected request leaves no row, no object, no message.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.errors import ApiError, pydantic_error
from api.inputs import AudioInfo, ImageInfo, inspect_audio, inspect_image
from api.schemas import JobRequest
from api.services import Services
from db import repository as repo
from db.models import Job
from pipeline import params as P
from storage import keys
from storage.base import ObjectNotFound, StorageError
from storage.s3 import parse_s3_uri

log = logging.getLogger(__name__)

JSON_BODY_LIMIT = 1024 * 1024
FORM_FIELD_LIMIT = 256 * 1024
IDEMPOTENCY_KEY_MAX = 255
_CHUNK = 1024 * 1024


@dataclass
class Submission:
    request: JobRequest
    image: UploadFile | str
    audio: UploadFile | str


async def submit(
    request: Request, services: Services, workdir: Path, idempotency_key: str | None
) -> tuple[Job, bool]:
    """Returns (job, created). An idempotency key seen before returns the earlier job."""
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= IDEMPOTENCY_KEY_MAX:
        raise ApiError(
            400,
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} characters",
        )
    try:
        submission = await read_request(request, services)
        if idempotency_key is not None:
            existing = await run_in_threadpool(_find_idempotent, services, idempotency_key)
            if existing is not None:
                return existing, False
        limits = services.config.limits
        image_path = await _materialise(
            services, submission.image, "image", limits.max_image_bytes, workdir / "image"
        )
        audio_path = await _materialise(
            services, submission.audio, "audio", limits.max_audio_bytes, workdir / "audio"
        )
    finally:
        await request.close()  # the uploads' spooled temporary files
    return await run_in_threadpool(
        _accept, services, submission.request, image_path, audio_path, idempotency_key
    )


# --------------------------------------------------------------------------- parsing


async def read_request(request: Request, services: Services) -> Submission:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        raw, files = await _read_form(request, services)
    elif content_type == "application/json":
        raw, files = await _read_json(request), {}
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type {content_type or '(none)'} is not accepted; send multipart/form-data "
            "(files image and audio, plus parameters) or application/json (s3:// references)",
        )
    try:
        job_request = JobRequest.model_validate(raw, context={"limits": services.config.limits})
    except ValidationError as e:
        raise pydantic_error(list(e.errors())) from None
    image = files.get("image") or job_request.image
    audio = files.get("audio") or job_request.audio
    for name, value in (("image", image), ("audio", audio)):
        if not value:
            how = (
                "upload it as a file field"
                if content_type == "multipart/form-data"
                else "give an s3:// reference"
            )
            raise ApiError(422, "missing_input", f"{name} is required: {how} named {name}", name)
    return Submission(job_request, image, audio)  # type: ignore[arg-type]


async def _read_json(request: Request) -> dict[str, Any]:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > JSON_BODY_LIMIT:
        raise ApiError(
            413, "request_too_large", f"JSON bodies are limited to {JSON_BODY_LIMIT} bytes"
        )
    body = await request.body()
    if len(body) > JSON_BODY_LIMIT:
        raise ApiError(
            413, "request_too_large", f"JSON bodies are limited to {JSON_BODY_LIMIT} bytes"
        )
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ApiError(400, "malformed_json", "the body must be a JSON object of parameters")
    return raw


async def _read_form(
    request: Request, services: Services
) -> tuple[dict[str, Any], dict[str, UploadFile]]:
    length = request.headers.get("content-length")
    limit = services.config.limits.max_request_bytes
    if length is None or not length.isdigit():
        raise ApiError(411, "length_required", "send a Content-Length header with uploads")
    if int(length) > limit:
        raise ApiError(
            413,
            "request_too_large",
            f"the request is {length} bytes; uploads are limited to {limit} bytes in all",
        )
    try:
        form = await request.form(max_files=2, max_fields=32, max_part_size=FORM_FIELD_LIMIT)
    except StarletteHTTPException as e:
        raise ApiError(
            400, "malformed_multipart", f"the multipart body is invalid: {e.detail}"
        ) from None
    raw: dict[str, Any] = {}
    files: dict[str, UploadFile] = {}
    for name, value in form.multi_items():
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
            try:
                params = json.loads(value)
            except json.JSONDecodeError as e:
                raise ApiError(
                    400, "malformed_json", f"the params field is not valid JSON: {e}", "params"
                ) from None
            if not isinstance(params, dict):
                raise ApiError(
                    400, "malformed_json", "the params field must be a JSON object", "params"
                )
            raw = {**params, **raw}
        else:
            raw[name] = value
    return raw, files


# --------------------------------------------------------------------------- inputs


async def _materialise(
    services: Services, source: UploadFile | str, kind: str, limit: int, dest: Path
) -> Path:
    """The input as a local file: an upload copied out, or an s3:// reference downloaded."""
    if isinstance(source, UploadFile):
        size = 0
        with dest.open("wb") as out:
            while chunk := await source.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise ApiError(
                        413,
                        f"{kind}_too_large",
                        f"the {kind} file is larger than the limit of {limit} bytes",
                        kind,
                    )
                out.write(chunk)
        return dest
    await run_in_threadpool(_download_reference, services, source, kind, limit, dest)
    return dest


def _download_reference(services: Services, uri: str, kind: str, limit: int, dest: Path) -> None:
    try:
        bucket, key = parse_s3_uri(uri)
        keys.validate_key(key)
    except ValueError as e:
        raise ApiError(422, "invalid_reference", f"{kind}: {e}", kind) from None
    allowed = services.config.allowed_input_buckets
    if services.s3_reader is None or not allowed:
        raise ApiError(
            422,
            "references_disabled",
            f"{kind}: this server accepts no s3:// references; upload the file instead",
            kind,
        )
    if bucket not in allowed:
        raise ApiError(
            422,
            "bucket_not_allowed",
            f"{kind}: bucket {bucket!r} is not an allowed input bucket; use one of: "
            + ", ".join(allowed),
            kind,
        )
    try:
        size = services.s3_reader.head(bucket, key)
        if size > limit:
            raise ApiError(
                413, f"{kind}_too_large", f"{uri} is {size} bytes; the limit is {limit} bytes", kind
            )
        services.s3_reader.download(bucket, key, dest)
    except ObjectNotFound:
        raise ApiError(422, "input_not_found", f"{kind}: {uri} does not exist", kind) from None
    except StorageError as e:
        raise ApiError(
            503, "storage_unavailable", f"{kind}: could not read {uri}: {e}", kind
        ) from None


# --------------------------------------------------------------------------- accepting


def _find_idempotent(services: Services, key: str) -> Job | None:
    with services.database.transaction() as s:
        return repo.find_by_idempotency_key(s, services.config.tenant, key)


def _job_params(req: JobRequest, image: ImageInfo, audio: AudioInfo) -> tuple[dict[str, Any], int]:
    covered = P.clips_for_duration(audio.duration_s, req.infer_frames)
    if req.num_clips is not None and req.num_clips > covered:
        raise ApiError(
            422,
            "num_clips_exceeds_audio",
            f"num_clips={req.num_clips} needs more audio than the {audio.duration_s:.2f} s sent "
            f"(it covers {covered} clips of {req.infer_frames} frames); lower num_clips or omit "
            "it to render to the end of the audio",
            "num_clips",
        )
    width, height = P.fit_size(image.width, image.height, req.size)
    params = {
        "prompt": req.prompt,
        "size": req.size,
        "width": width,
        "height": height,
        "num_clips": req.num_clips,
        "infer_frames": req.infer_frames,
        "sample_steps": req.sample_steps,
        "seed": req.resolved_seed(),
        "checkpoint_every": req.checkpoint_every,
        "audio_duration_s": audio.duration_s,
        "image": {"width": image.width, "height": image.height, "format": image.format},
        "audio": {
            "codec": audio.codec,
            "sample_rate": audio.sample_rate,
            "channels": audio.channels,
        },
    }
    return params, req.num_clips or covered


def _accept(
    services: Services,
    req: JobRequest,
    image_path: Path,
    audio_path: Path,
    idempotency_key: str | None,
) -> tuple[Job, bool]:
    limits = services.config.limits
    image = inspect_image(image_path, limits)
    audio = inspect_audio(audio_path, limits)
    params, clips_total = _job_params(req, image, audio)
    params["checkpoint_every"] = req.checkpoint_every or services.config.checkpoint_every

    job_id = uuid.uuid4()
    image_key = keys.input_key(job_id, "image", image.ext)
    audio_key = keys.input_key(job_id, "audio", audio.ext)
    stored: list[str] = []
    try:
        services.storage.put_file(image_key, image_path, image.content_type)
        stored.append(image_key)
        services.storage.put_file(audio_key, audio_path, audio.content_type)
        stored.append(audio_key)
        with services.database.transaction() as s:
            job = repo.create_job(
                s,
                repo.NewJob(
                    id=job_id,
                    tenant=services.config.tenant,
                    params=params,
                    image_key=image_key,
                    audio_key=audio_key,
                    clips_total=clips_total,
                    max_attempts=services.config.max_attempts,
                    priority=req.priority,
                    idempotency_key=idempotency_key,
                ),
            )
    except sa.exc.IntegrityError:
        _delete_quietly(services, stored)
        existing = _find_idempotent(services, idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return existing, False  # the same key was submitted concurrently; that one won
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
    try:
        services.job_queued()
    except Exception:  # the outbox row is committed: the relay's next poll publishes it
        log.exception("wake-up after job %s failed", job_id)
    return job, True


def _delete_quietly(services: Services, stored: list[str]) -> None:
    for key in stored:
        try:
            services.storage.delete(key)
        except Exception:  # the job does not exist, so these are orphans to log, not to fail on
            log.exception("could not delete input %s of a rejected job", key)
