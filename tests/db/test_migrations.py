"""Alembic migrations: up, down and up again on both backends; the models match the schema."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from db import migrate
from db.database import make_engine
from db.models import Base

EXPECTED_TABLES = {"jobs", "job_events", "outbox", "job_segments"}


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def check_round_trip(url: str) -> None:
    assert migrate.current_revision(url) is None
    migrate.upgrade(url)
    assert migrate.current_revision(url) == "0001"
    assert tables(url) == EXPECTED_TABLES
    migrate.downgrade(url, "base")
    assert migrate.current_revision(url) is None
    assert tables(url) == set()
    migrate.upgrade(url)
    assert tables(url) == EXPECTED_TABLES


def test_postgres_up_down_up(postgres_url_factory):
    check_round_trip(postgres_url_factory())


def test_sqlite_up_down_up(tmp_path):
    check_round_trip(f"sqlite:///{tmp_path / 'm.sqlite3'}")


def test_models_match_migrations(postgres_url):
    """A model change without a migration fails here."""
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_idempotency_key_is_unique_per_tenant(db, create_job):
    import pytest

    create_job(db, tenant="a", idempotency_key="k1")
    create_job(db, tenant="b", idempotency_key="k1")  # another tenant may reuse it
    create_job(db, tenant="a", idempotency_key=None)
    create_job(db, tenant="a", idempotency_key=None)  # no key: no constraint
    with pytest.raises(sa.exc.IntegrityError):
        create_job(db, tenant="a", idempotency_key="k1")
