"""Webhooks: which job events they receive, the fan-out of an event into deliveries, and the
durable delivery queue the delivery loop works.

A delivery row is written in the same transaction as the event it carries, so an event that
happened is never missed, whatever crashes afterwards. The delivery loop takes due rows under a
short lease (`next_attempt_at` moved past the request's timeout), posts them, and records the
outcome; a loop that dies mid-request leaves the row to be taken again when the lease runs out.
That is at-least-once delivery: receivers deduplicate on the event id.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import socket
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db.models import Job, JobEvent, Webhook, WebhookDelivery, utcnow

WEBHOOK_EVENTS = ("started", "checkpoint", "succeeded", "failed", "canceled")
"""What a webhook can subscribe to. `started` is every claim (a resumed job starts again,
with its attempt number in the payload)."""


def new_webhook_id() -> str:
    return f"wh_{secrets.token_hex(12)}"


def new_secret() -> str:
    return f"whsec_{secrets.token_urlsafe(32)}"


def webhook_type(event: JobEvent) -> str | None:
    """The webhook event a job event is, or None for events webhooks do not carry."""
    if event.event == "claimed":
        return "started"
    if event.event == "checkpoint":
        return "checkpoint"
    if event.to_status in ("succeeded", "failed", "canceled"):
        return event.to_status
    return None


def job_snapshot(job: Job) -> dict[str, Any]:
    """The job as a webhook payload shows it (GET /v1/jobs/{id} has the rest)."""
    return {
        "id": str(job.id),
        "batch_id": str(job.batch_id) if job.batch_id else None,
        "status": job.status,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "clips_done": job.clips_done,
        "clips_total": job.clips_total,
        "frames_done": job.frames_done,
        "last_checkpoint_clip": job.last_checkpoint_clip,
        "error": job.error,
        "output_key": job.output_key,
    }


def fan_out(session: Session, job: Job, event: JobEvent) -> int:
    """Queue one delivery of `event` per active webhook that wants it; returns how many."""
    kind = webhook_type(event)
    if kind is None:
        return 0
    hooks = session.scalars(
        sa.select(Webhook).where(
            Webhook.tenant == job.tenant,
            Webhook.disabled_at.is_(None),
            sa.or_(Webhook.job_id.is_(None), Webhook.job_id == job.id),
        )
    ).all()  # (autoflush inserts the event first, so it has its id below)
    wanted = [hook for hook in hooks if kind in hook.events]
    if not wanted:
        return 0
    if event.id is None:
        session.flush([event])
    payload = {
        "id": event.id,
        "type": kind,
        "created_at": event.at.isoformat(),
        "reason": event.reason,
        "data": event.data,
        "job": job_snapshot(job),
    }
    for hook in wanted:
        session.add(
            WebhookDelivery(
                webhook_id=hook.id,
                event_id=event.id,
                job_id=job.id,
                event_type=kind,
                payload=payload,
                status="pending",
                attempts=0,
                failures=0,
                next_attempt_at=event.at,
                created_at=event.at,
            )
        )
    return len(wanted)


# --------------------------------------------------------------------------- registration


def create_webhook(
    session: Session,
    *,
    tenant: str,
    url: str,
    events: Iterable[str],
    secret: str,
    job_id: uuid.UUID | None = None,
    now: datetime | None = None,
) -> Webhook:
    events = list(dict.fromkeys(events))
    unknown = sorted(set(events) - set(WEBHOOK_EVENTS))
    if unknown or not events:
        raise ValueError(
            f"unknown webhook events {unknown}; choose from {', '.join(WEBHOOK_EVENTS)}"
            if unknown
            else "a webhook needs at least one event"
        )
    hook = Webhook(
        id=new_webhook_id(),
        tenant=tenant,
        job_id=job_id,
        url=url,
        events=events,
        secret=secret,
        created_at=now or utcnow(),
    )
    session.add(hook)
    return hook


def get_webhook(session: Session, webhook_id: str, *, tenant: str) -> Webhook | None:
    """The tenant's webhook, unless it was deleted (disabled): then, as for any other id, None."""
    return session.scalars(
        sa.select(Webhook).where(
            Webhook.id == webhook_id, Webhook.tenant == tenant, Webhook.disabled_at.is_(None)
        )
    ).one_or_none()


def list_webhooks(
    session: Session, *, tenant: str, job_id: uuid.UUID | None = None, include_job: bool = False
) -> list[Webhook]:
    """The tenant's active webhooks: tenant-wide ones, plus one job's (or every job's)."""
    stmt = sa.select(Webhook).where(Webhook.tenant == tenant, Webhook.disabled_at.is_(None))
    if job_id is not None:
        stmt = stmt.where(Webhook.job_id == job_id)
    elif not include_job:
        stmt = stmt.where(Webhook.job_id.is_(None))
    return list(session.scalars(stmt.order_by(Webhook.created_at, Webhook.id)))


def disable_webhook(session: Session, hook: Webhook, *, now: datetime | None = None) -> None:
    """No new deliveries; pending ones are dropped by the delivery loop."""
    if hook.disabled_at is None:
        hook.disabled_at = now or utcnow()


def list_deliveries(
    session: Session,
    *,
    webhook_id: str | None = None,
    job_id: uuid.UUID | None = None,
    after_id: int | None = None,
    limit: int = 100,
) -> list[WebhookDelivery]:
    """The delivery log, oldest first, one page at a time (`after_id`: the last one seen)."""
    stmt = sa.select(WebhookDelivery)
    if webhook_id is not None:
        stmt = stmt.where(WebhookDelivery.webhook_id == webhook_id)
    if job_id is not None:
        stmt = stmt.where(WebhookDelivery.job_id == job_id)
    if after_id is not None:
        stmt = stmt.where(WebhookDelivery.id > after_id)
    return list(session.scalars(stmt.order_by(WebhookDelivery.id).limit(limit)))


# --------------------------------------------------------------------------- delivery queue


@dataclass(frozen=True)
class DueDelivery:
    """What the delivery loop needs to make one attempt."""

    id: int
    webhook_id: str
    url: str
    secret: str
    event_id: int
    event_type: str
    payload: dict[str, Any]
    attempt: int
    """1 for the first attempt."""


def take_due(
    session: Session, *, lease_s: float, limit: int = 50, now: datetime | None = None
) -> list[DueDelivery]:
    """Due deliveries, leased to the caller for `lease_s` (longer than its request timeout).

    Deliveries of webhooks disabled since are marked failed instead. Rows another loop has
    locked are skipped (`SKIP LOCKED`; the transaction is serialised on SQLite).
    """
    now = now or utcnow()
    rows = session.execute(
        sa.select(WebhookDelivery, Webhook)
        .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
        .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=WebhookDelivery)
    ).all()
    due = []
    for delivery, hook in rows:
        if hook.disabled_at is not None:
            delivery.status = "failed"
            delivery.last_error = "the webhook was disabled"
            continue
        delivery.attempts += 1
        delivery.last_attempt_at = now
        delivery.next_attempt_at = now + timedelta(seconds=lease_s)
        due.append(
            DueDelivery(
                id=delivery.id,
                webhook_id=hook.id,
                url=hook.url,
                secret=hook.secret,
                event_id=delivery.event_id,
                event_type=delivery.event_type,
                payload=delivery.payload,
                attempt=delivery.attempts,
            )
        )
    return due


def record_attempt(
    session: Session,
    delivery_id: int,
    *,
    attempt: int,
    status_code: int | None,
    error: str | None,
    retry_in_s: float | None,
    now: datetime | None = None,
) -> None:
    """The outcome of one attempt. Success when `error` is None; otherwise the delivery is
    tried again in `retry_in_s` seconds, or given up when that is None.

    An outcome for an attempt that is no longer the current one (the lease ran out and another
    loop took the delivery) is ignored.
    """
    now = now or utcnow()
    delivery = session.get(WebhookDelivery, delivery_id, with_for_update=True)
    if delivery is None or delivery.attempts != attempt or delivery.status != "pending":
        return
    delivery.last_status_code = status_code
    delivery.last_attempt_at = now
    if error is None:
        delivery.status = "delivered"
        delivery.delivered_at = now
        delivery.last_error = None
    else:
        delivery.failures += 1
        delivery.last_error = error[:2000]
        if retry_in_s is None:
            delivery.status = "failed"
        else:
            delivery.next_attempt_at = now + timedelta(seconds=retry_in_s)


def next_due_in(session: Session, *, now: datetime | None = None) -> float | None:
    """Seconds until the next pending delivery is due (0 if one is due now); None if none."""
    now = now or utcnow()
    first = session.scalar(
        sa.select(sa.func.min(WebhookDelivery.next_attempt_at)).where(
            WebhookDelivery.status == "pending"
        )
    )
    if first is None:
        return None
    return max(0.0, (first - now).total_seconds())


# --------------------------------------------------------------------------- where deliveries go

Resolver = Callable[[str, int], list[str]]
"""(host, port) -> the addresses a connection to it would use (raises OSError if none)."""

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_HOST_NAME = re.compile(r"^(?=.{1,253}\.?$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*"
                        r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.?$", re.IGNORECASE)  # fmt: skip
ALLOW_SETTING = "LONGTAKE_WEBHOOK_ALLOWED_HOSTS"


class WebhookTargetError(ValueError):
    """A webhook URL that may not be delivered to; the message says why and what to do."""


def is_public(address: Address) -> bool:
    """Whether `address` is on the public internet: not loopback, private, link-local,
    unique-local, carrier-grade NAT, multicast, reserved or unspecified, and not an IPv6
    form of such an IPv4 address (mapped, 6to4, Teredo, NAT64)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded: list[ipaddress.IPv4Address] = []
        if address.ipv4_mapped is not None:
            embedded.append(address.ipv4_mapped)
        if address.sixtofour is not None:
            embedded.append(address.sixtofour)
        if address.teredo is not None:
            embedded.extend(address.teredo)
        if address in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if any(not is_public(v4) for v4 in embedded):
            return False
    return address.is_global and not (address.is_multicast or address.is_reserved)


def system_resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class Target:
    """A webhook URL and the checked address its delivery connects to."""

    url: str
    scheme: str
    host: str
    port: int
    address: str


@dataclass(frozen=True)
class TargetPolicy:
    """Where webhooks may be delivered: hosts whose every address is public, plus what the
    operator allows (host names, which may then resolve to anything, and networks).

    The API checks a URL when it is registered; the delivery loop checks it again at every
    attempt and connects to the address it checked, so a name that resolves elsewhere by
    then (DNS rebinding) reaches nothing it may not.
    """

    allowed_names: frozenset[str] = frozenset()
    allowed_networks: tuple[Network, ...] = ()
    resolver: Resolver = field(default=system_resolve, compare=False)

    system_resolve = staticmethod(system_resolve)

    @classmethod
    def from_hosts(cls, entries: Iterable[str], resolver: Resolver | None = None) -> TargetPolicy:
        """From the operator's list: host names, addresses and networks (CIDR)."""
        names: set[str] = set()
        networks: list[Network] = []
        for entry in (e.strip() for e in entries):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if not _HOST_NAME.match(entry):
                raise ValueError(
                    f"{ALLOW_SETTING}: {entry!r} is not a host name or a network (CIDR)"
                )
            names.add(entry.lower().rstrip("."))
        return cls(frozenset(names), tuple(networks), resolver or system_resolve)

    def resolve(self, url: str) -> Target:
        """The URL's host resolved and checked; WebhookTargetError saying why it may not be."""
        parsed = urlsplit(url)
        host = (parsed.hostname or "").rstrip(".")
        if parsed.scheme not in ("http", "https") or not host:
            raise WebhookTargetError("a webhook URL must be an absolute http:// or https:// URL")
        try:
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
        except ValueError:
            raise WebhookTargetError("the webhook URL's port is not a number") from None
        allow = f"the operator allows the host ({ALLOW_SETTING})"
        try:
            addresses = self.resolver(host, port)
        except (OSError, UnicodeError) as e:
            raise WebhookTargetError(
                f"{host} could not be resolved ({e}); use a host with public addresses, "
                f"unless {allow}"
            ) from None
        if not addresses:
            raise WebhookTargetError(f"{host} could not be resolved to any address")
        if host.lower() not in self.allowed_names:
            for text in addresses:
                address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone
                if is_public(address) or any(address in n for n in self.allowed_networks):
                    continue
                via = "" if str(address) == host.strip("[]") else f" ({host} resolves to it)"
                raise WebhookTargetError(
                    f"{address} is not a public address{via}; webhooks reach public addresses "
                    f"only, unless {allow}"
                )
        return Target(url, parsed.scheme, host, port, addresses[0])
