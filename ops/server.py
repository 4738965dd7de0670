"""Assembling and running the API process: components from settings, the relay (or the
embedded runner) and the webhook delivery loop beside the HTTP server."""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from api import Services, create_app
from api.ratelimit import MemoryRateLimiter, RedisRateLimiter
from db import migrate, tenants
from db.database import Database
from dispatch.celery_app import make_celery_app
from dispatch.embedded import EmbeddedRunner, JobHandler
from dispatch.relay import CeleryDispatcher, OutboxRelay
from dispatch.webhooks import WebhookDeliverer
from ops.settings import Settings
from storage.base import Storage

log = logging.getLogger(__name__)


def load_embedded_handler(
    settings: Settings, database: Database, storage: Storage
) -> JobHandler | None:
    """The handler named by LONGTAKE_EMBEDDED_HANDLER (`module:function`), or None.

    The function is called once with (settings, database, storage) and returns handler(job_id).
    """
    if not settings.embedded_handler:
        return None
    module_name, _, attr = settings.embedded_handler.partition(":")
    if not attr:
        raise SystemExit(
            f"LONGTAKE_EMBEDDED_HANDLER={settings.embedded_handler!r}: use the form module:function"
        )
    factory = getattr(importlib.import_module(module_name), attr)
    return factory(settings, database, storage)


@dataclass
class ApiProcess:
    """The API with what runs beside it. `start()` the background parts, then serve."""

    app: FastAPI
    database: Database
    runner: EmbeddedRunner | None = None
    relay: OutboxRelay | None = None
    deliverer: WebhookDeliverer | None = None
    api_key_file: Path | None = None
    """Embedded mode: where the local API key was written."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _wake: threading.Event = field(default_factory=threading.Event)
    _relay_thread: threading.Thread | None = None
    _delivery_thread: threading.Thread | None = None

    @property
    def dispatching(self) -> bool:
        """Whether queued jobs will be handed to something that runs them."""
        return self.relay is not None or (self.runner is not None and self.runner.dispatching)

    def start(self) -> None:
        if self.runner is not None:
            self.runner.start()
        if self.relay is not None:
            relay = self.relay
            self._relay_thread = threading.Thread(
                target=lambda: relay.run(self._stop, wake=self._wake),
                name="longtake-relay",
                daemon=True,
            )
            self._relay_thread.start()
        if self.deliverer is not None:
            deliverer = self.deliverer
            self._delivery_thread = threading.Thread(
                target=lambda: deliverer.run(self._stop), name="longtake-webhooks", daemon=True
            )
            self._delivery_thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self.app.state.services.stopping.set()  # open event streams end
        if self.runner is not None:
            self.runner.stop()
        self._stop.set()
        self._wake.set()
        if self._relay_thread is not None:
            self._relay_thread.join(10)
        if self._delivery_thread is not None:
            self._delivery_thread.join(30)
        if self.deliverer is not None:
            self.deliverer.close()
        self.database.dispose()


def ensure_local_key(settings: Settings, database: Database) -> Path:
    """Embedded mode's single local key: the one in <data_dir>/api-key if it still works,
    else a new key of LONGTAKE_TENANT written there (readable by its owner only)."""
    path = settings.data_dir / "api-key"
    if path.is_file():
        with database.transaction() as s:
            if tenants.authenticate(s, path.read_text().strip()) is not None:
                return path
    with database.transaction() as s:
        token = tenants.create_key(s, settings.tenant, name="embedded").token
    partial = path.with_name(".api-key.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(partial, path)
    return path


def make_rate_limiter(
    settings: Settings, *, embedded: bool
) -> MemoryRateLimiter | RedisRateLimiter:
    """Shared through Redis when one is configured (the broker's by default), else per process."""
    url = settings.rate_limit_redis_url
    if url is None and settings.broker_url.startswith(("redis://", "rediss://")):
        url = settings.broker_url
    if embedded or not url:
        return MemoryRateLimiter()
    return RedisRateLimiter(url, prefix=settings.broker_key_prefix)


def build(settings: Settings, *, embedded: bool, relay: bool = True) -> ApiProcess:
    if embedded:
        settings = settings.embedded()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        migrate.upgrade(settings.database_url)
    database = settings.make_database(pooled=True)
    storage = settings.make_storage()
    services = Services(
        config=settings.api_config(),
        database=database,
        storage=storage,
        s3_reader=settings.make_s3_reader(storage),
        rate_limiter=make_rate_limiter(settings, embedded=embedded),
        speech=settings.make_speech(),
    )
    process = ApiProcess(app=create_app(services), database=database)
    if relay or embedded:
        process.deliverer = WebhookDeliverer(database, settings.delivery_config())
    if embedded and settings.auth == "keys":
        process.api_key_file = ensure_local_key(settings, database)
    if embedded:
        handler = load_embedded_handler(settings, database, storage)
        process.runner = EmbeddedRunner(
            database,
            handler,
            poll_s=settings.relay_poll_s,
            redispatch_after_s=settings.redispatch_after_s,
            sweeper=settings.make_sweeper(database, storage),
            reconciler=settings.make_reconciler(database, storage),
        )
        services.on_job_queued = process.runner.wake
        services.readiness["runner"] = process.runner.ping
    else:
        # publishes by task name: no task modules, so the API never imports the render stack
        dispatcher = CeleryDispatcher(make_celery_app(settings.celery_config(), task_modules=()))
        services.readiness["broker"] = dispatcher.ping
        if relay:
            process.relay = OutboxRelay(
                database,
                dispatcher,
                redispatch_after_s=settings.redispatch_after_s,
                sweeper=settings.make_sweeper(database, storage),
                reconciler=settings.make_reconciler(database, storage),
                prefer_local_s=settings.prefer_local_s,
            )
            services.on_job_queued = process.wake
    return process


def app_from_settings() -> FastAPI:
    """uvicorn's app factory for `longtake serve --workers N`: each worker process builds its
    own components from the environment and runs its own relay and delivery loop (any number
    of those may run at once)."""
    from api.logs import configure as configure_logging

    settings = Settings()
    configure_logging(settings.log_format)
    process = build(settings, embedded=False, relay=settings.serve_relay)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        process.start()
        try:
            yield
        finally:
            process.stop()

    process.app.router.lifespan_context = lifespan
    return process.app


class BackgroundServer:
    """uvicorn in a thread (the demo and tests): `start()` returns once it accepts requests."""

    def __init__(self, process: ApiProcess, host: str, port: int):
        self.process = process
        self.server = uvicorn.Server(
            uvicorn.Config(process.app, host=host, port=port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, name="longtake-api", daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        self.process.start()
        self.thread.start()
        for _ in range(int(timeout / 0.05)):
            if self.server.started:
                return
            if not self.thread.is_alive():
                break
            threading.Event().wait(0.05)
        self.stop()
        raise RuntimeError("the API server did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.process.stop()
