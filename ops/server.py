"""Assembling and running the API process: components from settings, the relay (or the
embedded runner) beside the HTTP server."""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI

from api import Services, create_app
from db import migrate
from db.database import Database
from ops.settings import Settings
from storage.base import Storage
from worker.celery_app import make_celery_app
from worker.embedded import EmbeddedRunner, JobHandler
from worker.relay import CeleryDispatcher, OutboxRelay

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
    _stop: threading.Event = field(default_factory=threading.Event)
    _wake: threading.Event = field(default_factory=threading.Event)
    _relay_thread: threading.Thread | None = None

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

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.stop()
        self._stop.set()
        self._wake.set()
        if self._relay_thread is not None:
            self._relay_thread.join(10)
        self.database.dispose()


def build(settings: Settings, *, embedded: bool, relay: bool = True) -> ApiProcess:
    if embedded:
        settings = settings.embedded()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        migrate.upgrade(settings.database_url)
    database = Database(settings.database_url)
    storage = settings.make_storage()
    services = Services(
        config=settings.api_config(),
        database=database,
        storage=storage,
        s3_reader=settings.make_s3_reader(storage),
    )
    process = ApiProcess(app=create_app(services), database=database)
    if embedded:
        handler = load_embedded_handler(settings, database, storage)
        process.runner = EmbeddedRunner(
            database,
            handler,
            poll_s=settings.relay_poll_s,
            redispatch_after_s=settings.redispatch_after_s,
        )
        services.on_job_queued = process.runner.wake
        services.readiness["runner"] = process.runner.ping
    else:
        # publishes by task name: no task modules, so the API never imports the render stack
        dispatcher = CeleryDispatcher(make_celery_app(settings.celery_config(), task_modules=()))
        services.readiness["broker"] = dispatcher.ping
        if relay:
            process.relay = OutboxRelay(
                database, dispatcher, redispatch_after_s=settings.redispatch_after_s
            )
            services.on_job_queued = process.wake
    return process


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
