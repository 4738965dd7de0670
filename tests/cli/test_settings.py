"""Settings: LONGTAKE_* variables become the typed configs the packages take."""

from __future__ import annotations

import subprocess
import sys

from api.config import MiB
from ops.settings import Settings
from storage import LocalStorage, S3Storage


def test_environment_reaches_the_typed_configs(monkeypatch, tmp_path):
    monkeypatch.setenv("LONGTAKE_ALLOWED_INPUT_BUCKETS", "uploads, archive ,")
    monkeypatch.setenv("LONGTAKE_MAX_IMAGE_MB", "5")
    monkeypatch.setenv("LONGTAKE_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("LONGTAKE_STORAGE_PATH_STYLE", "true")
    monkeypatch.setenv("LONGTAKE_STORAGE_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("LONGTAKE_BROKER_KEY_PREFIX", "prod:")
    monkeypatch.setenv("LONGTAKE_MODEL_PRESET", "liveavatar-14b")
    s = Settings()
    assert s.allowed_input_buckets == ["uploads", "archive"]
    api = s.api_config()
    assert api.allowed_input_buckets == ("uploads", "archive")
    assert api.limits.max_image_bytes == 5 * MiB and api.max_attempts == 7
    assert api.model_preset == "liveavatar-14b"  # the API suggests sizes for the workers' model
    s3 = s.s3_config()
    assert (s3.endpoint_url, s3.path_style) == ("http://minio:9000", True)
    assert s.celery_config().key_prefix == "prod:"
    assert isinstance(s.make_storage(), S3Storage)


def test_embedded_variant(monkeypatch, tmp_path):
    monkeypatch.setenv("LONGTAKE_DATA_DIR", str(tmp_path / "data"))
    s = Settings().embedded()
    assert s.database_url == f"sqlite:///{tmp_path / 'data' / 'longtake.sqlite3'}"
    storage = s.make_storage()
    assert isinstance(storage, LocalStorage) and storage.root == tmp_path / "data" / "storage"
    assert storage.presign_get("jobs/a/output.mp4", 60).startswith(s.api_url + "/v1/files/")


def test_the_api_does_not_load_the_model_code():
    """Request validation uses pipeline.params only; torch stays out of the API process."""
    code = "import sys, api, ops.cli, ops.server; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_relay_of_an_embedded_service_sweeps_old_resume_points(embedded_env, monkeypatch):
    from ops.server import build

    monkeypatch.setenv("LONGTAKE_RESUME_RETENTION_DAYS", "2.5")
    monkeypatch.setenv("LONGTAKE_SWEEP_INTERVAL_S", "600")
    process = build(Settings(), embedded=True)
    sweeper = process.runner.relay.sweeper
    assert sweeper.retention_s == 2.5 * 86400 and sweeper.interval_s == 600
    assert isinstance(sweeper.storage, LocalStorage)
    process.database.dispose()

    monkeypatch.setenv("LONGTAKE_RESUME_RETENTION_DAYS", "0")  # kept until retried
    process = build(Settings(), embedded=True)
    assert process.runner.relay.sweeper is None
    process.database.dispose()
