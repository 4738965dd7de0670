"""/v1/presenters: a tenant's named portrait, prompt and size, which jobs name
(`"presenter": "anna"`) instead of sending them.

A job copies what it takes from its presenter when it is accepted (the portrait's upload key,
the prompt and the size go into its own row), so deleting a presenter, or making a new one of
the same name, never changes a job that was accepted before. Every route acts for the calling
tenant only: another tenant's presenter is a 404 (or, named by a job, a 422) as if it did not
exist.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api import forms, presenters, submission
from api.auth import Caller
from api.deps import CallerDep, ServicesDep
from api.errors import ApiError, error_responses, pydantic_error
from api.limits import declared_length, read_json_object
from api.presenters import PortraitRef
from api.references import LocalInput
from api.routes.jobs import page_size
from api.schemas import JobRequest, PageSize
from api.services import Services
from db import presenters as store
from db.presenters import PRESENTER_NAME_PATTERN, PresenterRecord, is_presenter_name
from pipeline import params as P
from storage import keys

router = APIRouter(prefix="/v1/presenters", tags=["presenters"], responses=error_responses())

FIELDS = ("name", "image", "prompt", "size")
NAME_DESCRIPTION = (
    "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit; unique among "
    "your presenters."
)


class PresenterOut(BaseModel):
    name: str
    prompt: str
    size: str
    image: str = Field(description="The portrait's upload id (a job may name it as its image).")
    image_width: int
    image_height: int
    image_format: str
    width: int = Field(description="The output width of a job with this presenter.")
    height: int
    created_at: datetime
    links: dict[str, str]

    @classmethod
    def of(cls, p: PresenterRecord) -> PresenterOut:
        info = p.portrait.info
        width, height = P.fit_size(info["width"], info["height"], p.size)
        return cls(
            name=p.name,
            prompt=p.prompt,
            size=p.size,
            image=p.portrait.id,
            image_width=info["width"],
            image_height=info["height"],
            image_format=info["format"],
            width=width,
            height=height,
            created_at=p.created_at,
            links={"self": f"/v1/presenters/{p.name}"},
        )


class PresenterList(BaseModel):
    presenters: list[PresenterOut] = Field(description="By name.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


def request_schemas(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The published bodies of POST /v1/presenters, from the job request's (`job`, with the
    server's reference pattern): its prompt, size and image, and a name."""
    name = {
        "type": "string", "pattern": PRESENTER_NAME_PATTERN, "maxLength": 64,
        "description": NAME_DESCRIPTION,
    }  # fmt: skip
    image = {**job["properties"]["image"]}
    image["description"] = "The portrait by reference: s3://bucket/key or an upload id."
    prompt = {k: v for k, v in job["properties"]["prompt"].items() if k not in ("anyOf", "default")}
    prompt.update(type="string", description="What the videos show (trimmed).")
    size = {k: v for k, v in job["properties"]["size"].items()}
    json_body = {
        "type": "object",
        "required": ["name", "image", "prompt"],
        "properties": {"name": name, "image": image, "prompt": prompt, "size": size},
        "additionalProperties": False,
    }
    form = {
        **json_body,
        "properties": {
            **json_body["properties"],
            "image": {
                "type": "string",
                "format": "binary",
                "description": "The portrait: a PNG, JPEG or WebP file (a text field holding "
                "a reference, as in the JSON body, is taken too).",
            },
        },
    }
    return {"PresenterRequest": json_body, "PresenterForm": form}


CREATE_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"$ref": "#/components/schemas/PresenterForm"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/PresenterRequest"}},
        },
    }
}
LINKS = {
    "GetPresenter": {
        "operationRef": "#/paths/~1v1~1presenters~1{presenter_name}/get",
        "parameters": {"presenter_name": "$response.body#/name"},
    }
}
NameParam = Annotated[
    str,
    Path(description=NAME_DESCRIPTION, json_schema_extra={"pattern": PRESENTER_NAME_PATTERN}),
]


async def _read(
    request: Request, services: Services, caller: Caller, opened: contextlib.AsyncExitStack
) -> tuple[dict[str, Any], UploadFile | None, bool]:
    """The request's text fields, its portrait file if one came, and whether it was a form."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        return await read_json_object(request, services.config.max_json_bytes), None, False
    if content_type != "multipart/form-data":
        raise ApiError(
            415, "unsupported_media_type",
            f"Content-Type {content_type or '(none)'} is not accepted; send multipart/form-data "
            "(name, prompt, size and the portrait as the file field image) or application/json "
            "(the image by reference)",
        )  # fmt: skip
    length = declared_length(request.headers)
    if length is None:
        raise ApiError(411, "length_required", "send a Content-Length header with uploads")
    if length > caller.limits.max_request_bytes:
        raise ApiError(
            413, "request_too_large",
            f"the request is {length} bytes; uploads are limited to "
            f"{caller.limits.max_request_bytes} bytes in all",
        )  # fmt: skip
    form = await forms.read_form(
        request,
        max_files=1,
        max_fields=8,
        max_field_bytes=submission.FORM_FIELD_LIMIT,
        too_large=submission.field_too_large(caller.limits),
    )
    opened.push_async_callback(form.close)
    fields: dict[str, Any] = {}
    file = None
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name != "image":
                raise ApiError(
                    422, "unexpected_file",
                    f"unexpected file field {name!r}; send the portrait as image", name,
                )  # fmt: skip
            try:
                keys.check_filename(value.filename or "upload")
            except keys.InvalidKey as e:
                raise ApiError(422, "invalid_filename", str(e), name) from None
            file = value
        else:
            fields[name] = value
    return fields, file, True


def _validate(
    raw: dict[str, Any], file: UploadFile | None, caller: Caller, form: bool
) -> tuple[str, JobRequest]:
    """The name, and the prompt, size and image reference checked as a job's are."""
    for key in raw:
        if key not in FIELDS:
            raise ApiError(
                422, "invalid_parameter",
                f"{key}: unknown field; a presenter has {', '.join(FIELDS)}", key,
            )  # fmt: skip
    name = raw.get("name")
    if not isinstance(name, str) or not is_presenter_name(name):
        shown = "missing" if name is None else f"{str(name)[:80]!r} is not valid"
        raise ApiError(
            422, "invalid_parameter", f"name: {shown}; a name has {NAME_DESCRIPTION}", "name"
        )
    try:
        req = JobRequest.model_validate(
            {k: raw[k] for k in ("prompt", "size", "image") if k in raw},
            context={"limits": caller.limits, "form": form},
        )
    except ValidationError as e:
        raise pydantic_error(list(e.errors())) from None
    if req.prompt is None:
        raise ApiError(
            422, "invalid_parameter",
            "prompt: required; describe the speaker and the scene", "prompt",
        )  # fmt: skip
    if file is None and req.image is None:
        how = "upload it as the file field image" if form else "give an s3:// URI or upload id"
        raise ApiError(422, "missing_input", f"image is required: {how}", "image")
    return name, req


@router.post(
    "",
    status_code=201,
    response_model=PresenterOut,
    openapi_extra=CREATE_DOC,
    responses={
        201: {"description": "the presenter", "links": LINKS},
        **error_responses(400, 409, 411, 413, 415, 503),
    },
)
async def create_presenter(
    request: Request, services: ServicesDep, caller: CallerDep
) -> JSONResponse:
    """Check a portrait, a prompt and a size as a job submission does, and keep them under a
    name for jobs to use."""
    with submission.Scratch() as scratch:
        async with contextlib.AsyncExitStack() as opened:
            raw, file, form = await _read(request, services, caller, opened)
            name, req = _validate(raw, file, caller, form)
            source = file if file is not None else req.image
            got = await submission.materialise(services, caller, source, "image", scratch)
        portrait = got if isinstance(got, LocalInput) else PortraitRef(got.id)
        created = await run_in_threadpool(
            presenters.create, services, caller, name, req.prompt, req.size, portrait
        )
    return JSONResponse(
        PresenterOut.of(created).model_dump(mode="json"),
        status_code=201,
        headers={"Location": f"/v1/presenters/{created.name}"},
    )


@router.get("", response_model=PresenterList, responses=error_responses(400))
def list_presenters(
    services: ServicesDep,
    caller: CallerDep,
    limit: PageSize = 50,
    cursor: Annotated[
        str | None,
        Query(
            description="Opaque: the `next_cursor` of the previous page.",
            json_schema_extra={"pattern": PRESENTER_NAME_PATTERN},
        ),
    ] = None,
) -> PresenterList:
    """Your presenters, by name."""
    limit = page_size(services, limit)
    if cursor is not None and not is_presenter_name(cursor):
        raise ApiError(
            400, "invalid_cursor", "cursor is not one this API returned; start without it"
        )
    with services.database.transaction() as s:
        rows = store.list_presenters(s, tenant=caller.tenant, after=cursor, limit=limit + 1)
    page = rows[:limit]
    return PresenterList(
        presenters=[PresenterOut.of(p) for p in page],
        next_cursor=page[-1].name if len(rows) > limit else None,
    )


@router.get("/{presenter_name}", response_model=PresenterOut, responses=error_responses(404))
def get_presenter(
    presenter_name: NameParam, services: ServicesDep, caller: CallerDep
) -> PresenterOut:
    name = presenter_name
    found = None
    if is_presenter_name(name):
        with services.database.transaction() as s:
            found = store.get_presenter(s, name, tenant=caller.tenant)
    if found is None:
        raise presenters.not_found(name, field=None)
    return PresenterOut.of(found)


@router.delete("/{presenter_name}", status_code=204, responses=error_responses(404))
def delete_presenter(
    presenter_name: NameParam, services: ServicesDep, caller: CallerDep
) -> Response:
    """Delete a presenter. Jobs accepted before keep rendering: each holds its own copy of
    the presenter's prompt and size and refers to its portrait, which stays stored."""
    name, deleted = presenter_name, False
    if is_presenter_name(name):
        with services.database.transaction() as s:
            deleted = store.delete_presenter(s, name, tenant=caller.tenant)
    if not deleted:
        raise presenters.not_found(name, field=None)
    return Response(status_code=204)
