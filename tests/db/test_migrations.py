"""Alembic migrations: up, down and up again on both backends; the models match the schema."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from db import migrate
from db.database import make_engine
from db.models import Base

HEAD = "0008"
"""The newest migration (the CLI's tests expect it too)."""
EXPECTED_TABLES = {
    "jobs", "job_events", "outbox", "job_segments",
    "tenants", "api_keys", "batches", "uploads", "presenters", "webhooks", "webhook_deliveries",
}  # fmt: skip


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def check_round_trip(url: str) -> None:
    assert migrate.current_revision(url) is None
    migrate.upgrade(url)
    assert migrate.current_revision(url) == HEAD
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


def test_precision_names_fit_up_to_32_characters(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.sqlite3'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        columns = {c["name"]: c for c in sa.inspect(engine).get_columns("jobs")}
    finally:
        engine.dispose()
    assert columns["precision"]["type"].length == 32  # "fp8-attention" needs 13


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
    create_job(db, tenant="a", idempotency_key="k1")
    create_job(db, tenant="b", idempotency_key="k1")  # another tenant may reuse it
    create_job(db, tenant="a", idempotency_key=None)
    create_job(db, tenant="a", idempotency_key=None)  # no key: no constraint
    with pytest.raises(sa.exc.IntegrityError):
        create_job(db, tenant="a", idempotency_key="k1")


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_upgrade_keeps_existing_jobs(backend, postgres_url_factory, tmp_path):
    """0001 -> 0002 rebuilds `jobs` on SQLite (batch mode): rows and their events survive."""
    import uuid

    from db import job_store, leases
    from db.database import Database

    url = postgres_url_factory() if backend == "postgres" else f"sqlite:///{tmp_path / 'm.db'}"
    migrate.upgrade(url, "0001")
    job_id = uuid.uuid4()
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO jobs (id, tenant, status, priority, params, image_key, audio_key, "
                "clips_total, clips_done, frames_done, attempt, max_attempts, cancel_requested, "
                "created_at, updated_at) VALUES (:id, 'acme', 'queued', 3, '{}', 'i', 'a', 4, 0, "
                "0, 0, 3, false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            ),
            {"id": job_id.hex if backend == "sqlite" else str(job_id)},
        )
    engine.dispose()
    migrate.upgrade(url)
    database = Database(url)
    try:
        with database.transaction() as s:
            job = job_store.get_job(s, job_id)
            assert (job.tenant, job.priority, job.batch_id, job.output_meta) == (
                "acme",
                3,
                None,
                None,
            )
            assert leases.claim_next(s, "w", 60).job_id == job_id
    finally:
        database.dispose()
