"""A small synchronous client of the /v1 API (used by the CLI and the demo)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx


class ApiClientError(Exception):
    """The API answered with an error (`code`, `message`) or could not be reached."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class LongtakeClient:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: Any = None,
    ):
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers=headers,
            # certificates matter only to an https API; loading the CA bundle for a plain
            # http one (loopback, embedded mode) would cost a CLI command a tenth of a second
            verify=self.base_url.startswith("https://"),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LongtakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise ApiClientError(f"cannot reach the API at {self.base_url}: {e}") from None
        if response.status_code >= 400:
            self._raise(response)
        return response

    @staticmethod
    def _raise(response: httpx.Response) -> None:
        try:
            error = response.json()["error"]
            code, message = error["code"], error["message"]
        except (ValueError, KeyError, TypeError):
            code, message = None, response.text[:500] or response.reason_phrase
        raise ApiClientError(message, response.status_code, code)

    def submit(
        self,
        image: Path | None,
        audio: Path | None,
        *,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """Upload the files with the render parameters (None values are left out). A job that
        names a presenter (`presenter=NAME`) sends no image; without audio, the parameters give
        a script (`script`, `language`, `voice`) to be spoken."""
        data = {k: str(v) for k, v in params.items() if v is not None}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        with contextlib.ExitStack() as opened:
            files = {}
            if image is not None:
                files["image"] = (image.name, opened.enter_context(image.open("rb")))
            if audio is not None:
                files["audio"] = (audio.name, opened.enter_context(audio.open("rb")))
            if not files:  # a presenter and a script: nothing to upload, a JSON body
                body = {k: v for k, v in params.items() if v is not None}
                return self._request("POST", "/v1/jobs", json=body, headers=headers).json()
            return self._request("POST", "/v1/jobs", files=files, data=data, headers=headers).json()

    def voices(self) -> dict[str, Any]:
        """The speech engines, languages and voices a script may be spoken in."""
        return self._request("GET", "/v1/voices").json()

    def create_presenter(
        self, name: str, image: Path | str, *, prompt: str, size: str | None = None
    ) -> dict[str, Any]:
        """A presenter from a portrait file, or from a reference (s3:// URI or upload id)."""
        data = {"name": name, "prompt": prompt, **({"size": size} if size else {})}
        if isinstance(image, str):
            body = {**data, "image": image}
            return self._request("POST", "/v1/presenters", json=body).json()
        with image.open("rb") as f:
            files = {"image": (image.name, f)}
            return self._request("POST", "/v1/presenters", files=files, data=data).json()

    def presenters(self) -> list[dict[str, Any]]:
        """Every presenter of the tenant, by name."""
        found: list[dict[str, Any]] = []
        cursor = None
        while True:
            params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
            page = self._request("GET", "/v1/presenters", params=params).json()
            found += page["presenters"]
            cursor = page["next_cursor"]
            if cursor is None:
                return found

    def presenter(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/presenters/{quote(name, safe='')}").json()

    def delete_presenter(self, name: str) -> None:
        self._request("DELETE", f"/v1/presenters/{quote(name, safe='')}")

    def submit_options(self) -> dict[str, Any]:
        """What a submission may choose on this server (the dashboard's form reads the same):
        the size keys, frame and step ranges, and `default_size`, the size that suits the model
        this deployment runs (small for the tiny CPU model). Needs no API key."""
        return self._request("GET", "/dashboard/options.json").json()

    def get(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{job_id}").json()

    def list(
        self, status: list[str] | None = None, limit: int = 50, cursor: str | None = None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        return self._request("GET", "/v1/jobs", params=params).json()

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return self._request("GET", f"/v1/jobs/{job_id}/events").json()["events"]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/jobs/{job_id}/cancel").json()

    def retry(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/jobs/{job_id}/retry").json()

    def result(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{job_id}/result").json()

    def segments(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{job_id}/segments").json()

    def upload(self, path: Path, kind: str) -> dict[str, Any]:
        """Store an image or audio file once; the same bytes give back the same upload."""
        with path.open("rb") as f:
            files = {"file": (path.name, f)}
            return self._request("POST", "/v1/uploads", files=files, data={"kind": kind}).json()

    def create_batch(
        self, body: dict[str, Any], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._request("POST", "/v1/batches", json=body, headers=headers).json()

    def batch(self, batch_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/batches/{batch_id}").json()

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/batches/{batch_id}/cancel").json()

    def follow(
        self,
        job_id: str,
        *,
        last_event_id: int | None = None,
        timeout: float | None = None,
        reconnect_delay: float = 1.0,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """The job's Server-Sent Events as (event name, data): its history after
        `last_event_id`, then live. Reconnects with Last-Event-ID when the connection drops,
        so no event is lost or repeated. Raises TimeoutError once `timeout` seconds pass."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_event_id is not None:
                headers["Last-Event-ID"] = str(last_event_id)
            remaining = None if deadline is None else max(0.01, deadline - time.monotonic())
            read_timeout = 60.0 if remaining is None else min(60.0, remaining)
            try:
                with self._http.stream(
                    "GET",
                    f"/v1/jobs/{job_id}/events",
                    headers=headers,
                    timeout=httpx.Timeout(10.0, read=read_timeout),
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        self._raise(response)
                    for name, event_id, data in _parse_sse(response.iter_lines()):
                        if event_id is not None:
                            last_event_id = event_id
                        yield name, data
            except (httpx.TransportError, httpx.StreamError):
                pass  # dropped or timed out: reconnect where we were, unless time is up
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"no end of job {job_id} within {timeout} s")
            time.sleep(reconnect_delay)

    def download(self, url: str, dest: Path) -> int:
        """Stream a (presigned) URL to `dest`; returns the bytes written."""
        partial = dest.with_name(dest.name + ".partial")
        size = 0
        try:
            with httpx.stream("GET", url, timeout=None, follow_redirects=True) as response:
                if response.status_code >= 400:
                    raise ApiClientError(
                        f"download failed with HTTP {response.status_code}", response.status_code
                    )
                with partial.open("wb") as f:
                    for chunk in response.iter_bytes(1 << 20):
                        f.write(chunk)
                        size += len(chunk)
            partial.replace(dest)
        except httpx.TransportError as e:
            raise ApiClientError(f"download failed: {e}") from None
        finally:
            partial.unlink(missing_ok=True)
        return size

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the API answers /healthz."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._http.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ApiClientError(
                    f"the API at {self.base_url} did not come up in {timeout:.0f} s"
                )
            time.sleep(0.1)


def _parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, int | None, dict[str, Any]]]:
    """(event, id, data) per Server-Sent Event; comments and `retry:` lines are skipped."""
    name, event_id, data = "message", None, []
    for line in lines:
        if not line:
            if data:
                yield name, event_id, json.loads("\n".join(data))
            name, event_id, data = "message", None, []
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "id" and value.isdigit():
            event_id = int(value)
        elif field == "data":
            data.append(value)
