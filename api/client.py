"""A small synchronous client of the /v1 API (used by the CLI and the demo)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx


class ApiClientError(Exception):
    """The API answered with an error (`code`, `message`) or could not be reached."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class LongtakeClient:
    def __init__(self, base_url: str, *, timeout: float = 60.0, transport: Any = None):
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

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
            try:
                error = response.json()["error"]
                code, message = error["code"], error["message"]
            except (ValueError, KeyError, TypeError):
                code, message = None, response.text[:500] or response.reason_phrase
            raise ApiClientError(message, response.status_code, code)
        return response

    def submit(
        self,
        image: Path,
        audio: Path,
        *,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """Upload the two files with the render parameters (None values are left out)."""
        data = {k: str(v) for k, v in params.items() if v is not None}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        with image.open("rb") as image_file, audio.open("rb") as audio_file:
            files = {"image": (image.name, image_file), "audio": (audio.name, audio_file)}
            return self._request("POST", "/v1/jobs", files=files, data=data, headers=headers).json()

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
