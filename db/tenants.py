"""Tenants and their API keys.

A token looks like `lt_<key id>_<secret>`: the key id (also the row's id, `key_<id>`) lets an
operator see which key a request used without the secret. Only the token's sha256 is stored.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.models import ApiKey, Job, Tenant, utcnow
from db.states import JobStatus
from db.webhooks import new_secret

TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
UNFINISHED = (JobStatus.QUEUED.value, JobStatus.RUNNING.value, JobStatus.STITCHING.value)


class InvalidTenantName(ValueError):
    pass


def check_tenant_name(name: str) -> str:
    if not TENANT_NAME.match(name):
        raise InvalidTenantName(
            f"tenant name {name!r} must be 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class NewKey:
    key: ApiKey
    token: str
    """Shown once: only its digest is stored."""


LIMIT_FIELDS = ("max_queued_jobs", "max_image_bytes", "max_audio_bytes", "max_audio_seconds")
"""A tenant's own limits (columns of `tenants`); NULL means the server default."""


def ensure_tenant(session: Session, name: str, *, now: datetime | None = None) -> Tenant:
    """The tenant, created (with default limits) when it does not exist yet."""
    check_tenant_name(name)
    values = {"name": name, "webhook_secret": new_secret(), "created_at": now or utcnow()}
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    session.execute(dialect.insert(Tenant).values(**values).on_conflict_do_nothing())
    return session.get(Tenant, name, populate_existing=True)


def get_tenant(session: Session, name: str) -> Tenant | None:
    return session.get(Tenant, name)


def list_tenants(session: Session) -> list[Tenant]:
    return list(session.scalars(sa.select(Tenant).order_by(Tenant.name)))


def set_limits(session: Session, name: str, changes: Mapping[str, float | None]) -> Tenant:
    """Set some of a tenant's limits (a None value resets that one to the server default)."""
    unknown = set(changes) - set(LIMIT_FIELDS)
    if unknown:
        raise ValueError(f"unknown limits {sorted(unknown)}; known: {', '.join(LIMIT_FIELDS)}")
    tenant = ensure_tenant(session, name)
    for field, value in changes.items():
        if value is not None and value < 1:
            raise ValueError(f"{field} must be at least 1, got {value}")
        setattr(tenant, field, value)
    return tenant


def create_key(
    session: Session,
    tenant: str,
    *,
    name: str = "",
    rate_limit_per_s: float | None = None,
    now: datetime | None = None,
) -> NewKey:
    if rate_limit_per_s is not None and rate_limit_per_s < 0:
        raise ValueError("rate_limit_per_s must be >= 0 (0: unlimited)")
    ensure_tenant(session, tenant, now=now)
    key_id = secrets.token_hex(6)
    token = f"lt_{key_id}_{secrets.token_urlsafe(32)}"
    key = ApiKey(
        id=f"key_{key_id}",
        tenant=tenant,
        name=name,
        token_sha256=token_sha256(token),
        rate_limit_per_s=rate_limit_per_s,
        created_at=now or utcnow(),
    )
    session.add(key)
    session.flush()
    return NewKey(key, token)


def list_keys(session: Session, *, tenant: str | None = None) -> list[ApiKey]:
    stmt = sa.select(ApiKey)
    if tenant is not None:
        stmt = stmt.where(ApiKey.tenant == tenant)
    return list(session.scalars(stmt.order_by(ApiKey.tenant, ApiKey.created_at, ApiKey.id)))


def revoke_key(session: Session, key_id: str, *, now: datetime | None = None) -> ApiKey | None:
    """Revoke a key (idempotent); None when there is no such key."""
    key = session.get(ApiKey, key_id, with_for_update=True)
    if key is not None and key.revoked_at is None:
        key.revoked_at = now or utcnow()
    return key


def authenticate(session: Session, token: str) -> tuple[ApiKey, Tenant] | None:
    """The active key with this token and its tenant, or None."""
    row = session.execute(
        sa.select(ApiKey, Tenant)
        .join(Tenant, Tenant.name == ApiKey.tenant)
        .where(ApiKey.token_sha256 == token_sha256(token), ApiKey.revoked_at.is_(None))
    ).one_or_none()
    return None if row is None else (row[0], row[1])


def touch_key(session: Session, key_id: str, *, now: datetime | None = None) -> None:
    session.execute(
        sa.update(ApiKey)
        .where(ApiKey.id == key_id)
        .values(last_used_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )


def count_unfinished(session: Session, tenant: str) -> int:
    """Jobs of the tenant that are queued, running or stitching (what its quota counts)."""
    stmt = (
        sa.select(sa.func.count())
        .select_from(Job)
        .where(Job.status.in_(UNFINISHED), Job.tenant == tenant)
    )
    return session.scalar(stmt) or 0
