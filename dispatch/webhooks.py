"""The webhook delivery loop: POSTs due deliveries, records each attempt, retries failures
with capped exponential backoff. It runs beside the outbox relay (`longtake relay`, or the
API process's relay thread) and in the embedded server; any number may run at once.

At least once: an attempt whose outcome is not recorded (the process died, the receiver was
slow) is made again. Receivers deduplicate on `X-Longtake-Event-Id` (also the body's `id`).

Every attempt resolves the URL's host itself, checks every address (public only, unless the
operator allowed the host: `DeliveryConfig.allowed_hosts`) and connects to the address it
checked, sending the host name in `Host` and, over TLS, as the server name the certificate
is verified against. A name that resolves to a private address by the time of the attempt
(DNS rebinding) is not contacted. Redirects are not followed.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from db import webhooks
from db.database import Database
from dispatch.signatures import HEADER, sign

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryConfig:
    timeout_s: float = 10.0
    """Per request; a receiver should answer at once and do its work afterwards."""
    max_attempts: int = 12
    backoff_base_s: float = 5.0
    """The first retry comes after about this long, each next one after twice as long..."""
    backoff_cap_s: float = 3600.0
    """...but never more than this (12 attempts span about 5 hours by default)."""
    batch_size: int = 50
    concurrency: int = 8
    poll_s: float = 1.0
    allowed_hosts: tuple[str, ...] = ()
    """Host names and networks deliveries may reach although they are not public."""


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None


def body_of(due: webhooks.DueDelivery) -> bytes:
    return json.dumps(due.payload, separators=(",", ":"), sort_keys=True).encode()


class WebhookDeliverer:
    def __init__(
        self,
        database: Database,
        config: DeliveryConfig | None = None,
        *,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
        resolver: webhooks.Resolver | None = None,
    ):
        self.database = database
        self.config = config or DeliveryConfig()
        self.targets = webhooks.TargetPolicy.from_hosts(self.config.allowed_hosts, resolver)
        self.client = client or httpx.Client(
            timeout=self.config.timeout_s,
            follow_redirects=False,
            headers={"User-Agent": "longtake-webhooks/1"},
        )
        self._clock = clock
        self._pool = ThreadPoolExecutor(self.config.concurrency, thread_name_prefix="webhook")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()

    def retry_in(self, attempt: int) -> float | None:
        """Seconds until the next attempt after failed attempt number `attempt`; None: stop."""
        if attempt >= self.config.max_attempts:
            return None
        delay = min(self.config.backoff_cap_s, self.config.backoff_base_s * 2 ** (attempt - 1))
        return delay * random.uniform(0.8, 1.2)  # spread retries of one outage apart

    def post(self, due: webhooks.DueDelivery) -> Outcome:
        try:
            target = self.targets.resolve(due.url)
        except webhooks.WebhookTargetError as e:
            return Outcome(None, f"not sent: {e}")
        url = httpx.URL(due.url)
        body = body_of(due)
        headers = {
            "Host": url.netloc.decode("ascii"),
            # no connection is reused: one made for another host's name (same address,
            # another certificate) must never carry this request
            "Connection": "close",
            "Content-Type": "application/json",
            HEADER: sign(due.secret, body, int(self._clock())),
            "X-Longtake-Event": due.event_type,
            "X-Longtake-Event-Id": str(due.event_id),
            "X-Longtake-Delivery": str(due.id),
            "X-Longtake-Attempt": str(due.attempt),
        }
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            response = self.client.post(
                url.copy_with(host=target.address),  # the address checked, not a new lookup
                content=body,
                headers=headers,
                extensions=extensions,
                follow_redirects=False,
            )
        except httpx.HTTPError as e:
            return Outcome(None, f"{type(e).__name__}: {e}"[:2000])
        if 200 <= response.status_code < 300:
            return Outcome(response.status_code, None)
        if response.is_redirect:
            return Outcome(
                response.status_code,
                f"HTTP {response.status_code} to {response.headers.get('location', '?')[:500]}: "
                "redirects are not followed; register the URL that answers",
            )
        return Outcome(response.status_code, f"HTTP {response.status_code}: {response.text[:500]}")

    def run_once(self) -> int:
        """Attempt every delivery due now (up to a batch); returns how many were attempted."""
        lease_s = 2 * self.config.timeout_s + 5
        with self.database.transaction() as s:
            due = webhooks.take_due(s, lease_s=lease_s, limit=self.config.batch_size)
        outcomes = list(self._pool.map(self.post, due))
        for delivery, outcome in zip(due, outcomes, strict=True):
            retry_in = None if outcome.error is None else self.retry_in(delivery.attempt)
            with self.database.transaction() as s:
                webhooks.record_attempt(
                    s,
                    delivery.id,
                    attempt=delivery.attempt,
                    status_code=outcome.status_code,
                    error=outcome.error,
                    retry_in_s=retry_in,
                )
            if outcome.error is not None:
                log.warning(
                    "webhook delivery %s failed (attempt %s): %s; %s",
                    delivery.id,
                    delivery.attempt,
                    outcome.error,
                    "giving up" if retry_in is None else f"retrying in {retry_in:.0f} s",
                    extra={
                        "delivery_id": delivery.id,
                        "webhook_id": delivery.webhook_id,
                        "event_id": delivery.event_id,
                        "job_id": delivery.payload.get("job", {}).get("id"),
                    },
                )
        return len(due)

    def run(self, stop: threading.Event, *, max_backoff_s: float = 30.0) -> None:
        """Deliver until `stop` is set: at once while work is due, else until the next
        delivery is due or the poll interval passes."""
        backoff = self.config.poll_s
        while not stop.is_set():
            try:
                attempted = self.run_once()
                with self.database.transaction() as s:
                    next_in = webhooks.next_due_in(s)
                backoff = self.config.poll_s
            except Exception:  # the database is down, say: log it and keep trying
                log.exception("webhook delivery pass failed")
                attempted, next_in = 0, None
                backoff = min(backoff * 2, max_backoff_s)
            if attempted == self.config.batch_size:
                continue
            wait = backoff if next_in is None else min(backoff, next_in)
            stop.wait(wait)
