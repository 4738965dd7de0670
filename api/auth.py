"""Who is calling: the API key in `Authorization: Bearer`, its tenant and the tenant's limits,
and the key's rate limit. Every /v1 route except signed downloads depends on `get_caller`.

Key lookups are cached for `auth_cache_s` seconds per process (a revoked key stops working
within that time); `last_used_at` is written when the cache is refreshed, not per request.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Any

from fastapi.security import HTTPBearer

from api.config import ApiConfig, InputLimits
from api.errors import ApiError
from db import tenants
from db.database import Database
from db.models import Tenant

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `longtake keys create`, sent as `Authorization: Bearer <key>`.",
)


@dataclass(frozen=True)
class Caller:
    tenant: str
    key_id: str | None
    """None when authentication is off."""
    limits: InputLimits
    max_queued_jobs: int
    rate_limit_per_s: float
    """0: unlimited."""


def _caller(config: ApiConfig, tenant: Tenant | None, key_id: str | None, rate: float | None):
    limits = config.limits
    if tenant is not None:
        overrides = {
            f: getattr(tenant, f)
            for f in ("max_image_bytes", "max_audio_bytes", "max_audio_seconds")
            if getattr(tenant, f) is not None
        }
        limits = dataclasses.replace(limits, **overrides)
    return Caller(
        tenant=tenant.name if tenant is not None else config.tenant,
        key_id=key_id,
        limits=limits,
        max_queued_jobs=(tenant.max_queued_jobs if tenant is not None else None)
        or config.max_queued_jobs,
        rate_limit_per_s=config.rate_limit_per_s if rate is None else rate,
    )


class Authenticator:
    MAX_CACHED = 10_000

    def __init__(self, database: Database, config: ApiConfig, clock: Any = time.monotonic):
        self.database = database
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, Caller | None]] = {}

    def cached(self, token: str) -> tuple[bool, Caller | None]:
        """(hit, caller) without touching the database."""
        entry = self._cache.get(token)
        if entry is None or self._clock() - entry[0] > self.config.auth_cache_s:
            return False, None
        return True, entry[1]

    def lookup(self, token: str) -> Caller | None:
        """The caller of this token from the database (and into the cache)."""
        with self.database.transaction() as s:
            found = tenants.authenticate(s, token)
            if found is not None:
                tenants.touch_key(s, found[0].id)
        caller = None
        if found is not None:
            key, tenant = found
            caller = _caller(self.config, tenant, key.id, key.rate_limit_per_s)
        with self._lock:
            if len(self._cache) >= self.MAX_CACHED:
                self._cache.clear()
            self._cache[token] = (self._clock(), caller)
        return caller

    def anonymous(self) -> Caller:
        """Authentication off: the configured tenant (its limits, if it has a row)."""
        hit, caller = self.cached("")
        if hit and caller is not None:
            return caller
        with self.database.transaction() as s:
            tenant = tenants.get_tenant(s, self.config.tenant)
        caller = _caller(self.config, tenant, None, None)
        with self._lock:
            self._cache[""] = (self._clock(), caller)
        return caller


def _unauthorized(code: str, message: str) -> ApiError:
    return ApiError(401, code, message, headers={"WWW-Authenticate": "Bearer"})
