"""Structured logs: one JSON object per line, with the job id, tenant and request id where
there is one, and one access line per HTTP request.

Handlers name the job a request concerns with `request.state.job_id` (routes with a `job_id`
path parameter need nothing); background code uses `log_context(job_id=...)`.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "longtake_log_context", default=None
)
# LogRecord attributes that are not extras (uvicorn's color_message repeats the message)
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}

access_log = logging.getLogger("longtake.access")


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add fields (job_id=..., tenant=...) to every log line written inside the block."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_context.get() or {})
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(fmt: str = "json", level: str = "info") -> None:
    """Root logging for a longtake process: JSON lines (or plain text) on stderr."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class RequestLogMiddleware:
    """One `longtake.access` line per request: method, route, status, duration, request id,
    tenant and job id. The request id comes from X-Request-Id or is made here, and is sent
    back in the response's X-Request-Id."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")[:128]
                break
        request_id = request_id or uuid.uuid4().hex
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if access_log.isEnabledFor(logging.INFO):
                state = scope.get("state") or {}
                job_id = (scope.get("path_params") or {}).get("job_id") or state.get("job_id")
                route = getattr(scope.get("route"), "path", None)
                extra = {
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "duration_ms": round((time.perf_counter() - start) * 1000, 2),
                    "tenant": state.get("tenant"),
                    "job_id": str(job_id) if job_id else None,
                }
                access_log.info(
                    "%s %s %s", scope["method"], scope["path"], status,
                    extra={k: v for k, v in extra.items() if v is not None},
                )  # fmt: skip
