"""Errors as JSON: `{"error": {"code": ..., "message": ..., "field": ...}}`.

`code` is stable and machine-readable; `message` tells a person what to fix.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field:
            error["field"] = self.field
        return {"error": error}


def error_response(error: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def pydantic_error(errors: list[Any]) -> ApiError:
    """The first pydantic error as an ApiError naming the field (`jobs[2].prompt`)."""
    first = errors[0]
    field = ""
    for part in first.get("loc", ()):
        if isinstance(part, int):
            field += f"[{part}]"
        elif part not in ("body", "query", "path", "header"):
            field += f".{part}" if field else str(part)
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        message = "unknown field; check the spelling against the API documentation"
    elif first.get("type") == "enum":
        expected = str(first.get("ctx", {}).get("expected", "")).replace("'", "")
        message = f"{first.get('input')!r} is unknown; use one of: {expected}"
    return ApiError(
        422, "invalid_parameter", f"{field}: {message}" if field else message, field or None
    )


log = logging.getLogger(__name__)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}

# What the documented error answers look like (OpenAPI), for `responses=` on the routes.
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": "string"},
            },
        }
    },
}
_ERROR_TEXT = {
    400: "the request cannot be parsed",
    401: "no valid API key (`Authorization: Bearer <key>`)",
    403: "the download link is invalid or has expired",
    404: "no such resource for this tenant",
    409: "a conflict with the resource's state or an earlier request",
    411: "an upload without Content-Length",
    413: "the body or a file is over the limits",
    415: "an unsupported Content-Type",
    422: "a value is wrong; the message says which and why",
    429: "over the rate limit (see Retry-After) or the tenant's queued-job limit",
    503: "a dependency (database, storage) is unreachable; retry later",
}


def error_responses(*statuses: int, authenticated: bool = True) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error statuses (and 400, 401, 422, 429 and 503
    on routes that need an API key)."""
    always = {400, 401, 422, 429, 503} if authenticated else {422}
    return {
        status: {
            "description": _ERROR_TEXT[status],
            "content": {"application/json": {"schema": ERROR_SCHEMA}},
        }
        for status in sorted({*always, *statuses})
    }


_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def method_table(app: FastAPI) -> list[tuple[re.Pattern[str], frozenset[str]]]:
    """(path pattern, methods) of every route: what a 405's `Allow` is made from."""
    table = []
    for route in iter_route_contexts(app.routes):
        if route.path and route.methods:
            regex, _, _ = compile_path(route.path)
            table.append((regex, frozenset(route.methods)))
    return table


def allowed_methods(request: Request) -> list[str]:
    """Every method some route answers at the request's path. Starlette's 405 names only the
    methods of the first route that matched the path, and GET and POST of one path are two
    routes here."""
    path = request.scope["path"]
    methods = {m for regex, route in request.app.state.methods if regex.match(path) for m in route}
    return sorted(methods, key=lambda m: (_METHOD_ORDER + (m,)).index(m))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        if exc.code == "storage_unavailable":
            request.app.state.services.metrics.observe_storage_unavailable()
        return error_response(exc, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(pydantic_error(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        headers = dict(exc.headers or {})
        if exc.status_code == 404 and message == "Not Found":
            message = (
                f"nothing at {request.url.path}: no such endpoint, or an id that is not one "
                "(see /docs)"
                if request.url.path.startswith("/v1/")
                else "no such endpoint; the API lives under /v1 (see /docs)"
            )
        if exc.status_code == 400 and "parsing the body" in message:
            code, message = "malformed_json", "the body is not valid JSON"
        if exc.status_code == 405:
            allowed = allowed_methods(request)
            headers["Allow"] = ", ".join(allowed)
            message = f"{request.method} is not allowed here; use {' or '.join(allowed)}"
        return error_response(ApiError(exc.status_code, code, message), headers)

    @app.exception_handler(sa.exc.OperationalError)
    async def _database_down(request: Request, exc: sa.exc.OperationalError) -> JSONResponse:
        log.warning("database unavailable in %s %s: %s", request.method, request.url.path, exc)
        return error_response(
            ApiError(503, "database_unavailable", "the job database is unreachable; retry later"),
            {"Retry-After": "5"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error(
            "unexpected error in %s %s",
            request.method,
            request.url.path,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        return error_response(
            ApiError(500, "internal_error", "the server failed; the request can be retried")
        )
