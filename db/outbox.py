"""Outbox queries for the relay: unsent wake-ups, marked sent once the broker has them."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db.models import OutboxMessage, utcnow


def lock_unsent(
    session: Session, limit: int = 100, *, now: datetime | None = None
) -> list[OutboxMessage]:
    """Oldest unsent messages that are due, locked for this transaction. Rows another relay has
    locked are skipped (Postgres `SKIP LOCKED`); on SQLite the whole transaction is serialised
    instead."""
    due = now or utcnow()
    stmt = (
        sa.select(OutboxMessage)
        .where(
            OutboxMessage.sent_at.is_(None),
            sa.or_(OutboxMessage.available_at.is_(None), OutboxMessage.available_at <= due),
        )
        .order_by(OutboxMessage.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(stmt))


def mark_sent(message: OutboxMessage, *, now: datetime | None = None) -> None:
    message.sent_at = now or utcnow()
    message.publish_attempts += 1
    message.last_error = None


def note_failure(message: OutboxMessage, error: str) -> None:
    message.publish_attempts += 1
    message.last_error = error[:2000]


def count_unsent(session: Session) -> int:
    stmt = (
        sa.select(sa.func.count()).select_from(OutboxMessage).where(OutboxMessage.sent_at.is_(None))
    )
    return session.scalar(stmt) or 0
