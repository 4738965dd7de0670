"""Presenters: a tenant's named portrait (an upload), prompt and size.

A job that names a presenter copies what it needs from it when it is accepted (the portrait's
key, the prompt, the size), so deleting a presenter, or making a new one of the same name,
changes no job. The portrait stays stored as an upload, which jobs may still refer to.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db.models import Presenter, utcnow
from db.uploads import UploadRecord

PRESENTER_NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit: a name that can
stand in a URL path and a CSV cell as it is."""


def is_presenter_name(value: str) -> bool:
    return re.fullmatch(PRESENTER_NAME_PATTERN, value) is not None


@dataclass(frozen=True)
class NewPresenter:
    tenant: str
    name: str
    upload_id: str
    prompt: str
    size: str


@dataclass(frozen=True)
class PresenterRecord:
    """A presenter and its portrait as plain data, usable after its session is gone."""

    id: uuid.UUID
    tenant: str
    name: str
    prompt: str
    size: str
    portrait: UploadRecord
    created_at: datetime

    @classmethod
    def of(cls, presenter: Presenter) -> PresenterRecord:
        return cls(
            id=presenter.id,
            tenant=presenter.tenant,
            name=presenter.name,
            prompt=presenter.prompt,
            size=presenter.size,
            portrait=UploadRecord.of(presenter.upload),
            created_at=presenter.created_at,
        )


def add_presenter(
    session: Session, new: NewPresenter, *, now: datetime | None = None
) -> PresenterRecord:
    """Insert a presenter; a name the tenant has already raises IntegrityError (unique
    (tenant, name)) when the session flushes."""
    presenter = Presenter(
        id=uuid.uuid4(),
        tenant=new.tenant,
        name=new.name,
        upload_id=new.upload_id,
        prompt=new.prompt,
        size=new.size,
        created_at=now or utcnow(),
    )
    session.add(presenter)
    session.flush()
    session.refresh(presenter)  # loads its upload
    return PresenterRecord.of(presenter)


def get_presenter(session: Session, name: str, *, tenant: str) -> PresenterRecord | None:
    presenter = session.scalars(
        sa.select(Presenter).where(Presenter.tenant == tenant, Presenter.name == name)
    ).one_or_none()
    return None if presenter is None else PresenterRecord.of(presenter)


def get_presenters(
    session: Session, names: list[str], *, tenant: str
) -> dict[str, PresenterRecord]:
    """The tenant's presenters among `names`, by name (those that do not exist are absent)."""
    if not names:
        return {}
    rows = session.scalars(
        sa.select(Presenter).where(Presenter.tenant == tenant, Presenter.name.in_(names))
    )
    return {row.name: PresenterRecord.of(row) for row in rows}


def list_presenters(
    session: Session, *, tenant: str, after: str | None = None, limit: int = 50
) -> list[PresenterRecord]:
    """The tenant's presenters by name, those after `after` (a name) when given."""
    stmt = sa.select(Presenter).where(Presenter.tenant == tenant)
    if after is not None:
        stmt = stmt.where(Presenter.name > after)
    rows = session.scalars(stmt.order_by(Presenter.name).limit(limit))
    return [PresenterRecord.of(row) for row in rows]


def delete_presenter(session: Session, name: str, *, tenant: str) -> bool:
    """Whether the tenant had a presenter of that name (now gone). Its portrait stays: it is
    an upload, and accepted jobs refer to it."""
    result = session.execute(
        sa.delete(Presenter).where(Presenter.tenant == tenant, Presenter.name == name)
    )
    return bool(result.rowcount)
