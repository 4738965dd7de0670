"""The request dependencies every route takes: the process's services and the caller.

Kept apart from `api.services` (what the components are) and `api.auth` (how a key becomes a
caller), so that neither has to import the other.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool

from api.auth import Authenticator, Caller, _unauthorized, bearer
from api.errors import ApiError
from api.services import Services


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_caller(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    auth: Authenticator = services.authenticator
    if not services.config.auth_required:
        caller = await run_in_threadpool(auth.anonymous)
    else:
        if credentials is None:
            raise _unauthorized(
                "missing_api_key",
                "send an API key as `Authorization: Bearer <key>` "
                "(create one with `longtake keys create`)",
            )
        hit, caller = auth.cached(credentials.credentials)
        if not hit:
            caller = await run_in_threadpool(auth.lookup, credentials.credentials)
        if caller is None:
            raise _unauthorized("invalid_api_key", "the API key is unknown or was revoked")
    request.state.tenant = caller.tenant
    rate = caller.rate_limit_per_s
    if rate > 0:
        bucket = caller.key_id or f"tenant:{caller.tenant}"
        wait = await services.rate_limiter.acquire(bucket, rate, 2 * rate)
        if wait > 0:
            retry_after = max(1, int(wait + 0.999))
            raise ApiError(
                429,
                "rate_limited",
                f"this API key is limited to {rate:g} requests per second; "
                f"retry in {retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]
