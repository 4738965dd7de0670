"""End to end with real services: Postgres, Redis, an S3 API (moto server), the outbox relay
with its reaper, and render workers as operators run them (`longtake worker`, separate
processes, the tiny model on the CPU).

Workers are killed with SIGKILL at the points where a crash is most dangerous (worker/faults.py:
during a clip, after a segment upload, in the middle of a checkpoint upload, during the stitch),
sent SIGTERM, given duplicate wake-ups, and have their broker and database restarted under
them. Every job still completes, and a job that went through all of it yields the very frames
of a job rendered without interruption. The per-clip lines of the workers' logs show that no
clip before a recorded checkpoint is ever generated again.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from db import job_store
from db.database import Database
from storage.keys import manifest_key
from tests.conftest import free_port
from tests.worker.lifecycle_helpers import events, job, make_job, parse_clip_lines, probe
from tests.worker.stack import Relay, WorkerProcess, status, wait_for
from tests.worker.tcp_proxy import TcpProxy
from worker.provenance import iter_frame_hashes

pytestmark = pytest.mark.slow

LOCAL_OR_REMOTE = re.compile(r"starts at clip (\d+) of \d+ .*\(the (local|remote) tier\)")
START = re.compile(
    r"job (?P<job>[0-9a-f-]{36}): attempt (?P<attempt>\d+) of \d+ starts at clip (?P<clip>\d+)"
)


def output_hashes(storage, job_id: uuid.UUID, tmp_path: Path) -> list[str]:
    path = tmp_path / f"{job_id}.mp4"
    storage.get_file(f"jobs/{job_id}/output.mp4", path)
    return list(iter_frame_hashes(path))


def attempts_in_logs(logs: str, job_id: uuid.UUID) -> dict[int, tuple[int, list[int]]]:
    """attempt -> (the clip it started at, the clips it generated in order)."""
    starts = {
        int(m["attempt"]): int(m["clip"]) for m in START.finditer(logs) if m["job"] == str(job_id)
    }
    generated: dict[int, list[int]] = {a: [] for a in starts}
    for j, attempt, clip in parse_clip_lines(logs):
        if j == str(job_id):
            generated[attempt].append(clip)
    return {a: (starts[a], generated[a]) for a in starts}


def checkpoints_by_attempt(database: Database, job_id: uuid.UUID) -> dict[int, list[int]]:
    with database.transaction() as s:
        rows = job_store.list_events(s, job_id)
    out: dict[int, list[int]] = {}
    for e in rows:
        if e.event == "checkpoint":
            out.setdefault(e.attempt, []).append(int(e.data["clip"]))
    return out


def test_an_idle_worker_stops_at_once_on_sigterm(services):
    """Nothing runs, so there is nothing to checkpoint: the soft shutdown timeout (long here)
    is not waited out, and the worker does not claim to release a job."""
    idle = services["start"]("idle", LONGTAKE_SOFT_SHUTDOWN_TIMEOUT_S="600")
    wait_for(lambda: " ready." in idle.text(), 120, "the worker to be ready")
    idle.process.send_signal(signal.SIGTERM)
    assert idle.wait(120) == 0  # far below the 600 s a soft shutdown on idle would take
    logs = idle.text()
    assert "no job is running" in logs and "released after" not in logs


STARTED = re.compile(r"worker process (\d+) started")


def test_a_worker_process_that_dies_is_replaced_and_renders(services):
    """`longtake worker` as operators run it (ops/respawn.py): the worker process is a fork of
    a parent that imported its modules; killed alone, it is replaced by a new one, which
    renders; a SIGTERM to `longtake worker` stops the worker and then the parent."""
    db, storage, start = services["db"], services["storage"], services["start"]
    worker = start("respawn", LONGTAKE_WORKER_RESPAWN="true")
    wait_for(lambda: " ready." in worker.text(), 180, "the first worker process")
    assert "modules imported in" in worker.text()
    first = int(STARTED.findall(worker.text())[0])
    assert first != worker.process.pid
    os.kill(first, signal.SIGKILL)  # the worker process alone crashes
    wait_for(
        lambda: len(STARTED.findall(worker.text())) == 2 and worker.text().count(" ready.") == 2,
        180,
        "a new worker process",
    )
    assert worker.process.poll() is None  # `longtake worker` itself lives on
    job_id = make_job(db, storage, clips=2)
    wait_for(lambda: status(db, job_id) == "succeeded", 300, "the job to succeed")
    worker.process.send_signal(signal.SIGTERM)
    assert worker.wait(120) == 0, worker.text()[-3000:]


def test_kill_9_anywhere_and_sigterm_then_the_video_equals_an_uninterrupted_one(services, tmp_path):
    db, storage, start = services["db"], services["storage"], services["start"]
    # 8 clips, a checkpoint every 2: boundaries after clips 2, 4, 6 and 8.
    job_id = make_job(db, storage, clips=8, max_attempts=10)

    def killed(worker: WorkerProcess) -> None:
        assert worker.wait(300) == -signal.SIGKILL, worker.text()[-3000:]
        # lease expiry, then the reaper (in the relay) requeues the job for the next worker
        wait_for(lambda: status(db, job_id) == "queued", 60, "the reaper to requeue the job")

    # 1. kill -9 after clip 1 came back from the engine, before any checkpoint
    killed(start("1", fault="during_clip:2"))
    assert job(db, job_id).last_checkpoint_clip is None
    # 2. kill -9 right after the second segment's upload: checkpoint 2 is recorded, segment 1
    #    sits in storage without a checkpoint
    killed(start("2", fault="segment_upload:2"))
    assert job(db, job_id).last_checkpoint_clip == 2
    # 3. kill -9 in the middle of the second checkpoint upload (its manifest never arrives)
    killed(start("3", fault="checkpoint_write:2"))
    assert job(db, job_id).last_checkpoint_clip == 4
    # 4. SIGTERM (a deploy) while it renders: it finishes the clip, checkpoints, releases
    fourth = start("4")
    wait_for(lambda: re.search(r"generated clip 4\b", fourth.text()), 300, "clip 4 in worker 4")
    fourth.process.send_signal(signal.SIGTERM)
    assert fourth.wait(60) == 0, fourth.text()[-3000:]
    released = job(db, job_id)
    assert released.status == "queued" and released.last_checkpoint_clip in (5, 6)
    assert [e for e, _ in events(db, job_id)].count("released") == 1
    # 5. kill -9 during the stitch: every clip is in a segment, the output is in storage, the
    #    job is still stitching
    killed(start("5", fault="stitch"))
    assert job(db, job_id).last_checkpoint_clip == 8
    # 6. a healthy worker: only the stitch is left; then an uninterrupted render to compare
    sixth = start("6")
    wait_for(lambda: status(db, job_id) == "succeeded", 300, "the job to succeed")
    reference = make_job(db, storage, clips=8)
    wait_for(lambda: status(db, reference) == "succeeded", 300, "the reference to succeed")

    final = job(db, job_id)
    assert (final.attempt, final.clips_done, final.output_key) == (
        6,
        8,
        f"jobs/{job_id}/output.mp4",
    )
    history = [e for e, _ in events(db, job_id)]
    assert history.count("claimed") == 6 and history.count("lease_expired") == 4
    assert output_hashes(storage, job_id, tmp_path) == output_hashes(storage, reference, tmp_path)
    assert storage.list(f"jobs/{job_id}/checkpoints/") == []

    # No clip before a recorded checkpoint was generated again: every attempt started exactly
    # at the newest checkpoint its predecessors recorded and generated each clip once, in order.
    logs = "".join(tmp_path.joinpath(f"{n}.log").read_text() for n in "123456")
    recorded = checkpoints_by_attempt(db, job_id)
    attempts = attempts_in_logs(logs, job_id)
    assert sorted(attempts) == [1, 2, 3, 4, 5, 6]
    for attempt, (first, generated) in attempts.items():
        before = [c for a, clips in recorded.items() if a < attempt for c in clips]
        assert first == max(before, default=0), (attempt, first, before)
        assert generated == list(range(first, first + len(generated))), (attempt, generated)
    assert attempts[6][1] == []  # the last attempt only stitched
    # the workers share a node: every resume after a kill -9 read the node's disk
    tiers = dict(LOCAL_OR_REMOTE.findall(logs))
    assert {clip for clip, tier in tiers.items() if tier == "local"} >= {"2", "4"}, tiers
    sixth.stop()


def test_a_duplicate_wake_up_while_a_job_runs_starts_no_second_render(services, tmp_path):
    db, storage, start = services["db"], services["storage"], services["start"]
    first, second = start("a"), start("b")
    job_id = make_job(db, storage, clips=12)
    wait_for(lambda: "generated clip 0" in first.text() + second.text(), 300, "the render to start")
    # the node rendering still answers control pings (health checks, Flower, drain)
    import socket

    names = [f"w{n}@{socket.gethostname()}" for n in "ab"]
    replies = services["relay"].dispatcher.app.control.ping(destination=names, timeout=5)
    assert sorted(name for reply in replies for name in reply) == sorted(names)
    assert status(db, job_id) == "running"
    services["relay"].dispatcher.publish(job_id)  # as a Redis redelivery would
    wait_for(lambda: status(db, job_id) == "succeeded", 300, "the job to succeed")

    logs = first.text() + second.text()
    assert f"job {job_id}: wake-up dropped" in logs
    assert [e for e, _ in events(db, job_id)].count("claimed") == 1
    assert [c for j, _, c in parse_clip_lines(logs) if j == str(job_id)] == list(range(12))

    output = tmp_path / "output.mp4"
    storage.get_file(f"jobs/{job_id}/output.mp4", output)
    p = probe(output)
    assert (p.video_streams, p.audio_streams, p.frames, p.width, p.height) == (
        1,
        1,
        142,
        64,
        64,
    )  # 12 clips; the video ends with the speech
    assert p.audio_s == pytest.approx(p.video_s, abs=0.03) and p.video_s == pytest.approx(142 / 25)
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(storage.get_bytes(manifest_key(job_id)))
    from ops import cli

    assert cli.main(["verify", str(output), str(manifest)]) == 0


def test_broker_and_database_restarts_during_a_render(services, postgres_url, tmp_path):
    """The worker's broker (a private redis-server, no persistence) restarts, and its database
    connections are cut and refused for 3 s (a proxy in front of Postgres stops): the render
    goes on in the same attempt, and the worker takes new jobs afterwards."""
    db, storage = services["db"], services["storage"]
    services["relay"].close()  # this test's relay talks to its own broker
    redis_port = free_port()
    broker_url = f"redis://127.0.0.1:{redis_port}/0"

    def start_broker() -> subprocess.Popen:
        process = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(broker_answers, 10, "redis-server")
        return process

    def broker_answers() -> bool:
        client = redis.Redis.from_url(broker_url)
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False
        finally:
            client.close()

    broker = start_broker()
    relay = Relay(db, broker_url, "")
    url = sa.make_url(postgres_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432, free_port())
    proxy.start()
    worker = services["start"](
        "r",
        LONGTAKE_BROKER_URL=broker_url,
        LONGTAKE_BROKER_KEY_PREFIX="",
        LONGTAKE_DATABASE_URL=url.set(port=proxy.port).render_as_string(hide_password=False),
        LONGTAKE_LEASE_S="20",
    )
    try:
        job_id = make_job(db, storage, clips=12)
        wait_for(lambda: "generated clip 1" in worker.text(), 300, "the render to start")

        broker.terminate()  # the broker restarts; what it held in memory is gone
        broker.wait(10)
        broker = start_broker()

        wait_for(lambda: "generated clip 4" in worker.text(), 300, "the render to go on")
        proxy.stop()  # the database goes away ...
        time.sleep(3)
        proxy.start()  # ... and comes back
        wait_for(lambda: status(db, job_id) == "succeeded", 300, "the job to succeed")
        assert job(db, job_id).attempt == 1
        log = worker.text()
        assert "Connection to broker lost" in log and "connection failed" in log  # both happened

        after = make_job(db, storage)  # a new job reaches the worker over the new broker
        wait_for(lambda: status(db, after) == "succeeded", 300, "the next job to succeed")
    finally:
        worker.stop()
        relay.close()
        proxy.stop()
        broker.terminate()
        broker.wait(10)
