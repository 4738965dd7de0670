"""Presenters: a tenant's named portrait, prompt and size, checked once and named by any
number of jobs instead of sending them again.

The portrait is checked as a job's image is and stored as an upload (content-addressed, so a
portrait already uploaded is not stored twice); the prompt and size are checked by the job
request's own validators. A rejected request leaves no row and no object behind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa

from api.errors import ApiError
from api.inputs import ImageInfo, inspect_image
from api.references import LocalInput, StoredInput, check_stored, info_dict, upload_not_found
from api.services import Services
from db import presenters, uploads
from db.presenters import PresenterRecord
from storage import keys
from storage.base import StorageError

if TYPE_CHECKING:
    from api.auth import Caller

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PortraitRef:
    """A portrait named by the id of an earlier upload."""

    upload_id: str


def not_found(name: str, field: str | None = "presenter") -> ApiError:
    """404 for the resource itself; 422 naming `field` for a request that names it."""
    if field is None:
        return ApiError(404, "presenter_not_found", f"presenter {name} does not exist")
    return ApiError(
        422,
        "presenter_not_found",
        f"{field}: you have no presenter named {name!r}; create it with POST /v1/presenters "
        "(`longtake presenters create`), or list yours with GET /v1/presenters",
        field,
    )


def duplicate(name: str) -> ApiError:
    return ApiError(
        409,
        "presenter_exists",
        f"name: you have a presenter named {name!r} already; choose another name, or delete "
        "that one first (jobs that used it keep their own copy of it)",
        "name",
    )


def find(services: Services, tenant: str, name: str, field: str = "presenter") -> PresenterRecord:
    """The tenant's presenter of that name; 422 naming `field` when it has none."""
    with services.database.transaction() as s:
        found = presenters.get_presenter(s, name, tenant=tenant)
    if found is None:
        raise not_found(name, field)
    return found


def find_many(services: Services, tenant: str, names: list[str]) -> dict[str, PresenterRecord]:
    with services.database.transaction() as s:
        return presenters.get_presenters(s, sorted(set(names)), tenant=tenant)


def create(
    services: Services,
    caller: Caller,
    name: str,
    prompt: str,
    size: str,
    portrait: LocalInput | PortraitRef,
) -> PresenterRecord:
    """Check the portrait, store it (unless the tenant has the same bytes already), and write
    the presenter. 409 when the name is taken."""
    new = presenters.NewPresenter(caller.tenant, name, "", prompt, size)
    with services.database.transaction() as s:
        if presenters.get_presenter(s, name, tenant=caller.tenant) is not None:
            raise duplicate(name)
    if isinstance(portrait, PortraitRef):
        return _with_upload(services, caller, new, portrait.upload_id)
    info = inspect_image(portrait.path, caller.limits)
    for _ in range(2):  # a second time only after a concurrent twin upload won the race
        created = _with_file(services, caller, new, portrait, info)
        if created is not None:
            return created
    raise ApiError(503, "conflict_retry", "the portrait was being stored concurrently; retry")


def _with_upload(
    services: Services, caller: Caller, new: presenters.NewPresenter, upload_id: str
) -> PresenterRecord:
    try:
        with services.database.transaction() as s:
            found = uploads.get_upload_records(s, [upload_id], tenant=caller.tenant)
            if upload_id not in found:
                raise upload_not_found(upload_id, "image")
            check_stored(StoredInput(found[upload_id]), "image", caller.limits, "image")
            return presenters.add_presenter(s, _using(new, upload_id))
    except sa.exc.IntegrityError:
        raise duplicate(new.name) from None


def _with_file(
    services: Services,
    caller: Caller,
    new: presenters.NewPresenter,
    got: LocalInput,
    info: ImageInfo,
) -> PresenterRecord | None:
    """The presenter with the file as its portrait; None when a concurrent upload of the
    same bytes won (the caller tries again and finds it)."""
    tenant = caller.tenant
    with services.database.transaction() as s:
        twin = uploads.find_by_digest(s, tenant=tenant, kind="image", sha256=got.sha256)
    if twin is not None:
        return _with_upload(services, caller, new, twin.id)
    upload_id = uploads.new_upload_id()
    key = keys.upload_key(upload_id, info.ext)
    try:
        services.storage.put_file(key, got.path, info.content_type)
    except StorageError as e:
        _delete_quietly(services, key)
        raise ApiError(503, "storage_unavailable", f"could not store the portrait: {e}") from None
    upload = uploads.NewUpload(
        upload_id, tenant, "image", got.sha256, key, got.path.stat().st_size, info_dict(info),
        source=got.source,
    )  # fmt: skip
    try:
        with services.database.transaction() as s:
            uploads.add_upload(s, upload)
            return presenters.add_presenter(s, _using(new, upload_id))
    except sa.exc.IntegrityError:
        _delete_quietly(services, key)
        with services.database.transaction() as s:
            if presenters.get_presenter(s, new.name, tenant=tenant) is not None:
                raise duplicate(new.name) from None
        return None
    except BaseException:
        _delete_quietly(services, key)
        raise


def _using(new: presenters.NewPresenter, upload_id: str) -> presenters.NewPresenter:
    return presenters.NewPresenter(new.tenant, new.name, upload_id, new.prompt, new.size)


def _delete_quietly(services: Services, key: str) -> None:
    try:
        services.storage.delete(key)
    except Exception:  # no row names it: the reconciler removes it later
        log.exception("could not delete portrait %s of a rejected presenter", key)
