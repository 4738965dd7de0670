"""Fixtures of the API tests: the app served by uvicorn on loopback, for what needs real
concurrent connections (racing submissions, event streams)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from tests.conftest import free_port


class LiveServer:
    def __init__(self, app, port: int):
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def live_api(api_services, api_key) -> Iterator[LiveServer]:
    """The app (Postgres, S3) served on a free loopback port; `.url`, and the fixture
    `api_key` authenticates as tenant `default`."""
    from api import create_app

    api_services.config = dataclasses.replace(api_services.config, sse_poll_s=0.05)
    server = LiveServer(create_app(api_services), free_port())
    server.start()
    yield server
    api_services.stopping.set()  # end open event streams
    server.stop()
