"""What the containers run, run here: the entrypoint's roles, every command the images and the
compose files start, the health checks against real Postgres, Redis and Celery, and the API
image's processes with the model stack absent (as it is from that image)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ops import cli
from ops.settings import Settings
from tests.conftest import REDIS_URL, free_port, queued_messages
from tests.deploy.files import DOCKER, compose, load_script, parse_dockerfile

ENTRYPOINT = DOCKER / "entrypoint.sh"
VENV_BIN = Path(sys.executable).parent
healthcheck = load_script("healthcheck")
image_requirements = load_script("requirements")


def entrypoint(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run(
        ["bash", str(ENTRYPOINT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", **(env or {})},
    )


def resolve(*args: str) -> list[str]:
    """The command the entrypoint runs for these arguments."""
    result = entrypoint("--dry-run", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


# --------------------------------------------------------------------------- entrypoint


def test_entrypoint_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(ENTRYPOINT)], capture_output=True).returncode == 0
    assert os.access(ENTRYPOINT, os.X_OK)


@pytest.mark.parametrize(
    "args,command",
    [
        (["api"], ["longtake", "serve", "--no-relay"]),
        (["relay"], ["longtake", "relay"]),
        (["worker"], ["longtake", "worker"]),
        (["worker", "--name", "render-a@%h"], ["longtake", "worker", "--name", "render-a@%h"]),
        (["migrate"], ["longtake", "migrate"]),
        (["flower", "--port=5555"], ["celery", "--app", "celery_cli", "flower", "--port=5555"]),
        (
            ["celery", "control", "cancel_consumer", "render"],
            ["celery", "--app", "celery_cli", "control", "cancel_consumer", "render"],
        ),
        (["health", "worker"], ["python", f"{DOCKER}/healthcheck.py", "worker"]),
        (["longtake", "list", "--status", "queued"], ["longtake", "list", "--status", "queued"]),
        (["bash", "-c", "echo 'two words'"], ["bash", "-c", "echo 'two words'"]),
    ],
)
def test_entrypoint_roles(args, command):
    assert resolve(*args) == command


def test_entrypoint_without_arguments_says_how_to_use_it():
    result = entrypoint()
    assert result.returncode == 2 and "usage: entrypoint.sh" in result.stderr


def test_entrypoint_execs_so_signals_reach_the_process():
    """`docker stop` signals PID 1: the command must replace the shell, not run under it."""
    process = subprocess.Popen(
        ["bash", str(ENTRYPOINT), "bash", "-c", 'echo "$$"; exec sleep 30'],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert int(process.stdout.readline()) == process.pid
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == -signal.SIGTERM
    finally:
        process.kill()
        process.wait()


def test_entrypoint_migrates_for_real(postgres_url_factory):
    from db import migrate

    url = postgres_url_factory()
    result = entrypoint("migrate", env={"LONGTAKE_DATABASE_URL": url})
    assert result.returncode == 0, result.stderr
    head = migrate.current_revision(url)
    assert head is not None and result.stdout.strip() == f"database at revision {head}"


def container_commands() -> set[tuple[str, ...]]:
    """Every command line handed to the entrypoint by the images (CMD, HEALTHCHECK) and by the
    compose files (command, healthcheck), for the containers built from docker/."""
    found: set[tuple[str, ...]] = set()
    for path in DOCKER.glob("*.Dockerfile"):
        image = parse_dockerfile(path)
        for stage in image.stages:
            cmd = stage.last("CMD")
            if cmd is not None:
                found.add(tuple(cmd.exec_form()))
            check = stage.last("HEALTHCHECK")
            if check is not None:
                found.add(("exec", *json_list(check.args[check.args.index("CMD ") + 4 :])))
    node_env = {
        "LONGTAKE_DATABASE_URL": "x",
        "LONGTAKE_BROKER_URL": "y",
        "LONGTAKE_STORAGE_BUCKET": "z",
    }
    for path in DOCKER.glob("compose*.yaml"):
        for service in compose(path.name, env=node_env).config["services"].values():
            if not str(service.get("image", "")).startswith("longtake-"):
                continue
            if "command" in service:
                found.add(tuple(service["command"]))
            test = (service.get("healthcheck") or {}).get("test")
            if test:
                assert test[0] == "CMD", test
                found.add(("exec", *test[1:]))
    return found


def json_list(text: str) -> list[str]:
    import json

    return json.loads(text)


def test_every_command_the_containers_run_exists():
    commands = container_commands()
    roles = {c[0] for c in commands if c[0] != "exec"}
    assert roles == {"api", "relay", "worker", "migrate", "flower"}, roles
    settings = Settings()
    parser = cli.build_parser(settings)
    checked: set[str] = set()
    for command in commands:
        argv = list(command[1:]) if command[0] == "exec" else resolve(*command)
        if argv[0] == "longtake":
            args = parser.parse_args(argv[1:])
            assert args.func.__name__ == f"cmd_{argv[1]}"
            with pytest.raises(SystemExit) as exit_:
                cli.main([argv[1], "--help"])
            assert exit_.value.code == 0
        elif argv[:2] == ["python", "/app/docker/healthcheck.py"] or argv[1].endswith(
            "docker/healthcheck.py"
        ):
            healthcheck.build_parser().parse_args(argv[2:])
        elif argv[0] == "celery":
            assert argv[1:3] == ["--app", "celery_cli"] and (DOCKER / "celery_cli.py").is_file()
        else:
            raise AssertionError(f"unexpected command {argv}")
        checked.add(argv[1] if argv[0] == "longtake" else argv[0])
    assert {"serve", "relay", "worker", "migrate", "python", "celery"} <= checked


def test_celery_tools_use_the_deployments_broker(monkeypatch):
    monkeypatch.setenv("LONGTAKE_BROKER_URL", "redis://broker.internal:6379/3")
    monkeypatch.setenv("LONGTAKE_BROKER_KEY_PREFIX", "prod:")
    app = load_script("celery_cli").app
    assert app.conf.broker_url == "redis://broker.internal:6379/3"
    assert app.conf.broker_transport_options["global_keyprefix"] == "prod:"
    assert "longtake.render" not in app.tasks


# --------------------------------------------------------------------------- health checks


@pytest.fixture
def broker_env(monkeypatch, redis_prefix) -> dict[str, str]:
    env = {"LONGTAKE_BROKER_URL": REDIS_URL, "LONGTAKE_BROKER_KEY_PREFIX": redis_prefix}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_relay_health_follows_its_database_and_broker(
    postgres_url, broker_env, monkeypatch, capsys
):
    monkeypatch.setenv("LONGTAKE_DATABASE_URL", postgres_url)
    assert healthcheck.main(["relay"]) == 0
    assert "database and broker reachable" in capsys.readouterr().out

    monkeypatch.setenv("LONGTAKE_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    assert healthcheck.main(["relay"]) == 1
    assert time.monotonic() - started < 15  # well inside the compose timeout
    assert "unhealthy" in capsys.readouterr().err

    monkeypatch.setenv(
        "LONGTAKE_DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x"
    )
    assert healthcheck.main(["relay"]) == 1


def test_worker_health_is_a_ping_to_this_containers_node(broker_env, celery_app, capsys):
    from celery.contrib.testing.worker import start_worker

    # the node name the health check expects by default is what `longtake worker` uses
    assert cli.build_parser(Settings()).parse_args(["worker"]).name == "render@%h"
    assert healthcheck.default_worker_name() == f"render@{socket.gethostname()}"

    name = f"render@deploy-test-{secrets.token_hex(4)}"
    assert healthcheck.main(["worker", "--name", name, "--timeout", "1"]) == 1  # nobody answers
    assert f"worker {name} did not answer" in capsys.readouterr().err
    with start_worker(
        celery_app, pool="solo", hostname=name, perform_ping_check=False, shutdown_timeout=10
    ):
        assert healthcheck.main(["worker", "--name", name]) == 0
        assert healthcheck.main(["worker", "--name", name + "-other", "--timeout", "1"]) == 1


def test_drain_stops_a_worker_taking_new_jobs(broker_env, celery_app):
    """The first step of a zero-loss upgrade (docs/operations.md), through the entrypoint's
    `celery` role: `control cancel_consumer render` leaves the worker running, off the queue."""
    from celery.contrib.testing.worker import start_worker

    name = f"render@deploy-test-{secrets.token_hex(4)}"
    with start_worker(
        celery_app,
        pool="solo",
        hostname=name,
        queues=["render"],
        perform_ping_check=False,
        shutdown_timeout=10,
    ):

        def queues() -> list[str]:
            replies = celery_app.control.inspect(destination=[name], timeout=2).active_queues()
            return [q["name"] for q in (replies or {}).get(name, [])]

        assert queues() == ["render"]
        drained = entrypoint(
            "celery", "control", "cancel_consumer", "render", "--destination", name, env=broker_env
        )
        assert drained.returncode == 0, drained.stderr
        assert queues() == []
        assert healthcheck.main(["worker", "--name", name]) == 0  # still up, just idle


def test_url_health(capsys):
    assert healthcheck.main(["url", f"http://127.0.0.1:{free_port()}/healthcheck"]) == 1
    assert "unhealthy" in capsys.readouterr().err


# --------------------------------------------------------------------------- the API image


MODEL_STACK_MODULES = {
    "torch": "torch",
    "diffusers": "diffusers",
    "transformers": "transformers",
    "safetensors": "safetensors",
    "huggingface-hub": "huggingface_hub",
    "sentencepiece": "sentencepiece",
}

WITHOUT_MODEL_STACK = """
import importlib.abc, sys

class ModelStackAbsent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {modules!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in the API image)", name=name)

sys.meta_path.insert(0, ModelStackAbsent())
from ops.cli import main
sys.exit(main(sys.argv[1:]))
"""


def longtake_without_model_stack(*args: str) -> list[str]:
    script = WITHOUT_MODEL_STACK.format(modules=set(MODEL_STACK_MODULES.values()))
    return [sys.executable, "-c", script, *args]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            response = httpx.get(url + "/readyz")
            if response.status_code == 200:
                return response.json()
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("the API did not become ready")


@pytest.mark.slow
def test_api_image_processes_run_without_the_model_stack(
    postgres_url_factory, redis_prefix, create_job, tmp_path, monkeypatch
):
    """migrate, serve and relay, the processes of the API image, with every model-stack import
    failing: the API becomes ready, the relay publishes a queued job's wake-up and stops cleanly
    on SIGTERM."""
    from db.database import Database

    assert set(MODEL_STACK_MODULES) == image_requirements.MODEL_STACK
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LONGTAKE_")},
        "LONGTAKE_DATABASE_URL": postgres_url_factory(),
        "LONGTAKE_BROKER_URL": REDIS_URL,
        "LONGTAKE_BROKER_KEY_PREFIX": redis_prefix,
        "LONGTAKE_STORAGE_BACKEND": "local",
        "LONGTAKE_STORAGE_DIR": str(tmp_path / "objects"),
        "LONGTAKE_HOST": "127.0.0.1",
        "LONGTAKE_PORT": str(port),
        "LONGTAKE_API_URL": f"http://127.0.0.1:{port}",
        "LONGTAKE_RELAY_POLL_S": "0.1",
    }
    migrated = subprocess.run(
        longtake_without_model_stack("migrate"), env=env, capture_output=True, text=True, timeout=60
    )
    assert migrated.returncode == 0, migrated.stderr

    server = subprocess.Popen(
        longtake_without_model_stack("serve", "--no-relay"),
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    relay = None
    database = Database(env["LONGTAKE_DATABASE_URL"])
    try:
        ready = wait_ready(env["LONGTAKE_API_URL"], server)
        assert ready["checks"]["database"] == "ok" and ready["checks"]["broker"] == "ok"
        monkeypatch.setenv("LONGTAKE_PORT", env["LONGTAKE_PORT"])
        assert healthcheck.main(["api"]) == 0

        job = create_job(database)
        relay = subprocess.Popen(
            longtake_without_model_stack("relay"), env=env, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 30
        while not queued_messages(REDIS_URL, redis_prefix) and time.monotonic() < deadline:
            assert relay.poll() is None, relay.communicate()[1]
            time.sleep(0.1)
        assert queued_messages(REDIS_URL, redis_prefix) == [
            {"task": "longtake.render", "args": [str(job.id)]}
        ]
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(15) == 0
    finally:
        database.dispose()
        for process in (relay, server):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(15)
    assert healthcheck.main(["api"]) == 1  # the server is gone
