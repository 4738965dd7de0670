"""Engines and transactions for PostgreSQL (production) and SQLite (embedded mode)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def normalise_url(url: str) -> sa.URL:
    """`postgresql://` means psycopg 3 here; everything else is taken as given."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


# A database that vanishes without closing its connections (a host gone, a network partition,
# a proxy restarting) must not hang a worker forever in a read: connecting gives up after
# 10 s, and a connection whose peer stops acknowledging (data or keepalive probes) errors after
# about 30 s. The caller's retries then reconnect. (libpq parameters, passed by psycopg.)
POSTGRES_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 15,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


def make_engine(url: str, *, idle_transaction_timeout_s: float = 0.0, **kwargs: Any) -> sa.Engine:
    """`idle_transaction_timeout_s` (Postgres; 0: none): the server ends a session idle inside
    a transaction that long, releasing its locks (a frozen process's among them)."""
    parsed = normalise_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        connect_args = {**POSTGRES_CONNECT_ARGS, **kwargs.pop("connect_args", {})}
        if idle_transaction_timeout_s > 0:
            ms = max(1, round(idle_transaction_timeout_s * 1000))
            connect_args["options"] = f"-c idle_in_transaction_session_timeout={ms}"
        return sa.create_engine(parsed, connect_args=connect_args, **kwargs)

    # SQLite: one writer at a time. Every transaction starts with BEGIN IMMEDIATE, so a claim
    # (read the job, then take it) cannot interleave with another: the serialised equivalent
    # of Postgres' FOR UPDATE. pysqlite's own transaction handling is switched off for that.
    connect_args = kwargs.pop("connect_args", {})
    connect_args.setdefault("check_same_thread", False)
    connect_args.setdefault("timeout", 30)
    engine = sa.create_engine(parsed, connect_args=connect_args, **kwargs)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if parsed.database and parsed.database != ":memory:":
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Database:
    """An engine plus the session factory the repository functions run in.

    `with db.transaction() as session:` commits on success and rolls back on error. Objects
    stay readable after the commit (expire_on_commit=False), so repository results can be
    returned to callers outside the transaction.
    """

    def __init__(self, url: str, *, idle_transaction_timeout_s: float = 0.0, **engine_kwargs: Any):
        self.url = url
        self.engine = make_engine(
            url, idle_transaction_timeout_s=idle_transaction_timeout_s, **engine_kwargs
        )
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self.sessions.begin() as session:
            yield session

    def ping(self) -> None:
        """Raise if the database cannot be reached."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
