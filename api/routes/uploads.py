"""/v1/uploads: an input checked and stored once, then referenced by id from any number of
jobs (`"image": "upl_..."`). Content-addressed per tenant: the same bytes uploaded again give
the same upload (200 instead of 201), so a client can always upload before it submits."""

from __future__ import annotations

import contextlib
import re
import tempfile
from datetime import datetime
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api import forms
from api.auth import Caller
from api.deps import CallerDep, ServicesDep
from api.errors import ApiError, error_responses
from api.inputs import AudioInfo, ImageInfo, inspect_audio, inspect_image
from api.limits import declared_length
from api.references import LocalInput, copy_upload, info_dict
from api.schemas import UPLOAD_ID_PATTERN, id_links
from api.services import Services
from db import uploads
from db.models import Upload
from storage import keys
from storage.base import StorageError

router = APIRouter(prefix="/v1/uploads", tags=["uploads"], responses=error_responses())


class UploadOut(BaseModel):
    id: str
    kind: Literal["image", "audio"]
    sha256: str
    bytes: int
    info: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, upload: Upload) -> UploadOut:
        return cls(
            id=upload.id,
            kind=upload.kind,  # type: ignore[arg-type]
            sha256=upload.sha256,
            bytes=upload.bytes,
            info=upload.info,
            created_at=upload.created_at,
        )


LINKS = id_links("upload_id", GetUpload=("get", "/v1/uploads/{upload_id}"))
UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["kind", "file"],
                    "properties": {
                        "kind": {"type": "string", "enum": ["image", "audio"]},
                        "file": {"type": "string", "format": "binary"},
                    },
                    "additionalProperties": False,
                }
            }
        },
    }
}


def store_upload(
    services: Services,
    tenant: str,
    kind: str,
    got: LocalInput,
    limits: Any,
    info: ImageInfo | AudioInfo | None = None,
) -> tuple[Upload, bool]:
    """Check the file (unless `info` says it was), then store it unless this tenant has the
    same bytes already. Returns (upload, created)."""
    with services.database.transaction() as s:
        existing = uploads.find_by_digest(s, tenant=tenant, kind=kind, sha256=got.sha256)
    if existing is not None:
        return existing, False
    if info is None:
        info = (inspect_image if kind == "image" else inspect_audio)(got.path, limits)
    upload_id = uploads.new_upload_id()
    key = keys.upload_key(upload_id, info.ext)
    try:
        services.storage.put_file(key, got.path, info.content_type)
    except StorageError as e:
        raise ApiError(503, "storage_unavailable", f"could not store the {kind}: {e}") from None
    new = uploads.NewUpload(
        upload_id, tenant, kind, got.sha256, key, got.path.stat().st_size, info_dict(info),
        source=got.source,
    )  # fmt: skip
    try:
        with services.database.transaction() as s:
            return uploads.add_upload(s, new), True
    except sa.exc.IntegrityError:  # the same bytes, uploaded concurrently: that one won
        services.storage.delete(key)
        with services.database.transaction() as s:
            twin = uploads.find_by_digest(s, tenant=tenant, kind=kind, sha256=got.sha256)
        if twin is None:
            raise
        return twin, False
    except BaseException:
        services.storage.delete(key)
        raise


async def _read_upload(
    request: Request, caller: Caller, workdir: FilePath, opened: contextlib.AsyncExitStack
) -> tuple[str, LocalInput]:
    limits = caller.limits
    largest = max(limits.max_image_bytes, limits.max_audio_bytes)
    length = declared_length(request.headers)
    if length is None:
        raise ApiError(411, "length_required", "send a Content-Length header with uploads")
    if length > largest + 64 * 1024:
        raise ApiError(
            413, "request_too_large", f"uploads are limited to {largest} bytes for this tenant"
        )
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise ApiError(
            415,
            "unsupported_media_type",
            "send multipart/form-data with a field kind (image or audio) and a file field file",
        )
    form = await forms.read_form(request, max_files=1, max_fields=4, max_field_bytes=1024)
    opened.push_async_callback(form.close)
    for name in form:
        if name not in ("kind", "file"):
            raise ApiError(
                422, "invalid_parameter",
                f"{name}: unknown field; send the fields kind and file only", name,
            )  # fmt: skip
    kind = form.get("kind")
    if kind not in ("image", "audio"):
        raise ApiError(422, "invalid_parameter", "kind: must be image or audio", "kind")
    file = form.get("file")
    if not isinstance(file, UploadFile):
        raise ApiError(422, "missing_input", "file is required: upload it as a file field", "file")
    limit = limits.max_image_bytes if kind == "image" else limits.max_audio_bytes
    return kind, await copy_upload(file, kind, limit, workdir / "file")


@router.post(
    "",
    status_code=201,
    response_model=UploadOut,
    openapi_extra=UPLOAD_DOC,
    responses={
        200: {"description": "the same bytes were uploaded before: that upload", "links": LINKS},
        201: {"description": "the upload, stored", "links": LINKS},
        **error_responses(400, 411, 413, 415, 503),
    },
)
async def create_upload(request: Request, services: ServicesDep, caller: CallerDep) -> JSONResponse:
    """Check an image or an audio file the way a job submission does, and store it."""
    with tempfile.TemporaryDirectory(prefix="longtake-upload-") as workdir:
        async with contextlib.AsyncExitStack() as opened:
            kind, got = await _read_upload(request, caller, FilePath(workdir), opened)
        upload, created = await run_in_threadpool(
            store_upload, services, caller.tenant, kind, got, caller.limits
        )
    return JSONResponse(
        UploadOut.of(upload).model_dump(mode="json"), status_code=201 if created else 200
    )


@router.get("/{upload_id}", response_model=UploadOut, responses=error_responses(404))
def get_upload(
    upload_id: Annotated[
        str,
        Path(
            description="upl_ and 24 hex digits.", json_schema_extra={"pattern": UPLOAD_ID_PATTERN}
        ),
    ],
    services: ServicesDep,
    caller: CallerDep,
) -> UploadOut:
    upload = None
    if re.fullmatch(UPLOAD_ID_PATTERN, upload_id):
        with services.database.transaction() as s:
            upload = uploads.get_upload(s, upload_id, tenant=caller.tenant)
    if upload is None:
        raise ApiError(404, "upload_not_found", f"upload {upload_id} does not exist")
    return UploadOut.of(upload)
