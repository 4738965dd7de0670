"""GET /v1/jobs/{id}/events as Server-Sent Events.

Each job event is sent with its id (`id:` — the job_events row id, increasing for a job), its
kind (`event:`) and the event as JSON (`data:`). After every batch of events, and whenever the
job row changes (progress is recorded on every clip; progress events are rate-limited), a
`job` event without an id carries the job as GET /v1/jobs/{id} returns it. A client that
reconnects with `Last-Event-ID` gets every later event, then the stream continues live. The
stream ends once the job is final and its last event was sent.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool

from api.schemas import EventOut, JobOut
from api.services import Services
from db import job_store
from db.models import Job, JobEvent
from db.states import TERMINAL, JobStatus

PAGE = 500
RETRY_MS = 2000
"""How long a client waits before reconnecting (the SSE `retry:` field)."""


def sse(data: Any, *, event: str | None = None, id: int | None = None) -> bytes:
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), default=str))
    return ("\n".join(lines) + "\n\n").encode()


def _poll(services: Services, job_id: uuid.UUID, after: int) -> tuple[list[JobEvent], Job | None]:
    with services.database.transaction() as s:
        return job_store.list_events(s, job_id, after_id=after, limit=PAGE), job_store.get_job(
            s, job_id
        )


async def stream(services: Services, job_id: uuid.UUID, last_event_id: int) -> AsyncIterator[bytes]:
    config = services.config
    cursor = last_event_id
    seen_update = None
    yield f"retry: {RETRY_MS}\n\n".encode()
    quiet_since = time.monotonic()
    while True:
        events, job = await run_in_threadpool(_poll, services, job_id, cursor)
        if job is None:  # deleted while streaming
            return
        for event in events:
            yield sse(EventOut.of(event).model_dump(mode="json"), event=event.event, id=event.id)
            cursor = event.id
        if events or job.updated_at != seen_update:
            seen_update = job.updated_at
            yield sse(JobOut.of(job).model_dump(mode="json"), event="job")
            quiet_since = time.monotonic()
        if len(events) == PAGE:
            continue  # more history to replay
        if JobStatus(job.status) in TERMINAL or services.stopping.is_set():
            return
        if time.monotonic() - quiet_since >= config.sse_keepalive_s:
            yield b": keepalive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(config.sse_poll_s)
