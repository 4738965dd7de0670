"""docker/compose*.yaml: valid Compose files whose services find each other, start in order,
report their health, and are configured only through settings that exist.

Without a Docker engine: the files are checked against the Compose Specification's JSON schema
and rendered here (interpolation, override merge, profiles); `docker compose config` runs too
when the Compose CLI is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import sqlalchemy as sa
import yaml

from ops.settings import Settings
from storage.s3 import S3Storage
from tests.deploy.files import (
    DOCKER,
    ROOT,
    InterpolationError,
    Project,
    compose,
    compose_schema,
    parse_dockerfile,
    seconds,
    variables,
)

MAIN = ("compose.yaml",)
CPU = ("compose.yaml", "compose.cpu.yaml")
NODE = ("compose.node.yaml",)
NODE_ENV = {
    "LONGTAKE_DATABASE_URL": "postgresql+psycopg://longtake:pw@db.internal:5432/longtake",
    "LONGTAKE_BROKER_URL": "redis://redis.internal:6379/0",
    "LONGTAKE_STORAGE_BUCKET": "longtake-prod",
}
COMPOSE_FILES = sorted(DOCKER.glob("compose*.yaml"))
SETTINGS = {f"LONGTAKE_{name.upper()}" for name in Settings.model_fields}
DEFAULTS = {name: field.default for name, field in Settings.model_fields.items()}


def ours(service: dict[str, Any]) -> bool:
    """Built from this repository's Dockerfiles (as opposed to postgres, minio, ...)."""
    build = service.get("build")
    if isinstance(build, dict) and build.get("dockerfile", "").startswith("docker/"):
        return True
    return str(service.get("image", "")).startswith("longtake-")


def settings_for(monkeypatch, env: dict[str, str]) -> Settings:
    """The Settings a process started with exactly `env` would build."""
    import os

    for name in list(os.environ):
        if name.startswith(("LONGTAKE_", "AWS_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


# --------------------------------------------------------------------------- validity


@pytest.mark.parametrize("files", [MAIN, CPU, NODE], ids=["main", "cpu", "node"])
def test_files_follow_the_compose_specification(files):
    env = NODE_ENV if files == NODE else {}
    project = compose(*files, env=env)
    validator = jsonschema.Draft7Validator(compose_schema())
    for doc in (project.raw, project.config):  # as written, and with variables substituted
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.mark.skipif(compose_cli() is None, reason="no Compose CLI (docker compose) installed")
@pytest.mark.parametrize("files", [MAIN, CPU, NODE], ids=["main", "cpu", "node"])
def test_docker_compose_config_accepts_the_files(files, tmp_path):
    cli = compose_cli()
    assert cli is not None
    env = {"PATH": "/usr/bin:/bin", **(NODE_ENV if files == NODE else {})}
    directory = DOCKER
    if cli[-1].endswith("docker-compose"):
        # Compose v1 predates the top-level `name`; check the rest of the file with it removed.
        directory = tmp_path / "docker"
        shutil.copytree(DOCKER, directory)
        for name in files:
            path = directory / name
            path.write_text(
                "".join(x for x in path.read_text().splitlines(True) if not x.startswith("name:"))
            )
        (tmp_path / "checkpoints").mkdir()
        (tmp_path / "ops" / "monitoring").mkdir(parents=True)
        shutil.copy(ROOT / "ops/monitoring/prometheus.yml", tmp_path / "ops/monitoring")
    args = [*cli, "--project-name", "longtake"]
    for name in files:
        args += ["-f", str(directory / name)]
    result = subprocess.run(
        [*args, "config"], capture_output=True, text=True, env=env, cwd=directory
    )
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    ours_ = compose(*files, env=NODE_ENV if files == NODE else {})
    assert set(rendered["services"]) <= set(ours_.config["services"])
    assert set(ours_.services()) <= set(rendered["services"])


# --------------------------------------------------------------------------- settings


def test_every_longtake_variable_is_a_setting():
    """A misspelt LONGTAKE_* variable would be silently ignored by the settings."""
    used: dict[str, set[str]] = {}
    for path in COMPOSE_FILES:
        project = compose(path.name, env=NODE_ENV)
        for name, service in project.config["services"].items():
            for var in set(project.environment(name)) | {
                v.partition("=")[0] for v in service.get("environment") or [] if isinstance(v, str)
            }:
                if var.startswith("LONGTAKE_"):
                    used.setdefault(var, set()).add(f"{path.name}:{name}")
        for var in variables(project.raw):
            if var.startswith("LONGTAKE_"):
                used.setdefault(var, set()).add(f"{path.name} (interpolation)")
    for path in DOCKER.glob("*.Dockerfile"):
        for stage in parse_dockerfile(path).stages:
            for env in stage.all("ENV"):
                for word in env.args.split():
                    if word.startswith("LONGTAKE_"):
                        used.setdefault(word.partition("=")[0], set()).add(path.name)
    assert used, "no LONGTAKE_* variable found at all"
    unknown = {var: sorted(where) for var, where in used.items() if var not in SETTINGS}
    assert not unknown, f"not settings in ops/settings.py: {unknown}"


def test_our_services_take_only_longtake_and_aws_variables():
    for files in (MAIN, CPU, NODE):
        project = compose(*files, env={**NODE_ENV, "AWS_ACCESS_KEY_ID": "k"})
        for name, service in project.config["services"].items():
            if ours(service):
                stray = [
                    v for v in project.environment(name) if not v.startswith(("LONGTAKE_", "AWS_"))
                ]
                assert not stray, f"{name}: {stray}"


@pytest.mark.parametrize(
    "env",
    [
        {},
        {
            "POSTGRES_PASSWORD": "s3cret",
            "MINIO_ROOT_USER": "ops",
            "MINIO_ROOT_PASSWORD": "minio-s3cret",
        },
    ],
    ids=["defaults", "custom-credentials"],
)
def test_services_are_configured_to_reach_each_other(env, monkeypatch):
    """Render every longtake service's environment into Settings and check that it names the
    database, broker and bucket that the same compose file creates, with its credentials."""
    project = compose(*CPU, env=env)
    services = project.config["services"]
    pg = project.environment("postgres")
    minio = project.environment("minio")
    (created_bucket,) = re.findall(
        r"mc mb --ignore-existing store/(\S+)", " ".join(services["createbucket"]["command"])
    )
    longtake = {name: s for name, s in services.items() if ours(s)}
    assert set(longtake) >= {"migrate", "api", "relay", "worker", "worker-cpu", "flower"}

    for name in longtake:
        settings = settings_for(monkeypatch, project.environment(name))
        db = sa.make_url(settings.database_url)
        assert (db.host, db.port, db.database) == ("postgres", 5432, pg["POSTGRES_DB"]), name
        assert (db.username, db.password) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"]), name
        assert db.drivername == "postgresql+psycopg"
        assert urlsplit(settings.broker_url).hostname == "redis"

        assert settings.storage_backend == "s3"
        assert settings.storage_bucket == created_bucket, name
        assert urlsplit(settings.storage_endpoint_url).hostname == "minio"
        assert urlsplit(settings.storage_endpoint_url).port == 9000
        storage = settings.make_storage()
        assert isinstance(storage, S3Storage)
        client_config = storage.client.meta.config
        assert client_config.s3["addressing_style"] == "path"  # MinIO
        assert client_config.request_checksum_calculation == "when_required"
        assert client_config.response_checksum_validation == "when_required"
        credentials = storage.client._request_signer._credentials
        assert (credentials.access_key, credentials.secret_key) == (
            minio["MINIO_ROOT_USER"],
            minio["MINIO_ROOT_PASSWORD"],
        ), name


MODEL = ("LONGTAKE_MODEL_PRESET", "LONGTAKE_MODEL_DIR", "LONGTAKE_MODEL_DEVICE")


def test_the_cpu_worker_has_the_same_configuration_as_the_gpu_worker_but_the_model():
    """compose.cpu.yaml repeats the shared variables (anchors do not cross files)."""
    for env in ({}, {"POSTGRES_PASSWORD": "x", "MINIO_ROOT_PASSWORD": "y"}):
        project = compose(*CPU, env=env)
        gpu, cpu = project.environment("worker"), project.environment("worker-cpu")
        assert {k: v for k, v in cpu.items() if k not in MODEL} == {
            k: v for k, v in gpu.items() if k not in MODEL
        }
        api = project.environment("api")
        assert {k: v for k, v in gpu.items() if k not in MODEL} == {
            **{k: v for k, v in api.items() if k not in MODEL},
            "LONGTAKE_SOFT_SHUTDOWN_TIMEOUT_S": "300",
        }


def test_workers_load_the_model_they_are_meant_to(monkeypatch):
    """The GPU worker: the published weights from its read-only mount, on a GPU or not at all.
    The CPU worker: the tiny preset on the CPU."""
    from pipeline.presets import PRESETS

    project = compose(*CPU)
    gpu = settings_for(monkeypatch, project.environment("worker")).worker_config().engine
    assert gpu.preset == "liveavatar-14b" and gpu.preset in PRESETS
    assert gpu.device == "cuda" and gpu.factory is None
    mounts = [v.split(":") for v in project.config["services"]["worker"]["volumes"]]
    assert [str(gpu.checkpoint_dir), "ro"] in [m[1:] for m in mounts]

    cpu = settings_for(monkeypatch, project.environment("worker-cpu")).worker_config().engine
    assert (cpu.preset, cpu.device, cpu.random_weights) == ("tiny", "cpu", False)

    # the API suggests sizes for the model its workers run
    main_api = settings_for(monkeypatch, compose(*MAIN).environment("api")).api_config()
    cpu_api = settings_for(monkeypatch, project.environment("api")).api_config()
    assert (main_api.model_preset, cpu_api.model_preset) == (gpu.preset, cpu.preset)

    node = settings_for(
        monkeypatch, compose(*NODE, env=NODE_ENV).environment("worker")
    ).worker_config()
    assert node.engine == gpu


# --------------------------------------------------------------------------- start order, health


def one_shot(service: dict[str, Any]) -> bool:
    return service.get("restart") == "no"


def health_enabled(service: dict[str, Any]) -> bool:
    check = service.get("healthcheck") or {}
    return bool(check.get("test")) and not check.get("disable")


@pytest.mark.parametrize("files", [MAIN, CPU], ids=["main", "cpu"])
@pytest.mark.parametrize("profiles", [(), ("monitoring",)], ids=["core", "monitoring"])
def test_every_service_reports_health_and_starts_after_what_it_needs(files, profiles):
    services = compose(*files).services(profiles)
    for name, service in services.items():
        if one_shot(service):
            # a one-shot has no health: the services after it wait for it to complete
            waiters = [
                n
                for n, s in services.items()
                if (s.get("depends_on") or {}).get(name, {}).get("condition")
                == "service_completed_successfully"
            ]
            assert waiters, f"nothing waits for the one-shot {name}"
            continue
        assert health_enabled(service), f"{name} has no health check"
        for dep, spec in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on {dep}, which does not start"
            wanted = (
                "service_completed_successfully" if one_shot(services[dep]) else "service_healthy"
            )
            assert spec["condition"] == wanted, f"{name} -> {dep}"
            if wanted == "service_healthy":
                assert health_enabled(services[dep]), dep

    # no cycles: every service can be ordered after its dependencies
    order: list[str] = []
    remaining = dict(services)
    while remaining:
        ready = [n for n, s in remaining.items() if set(s.get("depends_on") or {}) <= set(order)]
        assert ready, f"dependency cycle among {sorted(remaining)}"
        order += ready
        for n in ready:
            del remaining[n]

    workers = [n for n in services if n.startswith("worker")]
    assert len(workers) == 1, workers
    for name in ("api", "relay", *workers):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
    for name in ("api", *workers):
        assert "createbucket" in services[name]["depends_on"], name


def test_migrations_run_before_anything_uses_the_database():
    services = compose(*MAIN).config["services"]
    assert services["migrate"]["command"] == ["migrate"]
    uses_db = [n for n, s in services.items() if ours(s) and n not in ("migrate", "flower")]
    assert sorted(uses_db) == ["api", "relay", "worker"]
    # the API does not run the relay itself: the relay service does
    assert services["api"]["command"] == ["api"] and services["relay"]["command"] == ["relay"]


def test_core_services_and_monitoring_profile():
    project = compose(*MAIN)
    assert set(project.services()) == {
        "postgres", "redis", "minio", "createbucket", "migrate", "api", "relay", "worker",
    }  # fmt: skip
    assert set(project.services(("monitoring",))) - set(project.services()) == {
        "flower",
        "prometheus",
    }


# --------------------------------------------------------------------------- the GPU worker


@pytest.mark.parametrize("files", [MAIN, NODE], ids=["main", "node"])
def test_gpu_worker_reserves_gpus_mounts_weights_read_only_and_drains(files):
    project = compose(*files, env={**NODE_ENV, "WORKER_GPUS": "4"})
    worker = project.config["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert device["count"] == "4"
    assert (
        compose(*files, env=NODE_ENV).config["services"]["worker"]["deploy"]["resources"][
            "reservations"
        ]["devices"][0]["count"]
        == "1"
    )

    # checkpoints/ of this repository, read-only, where the image's working directory expects it
    image = parse_dockerfile(DOCKER / "worker.Dockerfile")
    workdir = image.effective(image.stage("worker"), "WORKDIR").args
    mounts = [v.split(":") for v in worker["volumes"]]
    (mount,) = [m for m in mounts if m[1] == f"{workdir}/checkpoints"]
    assert mount[2] == "ro"
    assert (DOCKER / mount[0]).resolve() == ROOT / "checkpoints"

    # SIGTERM: the render gets the soft-shutdown time to checkpoint and release; Docker must
    # not kill it before then
    soft = float(project.environment("worker")["LONGTAKE_SOFT_SHUTDOWN_TIMEOUT_S"])
    assert seconds(worker["stop_grace_period"]) > soft >= DEFAULTS["soft_shutdown_timeout_s"]
    assert worker["init"] is True  # signals forwarded, ffmpeg and pool children reaped


def test_cpu_override_replaces_the_gpu_worker():
    project = compose(*CPU)
    active = project.services()
    assert "worker" not in active and "worker-cpu" in active
    assert project.config["services"]["worker"]["profiles"] == ["gpu"]
    cpu = active["worker-cpu"]
    assert "deploy" not in cpu  # asks for no GPU
    assert not cpu.get("volumes")  # no weights: the tiny preset
    args = cpu["build"]["args"]
    assert not args["BASE_IMAGE"].startswith("nvidia/")
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert args["FLASH_ATTN"] == "false"
    gpu = project.config["services"]["worker"]
    for key in ("command", "depends_on", "stop_grace_period", "init", "restart"):
        assert cpu[key] == gpu[key], key
    assert cpu["healthcheck"]["test"] == gpu["healthcheck"]["test"]


def test_node_file_requires_the_shared_services():
    with pytest.raises(InterpolationError, match="LONGTAKE_DATABASE_URL"):
        _ = compose(
            *NODE, env={k: v for k, v in NODE_ENV.items() if k != "LONGTAKE_DATABASE_URL"}
        ).config
    project = compose(*NODE, env={**NODE_ENV, "LONGTAKE_STORAGE_REGION": "eu-west-1"})
    env = project.environment("worker")
    assert env["LONGTAKE_STORAGE_REGION"] == "eu-west-1"
    assert "LONGTAKE_STORAGE_ENDPOINT_URL" not in env  # unset in the shell: not passed as ""
    assert {k: env[k] for k in NODE_ENV} == NODE_ENV


# --------------------------------------------------------------------------- monitoring


def test_prometheus_scrapes_the_api_and_flower_where_they_listen():
    services = compose(*MAIN).config["services"]
    prometheus = services["prometheus"]
    (mount,) = [
        v for v in prometheus["volumes"] if v.endswith(":/etc/prometheus/prometheus.yml:ro")
    ]
    config_path = (DOCKER / mount.split(":")[0]).resolve()
    assert config_path == ROOT / "ops" / "monitoring" / "prometheus.yml"
    config = yaml.safe_load(config_path.read_text())

    listening = {
        "api": DEFAULTS["port"],  # LONGTAKE_PORT is not set: the default
        "flower": int(
            next(a for a in services["flower"]["command"] if a.startswith("--port=")).split("=")[1]
        ),
        "localhost": 9090,
    }
    targets = {
        t
        for job in config["scrape_configs"]
        for sc in job.get("static_configs", [])
        for t in sc["targets"]
    }
    assert targets == {f"{host}:{port}" for host, port in listening.items()}
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["longtake-api"]["metrics_path"] == "/metrics"
    # the published API port maps to the port it listens on
    assert services["api"]["ports"] == [f"127.0.0.1:8000:{DEFAULTS['port']}"]


def test_every_bind_mount_exists():
    for files in (MAIN, CPU, NODE):
        for name, service in compose(*files, env=NODE_ENV).config["services"].items():
            for volume in service.get("volumes") or []:
                source = volume.split(":")[0]
                if source.startswith((".", "/")):
                    assert (DOCKER / source).exists(), f"{name}: {source}"


def test_build_contexts_are_the_repository_root():
    for files in (MAIN, CPU):
        for name, service in compose(*files).config["services"].items():
            if ours(service):
                assert (DOCKER / service["build"]["context"]).resolve() == ROOT, name
                assert (ROOT / service["build"]["dockerfile"]).is_file(), name


def test_project_helper_renders_like_compose():
    """The renderer the other tests rely on: defaults, required values, `$$`, pass-through."""
    p = Project((), {"SET": "v", "EMPTY": ""})
    from tests.deploy.files import interpolate

    assert (
        interpolate("${SET:-d}|${UNSET:-d}|${EMPTY:-d}|${EMPTY-d}|$$X|$SET", p.env) == "v|d|d||$X|v"
    )
    assert interpolate("${UNSET:-${SET}}/${SET:+alt}/${EMPTY:+alt}", p.env) == "v/alt/"
    with pytest.raises(InterpolationError, match="UNSET is missing: say so"):
        interpolate("${UNSET:?say so}", p.env)
    assert seconds("1m30s") == 90 and seconds("330s") == 330
    with pytest.raises(ValueError):
        seconds("5 minutes")


def test_the_operations_guides_two_engine_node_is_a_valid_compose_file(tmp_path, monkeypatch):
    """docs/operations.md: an 8-GPU node as two workers of 4 GPUs each."""
    guide = (ROOT / "docs" / "operations.md").read_text()
    (example,) = [b for b in re.findall(r"```yaml\n(.*?)```", guide, re.S) if "engine-a" in b]
    (tmp_path / "compose.yaml").write_text(example)
    project = Project((tmp_path / "compose.yaml",), {**NODE_ENV, "LONGTAKE_ENGINE_FACTORY": "m:f"})
    validator = jsonschema.Draft7Validator(compose_schema())
    assert not list(validator.iter_errors(project.config))
    services = project.config["services"]
    gpus = [
        services[name]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        for name in ("engine-a", "engine-b")
    ]
    assert gpus == [["0", "1", "2", "3"], ["4", "5", "6", "7"]]
    main_worker = compose(*NODE, env=NODE_ENV).config["services"]["worker"]
    for name in ("engine-a", "engine-b"):
        env = project.environment(name)
        settings = settings_for(monkeypatch, env)
        assert settings.worker_config().engine.factory == "m:f"
        assert services[name]["stop_grace_period"] == main_worker["stop_grace_period"]
        assert env["LONGTAKE_SOFT_SHUTDOWN_TIMEOUT_S"] == "300"
        assert services[name]["volumes"] == main_worker["volumes"]
