"""Shared fixtures: real PostgreSQL, SQLite, Redis and an S3 API (moto server on loopback).

Every test session gets its own Postgres database (`longtake_test_<random>`, migrated with
Alembic, dropped at the end), its own Redis key prefix and its own bucket prefix, so several
sessions can share the machine's services at once.

Service addresses default to the local ones; LONGTAKE_TEST_POSTGRES (an admin URL) and
LONGTAKE_TEST_REDIS override them.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from db import migrate
from db.database import Database, make_engine
from ops.demo import free_port

POSTGRES_ADMIN_URL = os.environ.get(
    "LONGTAKE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("LONGTAKE_TEST_REDIS", "redis://127.0.0.1:6379/0")
TABLES = ("job_segments", "job_events", "outbox", "jobs")
# emptied after each test too, first (they refer to the job tables) or last (jobs refer to them)
BEFORE_TABLES = ("webhook_deliveries", "webhooks")
AFTER_TABLES = ("batches", "presenters", "uploads", "api_keys", "tenants")


# --------------------------------------------------------------------------- databases


def _create_postgres_database() -> tuple[str, str]:
    name = f"longtake_test_{secrets.token_hex(6)}"
    admin = make_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = sa.make_url(POSTGRES_ADMIN_URL).set(database=name)
    return name, url.render_as_string(hide_password=False)


def _drop_postgres_database(name: str) -> None:
    admin = make_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def postgres_url_factory() -> Iterator:
    """Creates empty Postgres databases on demand; drops them all at the end of the session."""
    names: list[str] = []

    def create() -> str:
        name, url = _create_postgres_database()
        names.append(name)
        return url

    yield create
    for name in names:
        _drop_postgres_database(name)


@pytest.fixture(scope="session")
def postgres_url(postgres_url_factory) -> str:
    """The session's migrated Postgres database."""
    url = postgres_url_factory()
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="session")
def postgres_database(postgres_url: str) -> Iterator[Database]:
    database = Database(postgres_url)
    yield database
    database.dispose()


def truncate(database: Database) -> None:
    # DELETE, not TRUNCATE: for a handful of rows it is several times faster on Postgres
    with database.transaction() as s:
        for table in (*BEFORE_TABLES, *TABLES, *AFTER_TABLES):
            s.execute(sa.text(f"DELETE FROM {table}"))


@pytest.fixture
def pg_db(postgres_database: Database) -> Iterator[Database]:
    """The session's Postgres database, emptied after the test."""
    yield postgres_database
    truncate(postgres_database)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.sqlite3"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_db(sqlite_template: Path, tmp_path: Path) -> Iterator[Database]:
    """A migrated SQLite database of its own (a copy of a migrated template)."""
    path = tmp_path / "longtake.sqlite3"
    shutil.copy(sqlite_template, path)
    database = Database(f"sqlite:///{path}")
    yield database
    database.dispose()


@pytest.fixture(params=["postgres", "sqlite"])
def db(request) -> Database:
    """Both backends: every test that takes `db` runs on Postgres and on SQLite."""
    return request.getfixturevalue("pg_db" if request.param == "postgres" else "sqlite_db")


@pytest.fixture
def create_job():
    """`create_job(db, **overrides) -> Job`: insert a queued job (and its outbox row) directly."""
    import uuid

    from db import job_store
    from db.models import Job
    from tests.factories import job_params, presenter

    def create(database: Database, **overrides) -> Job:
        job_id = overrides.pop("id", None) or uuid.uuid4()
        tenant = overrides.get("tenant", "default")
        params = overrides.get("params") or job_params(audio_duration_s=19.2)
        precision = overrides.get("precision", "bf16")
        fields = dict(
            id=job_id,
            tenant="default",
            params=params,  # default: exactly its ten clips of 48 frames
            image_key=f"jobs/{job_id}/inputs/image.png",
            audio_key=f"jobs/{job_id}/inputs/audio.wav",
            clips_total=10,
            max_attempts=3,
            presenter_key=presenter(tenant, params=params, precision=precision),
        )
        fields.update(overrides)
        now = fields.pop("now", None)
        with database.transaction() as s:
            return job_store.create_job(s, job_store.NewJob(**fields), now=now)

    return create


# --------------------------------------------------------------------------- object storage

TEST_BUCKET = "longtake-test"
INPUT_BUCKET = "longtake-test-inputs"


@pytest.fixture(scope="session", autouse=True)
def aws_test_credentials() -> Iterator[None]:
    """Dummy credentials, so boto3 never finds real ones while the tests run."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3 API (moto's threaded server) on a free loopback port, with the test buckets."""
    from moto.server import ThreadedMotoServer

    from storage.s3 import S3Config, make_client

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = make_client(S3Config(bucket="", endpoint_url=endpoint, region="us-east-1"))
    for bucket in (TEST_BUCKET, INPUT_BUCKET):
        client.create_bucket(Bucket=bucket)
    yield endpoint
    server.stop()


@pytest.fixture
def s3_config(s3_endpoint: str):
    """Settings for the test bucket, under a prefix of this test's own."""
    from storage.s3 import MiB, S3Config

    return S3Config(
        bucket=TEST_BUCKET,
        prefix=f"t-{secrets.token_hex(4)}/",
        endpoint_url=s3_endpoint,
        region="us-east-1",
        path_style=True,
        multipart_threshold=5 * MiB,  # S3's smallest part size, so tests can go multipart
        multipart_chunksize=5 * MiB,
    )


@pytest.fixture(scope="session")
def s3_client(s3_endpoint: str):
    """One client for the session: creating boto3 clients is slow, using them is thread-safe."""
    from storage.s3 import S3Config, make_client

    return make_client(
        S3Config(bucket=TEST_BUCKET, endpoint_url=s3_endpoint, region="us-east-1", path_style=True)
    )


@pytest.fixture
def s3_storage(s3_config, s3_client):
    from storage.s3 import S3Storage

    return S3Storage(s3_config, client=s3_client)


@pytest.fixture
def url_signer():
    from storage.signing import UrlSigner

    return UrlSigner(secrets.token_bytes(32), "http://testserver")


@pytest.fixture
def local_storage(tmp_path: Path, url_signer):
    from storage.local import LocalStorage

    return LocalStorage(tmp_path / "objects", signer=url_signer)


@pytest.fixture(params=["s3", "local"])
def storage(request):
    """Both backends: every test that takes `storage` runs on S3 (moto) and on a directory."""
    return request.getfixturevalue(f"{request.param}_storage")


# --------------------------------------------------------------------------- API


@pytest.fixture
def api_config():
    """Small limits, so the tests can cross them cheaply."""
    from api.config import ApiConfig, InputLimits, MiB

    return ApiConfig(
        limits=InputLimits(
            max_image_bytes=2 * MiB,
            max_image_pixels=4_000_000,
            max_audio_bytes=4 * MiB,
            max_audio_seconds=60,
        ),
        allowed_input_buckets=(INPUT_BUCKET,),
    )


@pytest.fixture
def api_services(api_config, pg_db, s3_storage, s3_client):
    """The API's components over Postgres and S3 (moto)."""
    from api.services import Services
    from storage.s3 import S3Reader

    return Services(
        config=api_config, database=pg_db, storage=s3_storage, s3_reader=S3Reader(s3_client)
    )


def make_api_key(database: Database, tenant: str = "default", **kwargs) -> str:
    """A new API key of `tenant` (created with its tenant row when needed)."""
    from db import tenants

    with database.transaction() as s:
        return tenants.create_key(s, tenant, **kwargs).token


@pytest.fixture
def api_key(api_services) -> str:
    """An API key of tenant `default`, the tenant of `create_job`'s jobs."""
    return make_api_key(api_services.database, name="tests")


@pytest.fixture
def api_client(api_services, api_key) -> Iterator:
    """The app in-process, authenticated as tenant `default`."""
    from fastapi.testclient import TestClient

    from api import create_app

    headers = {"Authorization": f"Bearer {api_key}"}
    with TestClient(create_app(api_services), headers=headers) as client:
        yield client


def count_rows(database: Database) -> dict[str, int]:
    with database.transaction() as s:
        return {t: s.scalar(sa.text(f"SELECT count(*) FROM {t}")) for t in TABLES}


# --------------------------------------------------------------------------- broker


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A Redis key prefix of this test's own; its keys are deleted afterwards."""
    import redis

    prefix = f"longtake_test_{secrets.token_hex(6)}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def celery_config(redis_prefix):
    from dispatch.celery_app import CeleryConfig

    return CeleryConfig(broker_url=REDIS_URL, key_prefix=redis_prefix, connect_timeout_s=2)


@pytest.fixture
def celery_app(celery_config):
    from dispatch.celery_app import make_celery_app

    app = make_celery_app(celery_config, task_modules=())
    yield app
    app.close()


def queued_messages(broker_url: str, prefix: str, queue: str = "render") -> list[dict]:
    """The task messages waiting in a Redis-backed queue, decoded: [{"task", "args"}, ...]."""
    import base64
    import json

    import redis

    client = redis.Redis.from_url(broker_url)
    try:
        raw = client.lrange(f"{prefix}{queue}", 0, -1)
    finally:
        client.close()
    messages = []
    for item in reversed(raw):  # kombu pushes on the left
        envelope = json.loads(item)
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        messages.append({"task": envelope["headers"]["task"], "args": args})
    return messages


@pytest.fixture
def redis_server_factory() -> Iterator:
    """Starts private redis-server processes (a broker the test can stop and start)."""
    import subprocess
    import time

    import redis

    processes: list[subprocess.Popen] = []

    def start(port: int) -> str:
        process = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        processes.append(process)
        url = f"redis://127.0.0.1:{port}/0"
        for _ in range(100):
            try:
                redis.Redis.from_url(url).ping()
                return url
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {port} did not start")

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


# --------------------------------------------------------------------------- embedded service


@pytest.fixture
def embedded_env(tmp_path: Path, monkeypatch) -> Path:
    """LONGTAKE_* variables for an embedded service under a fresh data directory."""
    data = tmp_path / "var"
    for name in list(os.environ):
        if name.startswith("LONGTAKE_") and not name.startswith("LONGTAKE_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LONGTAKE_DATA_DIR", str(data))
    # no job handler unless a test sets one: jobs stay queued for the test to drive
    monkeypatch.setenv("LONGTAKE_EMBEDDED_HANDLER", "")
    return data


@pytest.fixture
def embedded_service(embedded_env: Path) -> Iterator:
    """A running embedded service (SQLite, local files, in-process runner) on a free port.

    Yields the BackgroundServer; `.process.app.state.services` holds its components, the
    URL is `.url` (`http://127.0.0.1:<port>`) and its local API key `.api_key`. It has no job
    handler (jobs stay queued) unless the test sets LONGTAKE_EMBEDDED_HANDLER first.
    """
    from ops.server import BackgroundServer, build
    from ops.settings import Settings

    port = free_port()
    settings = Settings(api_url=f"http://127.0.0.1:{port}")
    server = BackgroundServer(build(settings, embedded=True), "127.0.0.1", port)
    server.start()
    server.url = settings.api_url
    server.api_key = server.process.api_key_file.read_text().strip()  # the local key
    yield server
    server.stop()
