"""Per-key rate limits: token buckets, in Redis when several API processes share the limit,
in memory for a single process (embedded mode).

A bucket holds up to `burst` tokens and refills at `rate` per second; a request takes one.
`acquire` answers 0 when the request may go ahead, else the seconds until a token is there
(the Retry-After of the 429).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

log = logging.getLogger(__name__)


class RateLimiter(Protocol):
    async def acquire(self, key: str, rate: float, burst: float) -> float: ...


class MemoryRateLimiter:
    """Buckets in this process. Used from the event loop only, so no lock is needed."""

    MAX_KEYS = 100_000

    def __init__(self, clock: Any = time.monotonic):
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    async def acquire(self, key: str, rate: float, burst: float) -> float:
        now = self._clock()
        tokens, at = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / rate
        if len(self._buckets) >= self.MAX_KEYS and key not in self._buckets:
            self._buckets.clear()  # a flood of distinct keys; full buckets are the default anyway
        self._buckets[key] = (tokens, now)
        return wait


# One round trip: refill by elapsed time (Redis' clock, the same for every API process),
# take a token or say how long until there is one. Returned as a string: Redis truncates
# Lua numbers to integers.
_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisRateLimiter:
    """Buckets in Redis, shared by every API process. If Redis cannot be reached the request
    goes ahead (a rate limit protects the service; it must not take it down)."""

    def __init__(self, url: str, *, prefix: str = "", timeout_s: float = 0.5):
        self.url = url
        self.prefix = f"{prefix}ratelimit:"
        self.timeout_s = timeout_s
        self._clients: dict[int, Any] = {}  # per event loop: asyncio connections are bound to one
        self._last_warning = 0.0

    def _client(self) -> tuple[Any, Any]:
        import redis.asyncio as redis

        loop = asyncio.get_running_loop()
        entry = self._clients.get(id(loop))
        if entry is None or entry[0] is not loop:
            client = redis.Redis.from_url(
                self.url, socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s
            )
            entry = (loop, client, client.register_script(_TOKEN_BUCKET))
            self._clients[id(loop)] = entry
        return entry[1], entry[2]

    async def acquire(self, key: str, rate: float, burst: float) -> float:
        _client, script = self._client()
        try:
            wait = await script(keys=[self.prefix + key], args=[rate, burst])
        except Exception as e:
            now = time.monotonic()
            if now - self._last_warning > 60:
                self._last_warning = now
                log.warning("rate limiter cannot reach Redis (%s); requests are not limited", e)
            return 0.0
        return float(wait)

    async def aclose(self) -> None:
        for _loop, client, _script in list(self._clients.values()):
            await client.aclose()
        self._clients.clear()
