"""How many unfinished jobs a tenant has, for its queued-job limit, without counting them on
every submission: counting is a scan of the tenant's unfinished jobs (tens of thousands for a
bulk tenant), so a count is reused for `ttl_s` seconds, plus the jobs this process admitted
since. The limit is soft: API processes admitting at once can pass it by what they admit
within `ttl_s`."""

from __future__ import annotations

import threading
import time
from typing import Any

from sqlalchemy.orm import Session

from db import tenants


class QuotaCounter:
    def __init__(self, ttl_s: float = 1.0, clock: Any = time.monotonic):
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[float, int]] = {}

    def unfinished(self, session: Session, tenant: str) -> int:
        with self._lock:
            entry = self._counts.get(tenant)
        if entry is not None and self._clock() - entry[0] < self.ttl_s:
            return entry[1]
        count = tenants.count_unfinished(session, tenant)
        with self._lock:
            self._counts[tenant] = (self._clock(), count)
        return count

    def admitted(self, tenant: str, jobs: int) -> None:
        """`jobs` more were committed by this process."""
        with self._lock:
            entry = self._counts.get(tenant)
            if entry is not None:
                self._counts[tenant] = (entry[0], entry[1] + jobs)

    def forget(self) -> None:
        with self._lock:
            self._counts.clear()
