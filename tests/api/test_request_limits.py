"""Request size limits act before a body is read: from Content-Length, and while a body
without one (chunked) streams in."""

from __future__ import annotations

import dataclasses
import socket

from fastapi.testclient import TestClient

from api import create_app
from tests.conftest import count_rows


def raw_request(url: str, head: str, body_chunks: list[bytes]) -> tuple[int, bytes]:
    """Send a request by hand (to control framing); returns the status and what came back."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the rest of the body
        answer = b""
        while True:  # until the headers and the whole body of the answer are in
            head, _, body = answer.partition(b"\r\n\r\n")
            lengths = [
                line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")
            ]
            if lengths and len(body) >= int(lengths[0].split(b":")[1]):
                break
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    return int(answer.split(b" ", 2)[1]), answer


def test_a_declared_oversized_body_is_refused_unread(live_api, api_key, api_services):
    cap = api_services.config.request_cap
    head = (
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Authorization: Bearer {api_key}\r\nContent-Length: {cap + 1}\r\n\r\n"
    )
    # only the headers are sent: the answer comes without waiting for the body
    status, answer = raw_request(live_api.url, head, [])
    assert status == 413 and b"request_too_large" in answer


def test_a_chunked_body_is_cut_off_at_the_limit(live_api, api_key, api_services):
    limit = api_services.config.max_json_bytes
    head = (
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {api_key}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"x" * 65536
    chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (limit // len(chunk) + 4)
    status, answer = raw_request(live_api.url, head, chunks)
    assert status == 413 and b"limited to" in answer
    assert count_rows(api_services.database)["jobs"] == 0


def test_the_server_wide_cap_applies_to_every_route(api_services, api_key):
    api_services.config = dataclasses.replace(api_services.config, max_request_bytes=1000)
    client = TestClient(create_app(api_services), headers={"Authorization": f"Bearer {api_key}"})
    r = client.post("/v1/webhooks", content=b"{" + b" " * 2000 + b"}",
                    headers={"Content-Type": "application/json"})  # fmt: skip
    assert (r.status_code, r.json()["error"]["code"]) == (413, "request_too_large")
    r = client.post("/nowhere", content=b"x" * 2000)
    assert r.status_code == 413
    batch = client.post("/v1/batches", json={"jobs": [{"prompt": "p" * 2000}]})
    assert batch.status_code == 413


def test_an_unreachable_database_is_a_503(api_services, api_key):
    from db.database import Database

    api_services.database = Database("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    api_services.authenticator.database = api_services.database
    client = TestClient(create_app(api_services), headers={"Authorization": f"Bearer {api_key}"})
    r = client.get("/v1/jobs")
    assert (r.status_code, r.json()["error"]["code"]) == (503, "database_unavailable")
    assert r.headers["retry-after"] == "5"
