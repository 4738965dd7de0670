"""Fixtures of the API tests: the app served by uvicorn on loopback, for what needs real
concurrent connections (racing submissions, event streams)."""

from __future__ import annotations

import contextlib
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


class DroppingProxy:
    """A TCP proxy on loopback whose open connections can be cut (a network drop)."""

    def __init__(self, upstream_port: int):
        import socket

        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list = []
        self.connections = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self.sockets += [client, upstream]
                self.connections += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source, sink) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.close()

    def drop_all(self) -> None:
        import socket

        with self._lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()
        self.drop_all()


@pytest.fixture
def proxy(live_api) -> Iterator[DroppingProxy]:
    port = int(live_api.url.rsplit(":", 1)[1])
    p = DroppingProxy(port)
    yield p
    p.close()
