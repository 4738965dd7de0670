"""Downloads behind the local backend's signed URLs (S3 serves its presigned URLs itself)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from api.deps import get_services
from api.errors import ApiError, error_responses
from api.services import Services
from storage.keys import InvalidKey
from storage.local import LocalStorage

router = APIRouter(tags=["files"])


@router.get("/v1/files/{key:path}", responses=error_responses(400, 403, 404, authenticated=False))
def download(
    key: str, expires: int, signature: str, services: Annotated[Services, Depends(get_services)]
) -> FileResponse:
    storage = services.storage
    if not isinstance(storage, LocalStorage) or storage.signer is None:
        raise ApiError(404, "not_found", "this server does not serve files; use the result URL")
    if not storage.signer.verify(key, expires, signature):
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
