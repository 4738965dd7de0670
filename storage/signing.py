"""Signed, expiring download URLs for the local backend (the API verifies and serves them)."""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote, urlencode


class UrlSigner:
    """HMAC-SHA256 over (key, expiry). `base_url` is where the API is reachable, e.g.
    http://127.0.0.1:8000; links point at its `/v1/files/<key>` route."""

    ROUTE = "/v1/files/"

    def __init__(self, secret: bytes, base_url: str):
        if len(secret) < 16:
            raise ValueError("signing secret must be at least 16 bytes")
        self._secret = secret
        self.base_url = base_url.rstrip("/")

    def signature(self, key: str, expires: int) -> str:
        message = f"{key}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def url(self, key: str, expires_s: int, *, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + expires_s)
        query = urlencode({"expires": expires, "signature": self.signature(key, expires)})
        return f"{self.base_url}{self.ROUTE}{quote(key)}?{query}"

    def verify(self, key: str, expires: int, signature: str, *, now: float | None = None) -> bool:
        if expires < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(self.signature(key, expires), signature)
