"""Request size limits that act before a body is read.

`BodyLimitMiddleware` answers 413 from the Content-Length alone, and stops a body without
one (chunked) as soon as it passes the cap; `read_body` does the same for one route's own,
smaller limit. Nothing is buffered beyond the limit.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import text
from api.errors import ApiError


def declared_length(headers: Any) -> int | None:
    """The Content-Length as an int; None when absent; 400 when it is not a number."""
    value = headers.get("content-length")
    if value is None:
        return None
    if not value.strip().isdigit():
        raise ApiError(400, "invalid_content_length", "Content-Length must be a number")
    return int(value)


def too_large(limit: int, what: str = "request bodies") -> ApiError:
    return ApiError(413, "request_too_large", f"{what} are limited to {limit} bytes")


class BodyLimitMiddleware:
    """No request body larger than `max_bytes`, whatever the route."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
                break
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise too_large(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)

    async def _reject(self, send: Send) -> None:
        body = json.dumps(too_large(self.max_bytes).body()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def read_body(request: Request, limit: int, what: str = "JSON bodies") -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed `limit`."""
    length = declared_length(request.headers)
    if length is not None and length > limit:
        raise too_large(limit, what)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit, what)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_object(request: Request, limit: int, what: str = "JSON bodies") -> dict:
    raw = text.parse_json(await read_body(request, limit, what))
    if not isinstance(raw, dict):
        raise ApiError(400, "malformed_json", "the body must be a JSON object")
    return raw
