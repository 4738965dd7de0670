"""The `longtake` command, against a real embedded service over HTTP."""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from db import job_store, leases, migrate
from ops import cli, terminal
from ops.demo import DEMO_SIZE
from storage import keys
from tests import media
from tests.cli.processes import LoggedProcess, said
from tests.conftest import free_port
from tests.db.test_migrations import HEAD
from tests.factories import failure, lease_for

ROOT = Path(__file__).resolve().parents[2]
LONGTAKE = [sys.executable, "-m", "ops.cli"]


@pytest.fixture
def inputs(tmp_path):
    image, audio = tmp_path / "face.png", tmp_path / "voice.wav"
    image.write_bytes(media.png())
    audio.write_bytes(media.wav(3.0))
    return image, audio


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def services_of(server):
    return server.process.app.state.services


def test_client_commands(embedded_service, inputs, capsys, tmp_path):
    url = embedded_service.url
    image, audio = inputs
    code, out, _ = run(capsys, "submit", str(image), str(audio), "--prompt", "A narrator",
                       "--size", "384*256", "--seed", "5", "--api-url", url)  # fmt: skip
    assert code == 0
    job_id = out.strip()
    uuid.UUID(job_id)

    code, out, _ = run(capsys, "status", job_id, "--api-url", url)
    assert code == 0 and "status    queued" in out and "0/2 clips" in out
    code, out, _ = run(capsys, "status", job_id, "--json", "--api-url", url)
    assert code == 0 and '"seed": 5' in out
    code, out, _ = run(capsys, "list", "--api-url", url)
    header, row = out.splitlines()
    assert code == 0 and header.split() == ["JOB", "STATUS", "CLIPS", "CREATED"]
    assert row.split()[:3] == [job_id, "queued", "0/2"]
    assert row.index("queued") == header.index("STATUS")  # the columns line up

    code, out, _ = run(capsys, "cancel", job_id, "--api-url", url)
    assert (code, out.strip()) == (0, f"job {job_id} canceled")
    code, out, _ = run(capsys, "retry", job_id, "--api-url", url)
    assert (code, out.strip()) == (0, f"job {job_id} queued again; it resumes from clip 0")
    code, out, _ = run(capsys, "status", job_id, "--events", "--api-url", url)
    history = [line.split()[1:5] for line in out.splitlines()[-3:]]
    assert history == [
        ["created", "->", "queued", "submitted"],
        ["canceled", "queued", "->", "canceled"],
        ["retried", "canceled", "->", "queued"],
    ]

    # a worker renders it (driven through the repository, as the render lifecycle will)
    services = services_of(embedded_service)
    jid = uuid.UUID(job_id)
    with services.database.transaction() as s:
        lease = leases.claim(s, jid, "w1", 60)
        leases.update_progress(s, lease_for(jid, "w1", lease.attempt), clips_done=2, fps=9.5)
        leases.mark_stitching(s, lease_for(jid, "w1", lease.attempt))
        services.storage.put_bytes(keys.output_key(jid), b"an mp4")
        leases.mark_succeeded(s, lease_for(jid, "w1", lease.attempt), keys.output_key(jid))

    code, _, err = run(capsys, "watch", job_id, "--api-url", url)
    assert code == 0 and "[" + "#" * 30 + "] 2/2 clips" in err and "succeeded" in err

    dest = tmp_path / "result.mp4"
    code, out, _ = run(capsys, "fetch", job_id, "-o", str(dest), "--api-url", url)
    assert code == 0 and dest.read_bytes() == b"an mp4"
    assert out.strip() == f"{dest} (6 bytes)"


def test_errors_are_reported_with_the_apis_message(embedded_service, inputs, capsys):
    url = embedded_service.url
    missing = str(uuid.uuid4())
    code, _, err = run(capsys, "status", missing, "--api-url", url)
    assert code == 1 and err.strip() == f"error: job {missing} does not exist"

    image, audio = inputs
    code, _, err = run(capsys, "submit", str(audio), str(audio), "--prompt", "p", "--api-url", url)
    assert code == 1 and "could not be read as an image" in err

    code, _, err = run(capsys, "status", missing, "--api-url", f"http://127.0.0.1:{free_port()}")
    assert code == 1 and "cannot reach the API" in err

    code, _, err = run(capsys, "submit", "nope.png", str(audio), "--prompt", "p")
    assert code == 2 and "nope.png is not a file" in err


def test_watch_exit_codes_follow_the_final_status(embedded_service, create_job):
    from api.client import LongtakeClient
    from ops.terminal import watch

    db = services_of(embedded_service).database
    failed, canceled = create_job(db), create_job(db)
    with db.transaction() as s:
        lease = leases.claim(s, failed.id, "w", 60)
        leases.mark_failed(
            s, lease_for(failed.id, "w", lease.attempt), failure("CUDA out of memory")
        )
        job_store.request_cancel(s, canceled.id)
    out = io.StringIO()
    with LongtakeClient(embedded_service.url, api_key=embedded_service.api_key) as client:
        assert watch(client, str(failed.id), out=out) == 1
        assert "error: CUDA out of memory" in out.getvalue()
        assert watch(client, str(canceled.id), out=out) == 3
        queued = create_job(db)
        assert watch(client, str(queued.id), out=out, interval=0.05, timeout=0.2) == 124


def test_progress_line():
    job = {
        "status": "running", "cancel_requested": False, "attempt": 2, "max_attempts": 3,
        "progress": {"clips_done": 5, "clips_total": 20, "fps": 21.04, "eta_s": 3725.0},
    }  # fmt: skip
    assert terminal.progress_line(job, width=20) == (
        "[#####...............] 5/20 clips  21.0 fps  eta 1:02:05  running, attempt 2/3"
    )


def test_migrate_embedded_and_postgres(embedded_env, postgres_url_factory, capsys, monkeypatch):
    code, out, _ = run(capsys, "migrate", "--embedded")
    assert code == 0 and out.strip() == f"database at revision {HEAD}"
    assert migrate.current_revision(f"sqlite:///{embedded_env / 'longtake.sqlite3'}") == HEAD

    url = postgres_url_factory()
    monkeypatch.setenv("LONGTAKE_DATABASE_URL", url)
    assert run(capsys, "migrate")[1].strip() == f"database at revision {HEAD}"
    assert run(capsys, "migrate", "base", "--down")[1].strip() == "database at revision None"


def test_demo_submits_and_reports_the_queued_job(embedded_env, capsys):
    code, _, err = run(capsys, "demo")
    assert code == 0
    assert "submitted job" in err and "the demo stops here" in err
    assert (embedded_env / "demo" / "portrait.png").is_file()
    from db.database import Database

    db = Database(f"sqlite:///{embedded_env / 'longtake.sqlite3'}")
    with db.transaction() as s:
        (job,) = job_store.list_jobs(s)
    db.dispose()
    assert job.status == "queued" and job.params["size"] == DEMO_SIZE


def test_worker_refuses_to_start_without_a_render_task(
    embedded_env, capsys, redis_prefix, monkeypatch
):
    import dispatch.celery_app

    monkeypatch.setattr(dispatch.celery_app, "TASK_MODULES", ())
    monkeypatch.setenv("LONGTAKE_BROKER_KEY_PREFIX", redis_prefix)
    code, _, err = run(capsys, "worker")
    assert code == 1 and "no longtake.render task is installed" in err


@pytest.mark.slow
def test_serve_embedded_and_submit_as_processes(embedded_env, inputs):
    """The installed console command, as an operator runs it."""
    port = free_port()
    env = {**os.environ, "LONGTAKE_API_URL": f"http://127.0.0.1:{port}"}
    server = LoggedProcess([*LONGTAKE, "serve", "--embedded", "--port", str(port)], env)
    try:
        # uvicorn says so once the app has started and the socket listens
        server.wait_for(lambda lines: said(lines, "Uvicorn running on") == 1, "server start")
        image, audio = inputs
        submitted = subprocess.run(
            [*LONGTAKE, "submit", str(image), str(audio), "--prompt", "p"],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip()
        url = f"http://127.0.0.1:{port}/v1/jobs/{job_id}"
        assert httpx.get(url).status_code == 401  # the API wants the local key...
        key = (embedded_env / "api-key").read_text().strip()  # ...which the CLI found here
        job = httpx.get(url, headers={"Authorization": f"Bearer {key}"}).json()
        assert job["status"] == "queued"
    finally:
        server.stop()
    assert "no job handler is configured" in server.log


def test_checkpoints_verify_names_what_is_missing(tmp_path, capsys):
    code, out, _ = run(capsys, "checkpoints", "verify", "--root", str(tmp_path))
    assert code == 1
    assert "NOT USABLE" in out
    for name in ("Wan2.2-S2V-14B/Wan2.1_VAE.pth", "LiveAvatar/liveavatar.safetensors"):
        assert f"MISSING  {name}" in out
    assert f"no release files found under {tmp_path}" in out


def test_checkpoints_download_offline_fails_with_a_clear_message(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(capsys, "checkpoints", "download", "--root", str(tmp_path))
    assert code == 1
    assert "needs internet access" in err and "checkpoints/README.md" in err


def test_sweep_drops_the_resume_points_of_jobs_that_ended_long_ago(
    embedded_env, create_job, capsys
):
    from datetime import timedelta

    from db.database import Database
    from db.models import utcnow
    from ops.settings import Settings

    assert run(capsys, "migrate", "--embedded")[0] == 0
    settings = Settings().embedded()
    database, storage = Database(settings.database_url), settings.make_storage()
    ended = {}
    for name, days_ago in (("old", 3.0), ("recent", 0.5)):
        job = create_job(database, now=utcnow() - timedelta(days=days_ago, hours=1))
        with database.transaction() as s:
            leases.claim(s, job.id, "w1", 60)
            leases.record_checkpoint(s, lease_for(job.id, "w1", 1), 2)
            leases.mark_failed(
                s,
                lease_for(job.id, "w1", 1),
                failure("boom"),
                now=utcnow() - timedelta(days=days_ago),
            )
        storage.put_bytes(keys.checkpoint_key(job.id, 2, "manifest.json"), b"{}")
        ended[name] = job.id

    code, out, _ = run(capsys, "sweep", "--embedded", "--older-than-days", "2")
    assert code == 0
    assert f"dropped the resume point of job {ended['old']}" in out
    assert "1 job, 1 object deleted (failed or canceled more than 2 days ago)" in out
    assert storage.list(keys.job_prefix(ended["old"])) == []
    assert len(storage.list(keys.job_prefix(ended["recent"]))) == 1
    with database.transaction() as s:
        assert job_store.get_job(s, ended["old"]).last_checkpoint_clip is None
        assert job_store.get_job(s, ended["recent"]).last_checkpoint_clip == 2
    database.dispose()

    code, out, _ = run(capsys, "sweep", "--embedded", "--older-than-days", "0")
    assert code == 0 and "nothing to do" in out


# --------------------------------------------------------------------------- as a new user tries it

HEAVY = ("torch", "sqlalchemy", "celery", "kombu", "fastapi", "starlette", "uvicorn", "boto3",
         "botocore", "numpy", "PIL", "av", "alembic")  # fmt: skip
IMPORTED_BY = """
import contextlib, io, json, sys
from ops import cli
codes = []
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            codes.append(cli.main(argv))
        except SystemExit as e:
            codes.append(e.code)
print(json.dumps({"codes": codes, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def test_client_commands_start_without_the_server_stack(embedded_service, inputs):
    """`--help` and the client commands import the HTTP client only: no torch, no database,
    no Celery, no web framework, no boto3 (they took seconds to start when they did)."""
    job_id = submit_one(embedded_service, inputs)
    url = ["--api-url", embedded_service.url]
    argvs = [["--help"], ["submit", "--help"], ["status", job_id, *url], ["list", *url],
             ["fetch", job_id, *url], ["batch", "status", str(uuid.uuid4()), *url]]  # fmt: skip
    ran = subprocess.run([sys.executable, "-c", IMPORTED_BY, json.dumps(argvs)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    result = json.loads(ran.stdout)
    assert result["codes"] == [0, 0, 0, 0, 1, 1]  # not finished / no such batch: the API said so
    assert [m for m in HEAVY if m in result["modules"]] == []
    assert "httpx" in result["modules"]


def submit_one(server, inputs) -> str:
    from api.client import LongtakeClient

    with LongtakeClient(server.url, api_key=server.api_key) as client:
        return client.submit(*inputs, prompt="A narrator", size="64*64")["id"]


def test_output_into_a_closed_pipe_ends_quietly(embedded_service, inputs):
    """`longtake status J | head -3`: when the reader has gone, the command stops without a
    traceback, with the exit status of a command stopped by SIGPIPE."""
    from api.client import LongtakeClient

    job_id = submit_one(embedded_service, inputs)
    with LongtakeClient(embedded_service.url, api_key=embedded_service.api_key) as client:
        client.cancel(job_id)  # final: `watch` prints its line and ends
    env = {**os.environ, "LONGTAKE_API_URL": embedded_service.url,
           "LONGTAKE_API_KEY": embedded_service.api_key}  # fmt: skip
    for argv in (["status", job_id], ["status", job_id, "--events"], ["status", job_id, "--json"],
                 ["list"], ["watch", job_id], ["--help"]):  # fmt: skip
        read, write = os.pipe()
        os.close(read)  # the reader is gone before the first line
        try:
            # `watch` writes its progress to stderr: that goes into the closed pipe too
            stderr = write if argv[0] == "watch" else subprocess.PIPE
            ran = subprocess.run([*LONGTAKE, *argv], env=env, stdout=write, stderr=stderr,
                                 text=True)  # fmt: skip
        finally:
            os.close(write)
        assert ran.stderr in (None, ""), (
            argv
        )  # no BrokenPipeError traceback, no "Exception ignored"
        # (argparse itself drops help text it cannot write, and exits 0)
        assert ran.returncode == (0 if argv == ["--help"] else 141), argv


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "nope"],
        ["watch", "12"],
        ["cancel", "n0t-a-uuid"],
        ["retry", "x"],
        ["fetch", "job-1"],
        ["batch", "status", "b1"],
        ["batch", "cancel", "b1"],
    ],  # fmt: skip
)
def test_malformed_ids_are_refused_in_plain_words(capsys, argv):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    err = capsys.readouterr().err
    kind = "batch" if argv[0] == "batch" else "job"
    assert exited.value.code == 2
    assert f"not a {kind} id: {argv[-1]!r}" in err
    assert "UUID" not in err and "Input should be" not in err


def test_other_bad_arguments_are_refused_before_asking_the_api(capsys):
    for argv, message in (
        (["list", "--status", "done"], "invalid choice: 'done'"),
        (["list", "--limit", "0"], "not a whole number of at least 1: '0'"),
        (["submit", "a.png", "b.wav", "--prompt", "p", "--clips", "some"], "'some'"),
    ):
        with pytest.raises(SystemExit):
            cli.main(argv)
        assert message in capsys.readouterr().err


def test_submit_asks_the_server_for_a_size_that_suits_its_model(embedded_env, inputs, capsys):
    """With no --size, a job gets the size the deployment suggests for the model its workers
    run: small for the tiny model (CPUs), the model's own default for liveavatar-14b."""
    from ops.server import BackgroundServer, build
    from ops.settings import Settings

    image, audio = inputs
    sizes = {}
    for preset in ("tiny", "liveavatar-14b"):
        port = free_port()
        settings = Settings(api_url=f"http://127.0.0.1:{port}", model_preset=preset)
        server = BackgroundServer(build(settings, embedded=True), "127.0.0.1", port)
        server.start()
        try:
            code, out, err = run(capsys, "submit", str(image), str(audio), "--prompt", "p",
                                 "--api-url", settings.api_url)  # fmt: skip
            assert code == 0, err
            job = server.process.app.state.services.database
            with job.transaction() as s:
                sizes[preset] = job_store.get_job(s, uuid.UUID(out.strip())).job_params.size
            assert f"(size {sizes[preset]})" in err  # the user is told what they asked for
        finally:
            server.stop()
    assert sizes == {"tiny": "128*128", "liveavatar-14b": "720*400"}


def test_submit_help_says_how_to_get_a_quick_render(capsys):
    with pytest.raises(SystemExit):
        cli.main(["submit", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert cli.QUICK in out and "128*128 for the tiny CPU model" in out


def test_counts_read_as_words():
    assert [terminal.count(n, "clip") for n in (0, 1, 2)] == ["0 clips", "1 clip", "2 clips"]
    assert terminal.count(0.5, "day") == "0.5 days" and terminal.count(2.0, "day") == "2 days"
    segment = terminal.NOTES["segment"]
    assert segment({"data": {"index": 0, "clips": 1}}) == "segment 1 ready (1 clip)"
    assert segment({"data": {"index": 3, "clips": 20}}) == "segment 4 ready (20 clips)"


def test_the_command_named_to_the_user_runs(tmp_path, monkeypatch):
    """The demo tells the user how to run `longtake`: as `make demo` runs it (the virtual
    environment not activated), activated, or as a module. Each named command works."""
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "longtake"  # what pip writes for a console script
    script.write_text(
        f"#!{sys.executable}\nimport sys\nfrom ops.cli import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    system_path = os.defpath

    not_on_path = terminal.own_command(str(script), path=system_path)
    activated = terminal.own_command(str(script), path=f"{bin_dir}{os.pathsep}{system_path}")
    as_module = terminal.own_command(str(ROOT / "ops" / "cli.py"), path=system_path)
    assert not_on_path == ".venv/bin/longtake" and activated == "longtake"
    assert as_module.endswith(" -m ops.cli")

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for named, path in ((not_on_path, system_path), (activated, f"{bin_dir}:{system_path}"),
                        (as_module, system_path)):  # fmt: skip
        ran = subprocess.run([*shlex.split(named), "--help"], cwd=tmp_path, capture_output=True,
                             text=True, env={**env, "PATH": path})  # fmt: skip
        assert ran.returncode == 0 and ran.stdout.startswith("usage: longtake"), ran.stderr
