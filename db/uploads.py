"""Uploaded inputs: validated once, stored once, referenced by any number of jobs."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db.models import Upload, utcnow


def new_upload_id() -> str:
    return f"upl_{secrets.token_hex(12)}"


UPLOAD_ID_PATTERN = "^upl_[0-9a-f]{24}$"


def is_upload_id(value: str) -> bool:
    """Whether `value` has the form of an upload id (what `new_upload_id` makes)."""
    return re.fullmatch(UPLOAD_ID_PATTERN, value) is not None


@dataclass(frozen=True)
class NewUpload:
    id: str
    tenant: str
    kind: str
    sha256: str
    key: str
    bytes: int
    info: dict[str, Any]
    source: str | None = None


@dataclass(frozen=True)
class UploadRecord:
    """An upload as plain, read-only data, usable after the session that read it is gone
    (committed or rolled back): what a process may cache. An upload never changes once
    written, so a record stays true."""

    id: str
    tenant: str
    kind: str
    key: str
    bytes: int
    info: Mapping[str, Any]
    """What inspection found (a read-only view of JSON scalars)."""
    sha256: str

    @classmethod
    def of(cls, upload: Upload) -> UploadRecord:
        return cls(
            id=upload.id,
            tenant=upload.tenant,
            kind=upload.kind,
            key=upload.key,
            bytes=upload.bytes,
            info=MappingProxyType(dict(upload.info)),
            sha256=upload.sha256,
        )


def get_upload_records(
    session: Session, upload_ids: list[str], *, tenant: str
) -> dict[str, UploadRecord]:
    """The tenant's uploads among `upload_ids`, by id, as records."""
    return {
        upload_id: UploadRecord.of(upload)
        for upload_id, upload in get_uploads(session, upload_ids, tenant=tenant).items()
    }


def get_upload(session: Session, upload_id: str, *, tenant: str) -> Upload | None:
    return session.scalars(
        sa.select(Upload).where(Upload.id == upload_id, Upload.tenant == tenant)
    ).one_or_none()


def get_uploads(session: Session, upload_ids: list[str], *, tenant: str) -> dict[str, Upload]:
    if not upload_ids:
        return {}
    rows = session.scalars(
        sa.select(Upload).where(Upload.id.in_(upload_ids), Upload.tenant == tenant)
    )
    return {row.id: row for row in rows}


def find_by_digest(session: Session, *, tenant: str, kind: str, sha256: str) -> Upload | None:
    return session.scalars(
        sa.select(Upload).where(
            Upload.tenant == tenant, Upload.kind == kind, Upload.sha256 == sha256
        )
    ).one_or_none()


def add_upload(session: Session, new: NewUpload, *, now: datetime | None = None) -> Upload:
    """Insert the record; the unique (tenant, kind, sha256) surfaces a concurrent twin here."""
    upload = Upload(
        id=new.id,
        tenant=new.tenant,
        kind=new.kind,
        sha256=new.sha256,
        key=new.key,
        bytes=new.bytes,
        info=new.info,
        source=new.source,
        created_at=now or utcnow(),
    )
    session.add(upload)
    session.flush()
    return upload
