"""Downloads behind the local backend's signed URLs (S3 serves its presigned URLs itself)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse

from api.deps import get_services
from api.errors import ApiError, error_responses
from api.schemas import ID_MAX
from api.services import Services
from storage.keys import InvalidKey
from storage.local import LocalStorage

router = APIRouter(tags=["files"])


SIGNATURE_PATTERN = "^[0-9a-f]{64}$"


@router.get("/v1/files/{key:path}", responses=error_responses(400, 403, 404, authenticated=False))
def download(
    key: str,
    expires: Annotated[int, Query(ge=0, le=ID_MAX, description="When the link expires (Unix s).")],
    signature: Annotated[
        str,
        Query(description="HMAC-SHA256, hex.", json_schema_extra={"pattern": SIGNATURE_PATTERN}),
    ],
    services: Annotated[Services, Depends(get_services)],
) -> FileResponse:
    storage = services.storage
    if not isinstance(storage, LocalStorage) or storage.signer is None:
        raise ApiError(404, "not_found", "this server does not serve files; use the result URL")
    valid = re.fullmatch(SIGNATURE_PATTERN, signature) is not None
    if not (valid and storage.signer.verify(key, expires, signature)):
        raise ApiError(
            403, "invalid_signature", "the link is invalid or has expired; ask for a new one"
        )
    try:
        path = storage.path(key)
    except InvalidKey as e:
        raise ApiError(400, "invalid_key", str(e)) from None
    if not path.is_file():
        raise ApiError(404, "not_found", f"no object at {key}")
    return FileResponse(path, filename=path.name)
