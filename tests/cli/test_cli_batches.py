"""The CLI's keys, tenants, batch and watch commands against a real embedded service."""

from __future__ import annotations

import io
import json
import threading
import uuid

import pytest

from api.client import LongtakeClient
from db import job_store, leases, tenants
from ops import cli
from ops.manifest import ManifestError, jobs_from_manifest, read_jobs
from ops.terminal import watch
from storage import keys
from tests import media
from tests.cli.processes import LoggedProcess, said, wait_until
from tests.factories import failure, job_params, lease_for


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def database_of(server):
    return server.process.app.state.services.database


def test_keys_and_tenants(embedded_service, capsys):
    url = embedded_service.url
    code, out, err = run(capsys, "keys", "create", "--tenant", "acme", "--name", "ci",
                         "--rate", "5", "--embedded")  # fmt: skip
    assert code == 0 and "shown only once" in err
    token = out.strip()
    with LongtakeClient(url, api_key=token) as client:
        assert client.list()["jobs"] == []
    code, out, _ = run(capsys, "keys", "list", "--tenant", "acme", "--embedded")
    (line,) = out.splitlines()
    key_id = line.split()[0]
    assert "acme" in line and "active" in line and "rate 5/s" in line and line.endswith("ci")
    assert token.startswith(f"lt_{key_id.removeprefix('key_')}_")

    code, out, _ = run(capsys, "keys", "revoke", key_id, "--embedded")
    assert (code, out.strip()) == (0, f"{key_id} of tenant acme revoked")
    assert run(capsys, "keys", "revoke", "key_nope", "--embedded")[0] == 1
    with database_of(embedded_service).transaction() as s:
        assert tenants.authenticate(s, token) is None

    code, _, _ = run(capsys, "tenants", "set", "acme", "--max-queued-jobs", "10",
                     "--max-audio-seconds", "600", "--embedded")  # fmt: skip
    assert code == 0
    code, out, _ = run(capsys, "tenants", "list", "--embedded")
    assert "max_queued_jobs=10" in out and "max_audio_seconds=600.0" in out
    run(capsys, "tenants", "set", "acme", "--reset", "max_queued_jobs", "--embedded")
    assert "max_queued_jobs" not in run(capsys, "tenants", "list", "--embedded")[1]


@pytest.fixture
def course(tmp_path):
    """A folder: three lessons, one portrait, scripts for two of them."""
    folder = tmp_path / "course"
    folder.mkdir()
    (folder / "teacher.png").write_bytes(media.png())
    for i, seconds in enumerate((2.0, 3.0, 4.0)):
        (folder / f"lesson-{i}.wav").write_bytes(media.wav(seconds))
    (folder / "lesson-0.txt").write_text("A teacher introduces fractions\n")
    (folder / "lesson-1.txt").write_text("A teacher adds fractions")
    return folder


def finish_all(database, batch_id: str, *, fail: int = 0) -> None:
    """Render every job of the batch the way workers record it (`fail` of them fail)."""
    with database.transaction() as s:
        ids = [j.id for j in job_store.list_jobs(s, batch_id=uuid.UUID(batch_id), limit=100)]
    for n, job_id in enumerate(ids):
        with database.transaction() as s:
            lease = leases.claim(s, job_id, "gpu", 60)
            if n < fail:
                leases.mark_failed(
                    s, lease_for(job_id, "gpu", lease.attempt), failure("CUDA out of memory")
                )
                continue
            leases.mark_stitching(s, lease_for(job_id, "gpu", lease.attempt))
            leases.mark_succeeded(
                s, lease_for(job_id, "gpu", lease.attempt), keys.output_key(job_id)
            )


def test_batch_submit_a_folder_and_wait(embedded_service, course, capsys):
    url = embedded_service.url
    argv = ["batch", "submit", str(course), "--prompt", "A teacher", "--size", "384*256",
            "--priority", "5", "--api-url", url]  # fmt: skip
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    batch_id = out.strip()
    assert "3 jobs queued (4 files uploaded)" in err
    with LongtakeClient(url, api_key=embedded_service.api_key) as client:
        jobs = client.list(limit=10)["jobs"]
        assert client.batch(batch_id)["counts"] == {"queued": 3}
    by_prompt = {j["params"]["prompt"]: j for j in jobs}
    assert set(by_prompt) == {
        "A teacher introduces fractions",
        "A teacher adds fractions",
        "A teacher",
    }
    assert {j["inputs"]["image"] for j in jobs} == {jobs[0]["inputs"]["image"]}  # one upload
    assert {j["priority"] for j in jobs} == {5} and {j["batch_id"] for j in jobs} == {batch_id}
    assert sorted(j["progress"]["clips_total"] for j in jobs) == [2, 2, 3]

    # the same command again returns the same batch
    code, out, _ = run(capsys, *argv)
    assert (code, out.strip()) == (0, batch_id)

    worker = threading.Thread(target=finish_all, args=(database_of(embedded_service), batch_id),
                              kwargs={"fail": 1})  # fmt: skip
    worker.start()
    code, _, err = run(capsys, "batch", "watch", batch_id, "--interval", "0.05", "--api-url", url)
    worker.join()
    assert code == 1  # one job failed
    assert err.splitlines()[-1].startswith("[" + "#" * 30 + "] 3/3 jobs done")
    assert "2 succeeded, 1 failed" in err.splitlines()[-1]
    code, out, _ = run(capsys, "batch", "status", batch_id, "--json", "--api-url", url)
    assert json.loads(out)["finished"] is True


def test_batch_cancel(embedded_service, course, capsys):
    url = embedded_service.url
    code, out, _ = run(capsys, "batch", "submit", str(course), "--prompt", "p", "--api-url", url)
    batch_id = out.strip()
    with LongtakeClient(url, api_key=embedded_service.api_key) as client:
        # no --size: the size the server suggests for its model (the tiny one here)
        assert {j["params"]["size"] for j in client.list()["jobs"]} == {"128*128"}
    code, out, _ = run(capsys, "batch", "cancel", batch_id, "--api-url", url)
    assert (code, out.strip()) == (0, f"batch {batch_id}: 3 jobs canceled or stopping")
    code, _, err = run(capsys, "batch", "watch", batch_id, "--api-url", url)
    assert code == 3


def test_batch_submit_a_csv_manifest_with_numbers(embedded_service, course, capsys, tmp_path):
    manifest = course / "jobs.csv"
    manifest.write_text(
        "image,audio,prompt,seed,num_clips,priority\n"
        "teacher.png,lesson-0.wav,First,7,1,5\n"
        "teacher.png,lesson-1.wav,1984,8,1,\n"
    )
    url = embedded_service.url
    code, out, err = run(capsys, "batch", "submit", str(manifest), "--api-url", url)
    assert code == 0, err
    with LongtakeClient(url, api_key=embedded_service.api_key) as client:
        jobs = {j["params"]["prompt"]: j for j in client.list()["jobs"]}
    assert (jobs["First"]["params"]["seed"], jobs["First"]["priority"]) == (7, 5)
    assert jobs["1984"]["params"]["seed"] == 8  # a prompt of digits stays a prompt
    run(capsys, "batch", "cancel", out.strip(), "--api-url", url)


def test_manifests(tmp_path, course):
    csv_file = tmp_path / "jobs.csv"
    csv_file.write_text(
        "image,audio,prompt,seed,num_clips,watermark\n"
        "course/teacher.png,course/lesson-0.wav,First,7,,\n"
        's3://inputs/face.png,upl_0123456789abcdef,2024,,1,"{""text"": ""ACME""}"\n'
    )
    first, second = jobs_from_manifest(csv_file)
    # the API takes typed JSON: numbers as numbers, objects as objects, text columns as text
    assert first == {"image": str(course / "teacher.png"), "audio": str(course / "lesson-0.wav"),
                     "prompt": "First", "seed": 7}  # fmt: skip
    assert (second["image"], second["audio"], second["num_clips"]) == (
        "s3://inputs/face.png", "upl_0123456789abcdef", 1,
    )  # fmt: skip
    assert second["prompt"] == "2024" and second["watermark"] == {"text": "ACME"}
    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_text('{"image": "course/teacher.png", "audio": "course/lesson-1.wav"}\n\n')
    assert read_jobs(jsonl, image=None, prompt="Default")[0]["prompt"] == "Default"
    with pytest.raises(ManifestError, match="has no audio"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"image": "a.png"}\n')
        jobs_from_manifest(bad)
    (course / "lesson-2.txt").unlink(missing_ok=True)
    with pytest.raises(ManifestError, match="no prompt for lesson-2.wav"):
        read_jobs(course, image=None, prompt=None)


class Shown(io.StringIO):
    """What a watch wrote; `first_line` is set once it has written anything."""

    def __init__(self) -> None:
        super().__init__()
        self.first_line = threading.Event()

    def write(self, text: str) -> int:
        written = super().write(text)
        self.first_line.set()
        return written


def test_watch_follows_the_event_stream(embedded_service):
    database = database_of(embedded_service)
    with database.transaction() as s:
        job = job_store.create_job(
            s,
            job_store.NewJob(
                id=uuid.uuid4(), tenant="default", params=job_params(),
                image_key="i", audio_key="a", clips_total=4, max_attempts=3,
            ),
        )  # fmt: skip
    job_id = job.id
    out = Shown()

    def render():
        out.first_line.wait()  # the watch has shown the job as it was: queued
        with database.transaction() as s:
            lease = leases.claim(s, job_id, "gpu", 60)
        for clip in range(1, 5):
            with database.transaction() as s:
                leases.update_progress(s, lease_for(job_id, "gpu", lease.attempt), clips_done=clip, fps=12.0)  # fmt: skip
                if clip == 2:
                    leases.record_checkpoint(s, lease_for(job_id, "gpu", lease.attempt), 2)
        with database.transaction() as s:
            leases.mark_stitching(s, lease_for(job_id, "gpu", lease.attempt))
            leases.mark_succeeded(
                s, lease_for(job_id, "gpu", lease.attempt), keys.output_key(job_id)
            )

    worker = threading.Thread(target=render, daemon=True)
    worker.start()
    with LongtakeClient(embedded_service.url, api_key=embedded_service.api_key) as client:
        code = watch(client, str(job_id), out=out, timeout=120)
    worker.join()
    lines = out.getvalue().splitlines()
    assert code == 0
    assert lines[0].startswith("[" + "." * 30 + "] 0/4 clips") and "queued" in lines[0]
    assert "checkpoint saved after clip 2" in lines
    assert lines[-1].startswith("[" + "#" * 30 + "] 4/4 clips") and "succeeded" in lines[-1]


@pytest.mark.slow
def test_serve_with_several_worker_processes(postgres_url_factory, tmp_path, redis_prefix):
    """`longtake serve --workers 2` on Postgres: two processes start, and answer."""
    import os
    import sys

    import httpx

    from db import migrate
    from db.database import Database
    from tests.conftest import REDIS_URL, free_port, make_api_key

    url = postgres_url_factory()
    migrate.upgrade(url)
    database = Database(url)
    key = make_api_key(database)
    database.dispose()
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LONGTAKE_")},
        "LONGTAKE_DATABASE_URL": url,
        "LONGTAKE_BROKER_URL": REDIS_URL,
        "LONGTAKE_BROKER_KEY_PREFIX": redis_prefix,
        "LONGTAKE_STORAGE_BACKEND": "local",
        "LONGTAKE_STORAGE_DIR": str(tmp_path / "storage"),
    }
    server = LoggedProcess(
        [sys.executable, "-m", "ops.cli", "serve", "--workers", "2", "--port", str(port)], env
    )
    base = f"http://127.0.0.1:{port}"
    try:
        # each worker process says so once its app has started (the parent holds the socket)
        server.wait_for(
            lambda lines: said(lines, "Application startup complete") == 2,
            "start of both worker processes",
        )
        assert said(server.lines, "Started server process") == 2

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, "readiness", alive=server.alive)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as client:
            answers = {client.get("/v1/jobs").status_code for _ in range(20)}
        assert answers == {200}
    finally:
        code = server.stop()
    assert code == 0, server.log
