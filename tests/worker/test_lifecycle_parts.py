"""The lifecycle's small parts: failure classification, backoff, fault injection, job plans,
the heartbeat."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy.exc as sa_exc
from pydantic import ValidationError

from db import leases, upkeep
from db.params import WatermarkParams, WatermarkSpec
from storage.base import ObjectNotFound, StorageError
from tests.factories import job_params
from worker.backoff import with_retries
from worker.config import RetryPolicy, WorkerConfig
from worker.errors import JobInputError, describe, is_retryable
from worker.faults import FaultPlan
from worker.lease import Heartbeat, LeasedJob
from worker.plan import JobPlan
from worker.segments import EncoderError


def caused(outer: BaseException, cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as c:
            raise outer from c
    except BaseException as e:
        return e


@pytest.mark.parametrize(
    "exc, retryable",
    [
        (StorageError("could not upload: read timeout"), True),
        (ConnectionResetError("peer reset"), True),
        (TimeoutError("timed out"), True),
        (sa_exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")), True),
        (OSError(28, "No space left on device"), True),
        (caused(EncoderError("encoding segment 3 failed"), OSError(28, "disk full")), True),
        (ObjectNotFound("jobs/x/inputs/image.png"), False),
        (JobInputError("input jobs/x/inputs/audio.wav is missing from storage"), False),
        (ValueError("image is not decodable"), False),
        (RuntimeError("CUDA out of memory"), False),
        (FileNotFoundError("no such file"), False),
        (KeyError("seed"), False),
    ],
)
def test_failures_are_classified(exc, retryable):
    assert is_retryable(exc) is retryable


def raised(exc: BaseException, where=None) -> BaseException:
    try:
        if where is not None:
            where()
        raise exc
    except BaseException as e:
        return e


def test_an_error_is_detailed_for_operators_with_its_innermost_frames():
    def model_step():
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    failure = describe(raised(RuntimeError(), model_step))
    lines = failure.detail.splitlines()
    assert lines[0] == "RuntimeError: CUDA out of memory. Tried to allocate 20.00 GiB"
    assert lines[1] == "traceback (innermost last):"
    assert lines[-1].endswith("in model_step") and "test_lifecycle_parts.py" in lines[-1]
    assert len(describe(RuntimeError("x" * 10_000)).detail) == 4000


@pytest.mark.parametrize(
    ("exc", "kind", "words"),
    [
        (JobInputError("input jobs/x/inputs/audio.wav is missing from storage"), "input",
         "submit it again"),
        (ObjectNotFound("jobs/x/inputs/image.png"), "input", "submit it again"),
        (StorageError("503 Slow Down"), "infrastructure", "resumes from the last checkpoint"),
        (RuntimeError("CUDA out of memory. Tried to allocate 20 GiB"), "render", "smaller size"),
        (ValueError("shapes do not match"), "render", "the operator has the details"),
    ],
)  # fmt: skip
def test_the_owner_is_told_what_went_wrong_and_what_to_do(exc, kind, words):
    failure = describe(raised(exc))
    assert failure.kind == kind and words in failure.message
    assert failure.can_retry is (kind != "input")
    # no traceback and no server paths reach the owner; the operator gets both
    assert "traceback" not in failure.message and ".py" not in failure.message
    assert "traceback (innermost last)" in failure.detail and ".py" in failure.detail


def test_retries_back_off_and_give_up():
    policy = RetryPolicy(attempts=4, base_delay_s=0.01, max_delay_s=0.02)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [0.01, 0.02, 0.02, 0.02]

    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise StorageError("503 Slow Down")
        return "stored"

    assert with_retries(flaky, "upload", policy) == "stored" and len(calls) == 3
    assert calls[1] - calls[0] >= 0.01

    def failing(exc: Exception):
        def operation():
            calls.append(1)
            raise exc

        return operation

    calls.clear()
    with pytest.raises(StorageError):
        with_retries(failing(StorageError("down")), "upload", policy)
    assert len(calls) == 4  # attempts counts the first try

    calls.clear()
    with pytest.raises(ObjectNotFound):  # not retryable: raised at once
        with_retries(failing(ObjectNotFound("jobs/x/inputs/image.png")), "download", policy)
    assert len(calls) == 1

    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    slow = RetryPolicy(attempts=5, base_delay_s=10, max_delay_s=10)
    with pytest.raises(StorageError):  # a stopped attempt does not wait out its backoff
        with_retries(failing(StorageError("down")), "upload", slow, stop=stop)
    assert time.monotonic() - started < 1


def test_fault_plans_are_inert_unless_set():
    assert not FaultPlan.parse(None).armed and not FaultPlan.parse("").armed
    plan = FaultPlan.parse("segment_upload:3")
    assert (plan.point, plan.occurrence) == ("segment_upload", 3)
    assert FaultPlan.parse("stitch").occurrence == 1
    FaultPlan.parse(None).hit("stitch")  # nothing happens
    for bad in ("segment-upload", "stitch:0", "stitch:two"):
        with pytest.raises(ValueError):
            FaultPlan.parse(bad)


def test_a_fault_kills_the_process_at_the_planned_occurrence(tmp_path):
    script = textwrap.dedent(
        """
        from worker.faults import FaultPlan
        plan = FaultPlan.parse("checkpoint_write:2")
        plan.hit("stitch")
        plan.hit("checkpoint_write")
        print("survived the first", flush=True)
        plan.hit("checkpoint_write")
        print("survived the second", flush=True)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9
    assert "survived the first" in proc.stdout and "survived the second" not in proc.stdout


def test_job_plan_and_watermark_settings(create_job, sqlite_db):
    job = create_job(
        sqlite_db,
        params=job_params(
            seed=11,
            checkpoint_every=4,
            audio_duration_s=19.0,
            watermark=WatermarkParams(text="Made by ACME (synthetic)", corner="top-left"),
        ),
        clips_total=10,
    )
    plan = JobPlan.from_job(job, default_watermark=WatermarkSpec(), watermark_allowed=True)
    # ten clips of 48 frames are rendered; the video ends with the 19 s of speech
    assert (plan.frames_total, plan.duration_s) == (475, 19.0)
    assert [plan.delivered(c) for c in (0, 8, 9)] == [48, 48, 43]
    assert [c for c in range(1, 11) if plan.is_boundary(c)] == [4, 8, 10]
    assert (plan.watermark.text, plan.watermark.corner) == ("Made by ACME (synthetic)", "top-left")
    assert plan.watermark.opacity == WatermarkSpec().opacity  # the operator's default stays
    request = plan.request(b"image", Path("audio.wav"))
    assert (request.num_clips, request.seed, request.audio) == (10, 11, Path("audio.wav"))

    off = JobPlan.from_job(job, default_watermark=WatermarkSpec(), watermark_allowed=False)
    assert not off.watermark.enabled  # the operator's switch wins over the job


def test_a_job_changes_the_marks_look_but_cannot_remove_it():
    for bad in ({"enabled": False}, {"colour": "red"}, {"corner": "middle"}, {"text": "  "}):
        with pytest.raises(ValidationError):
            WatermarkParams.model_validate(bad)
    # each field is checked alone and in the merged whole
    with pytest.raises(ValidationError):
        WatermarkParams(opacity=1.5)
    mark = WatermarkParams(scale=0.1).over(WatermarkSpec(text="Synthetic"))
    assert (mark.text, mark.scale, mark.enabled) == ("Synthetic", 0.1, True)


def test_heartbeats_extend_the_lease_until_it_is_lost(pg_db, create_job):
    job = create_job(pg_db)
    with pg_db.transaction() as s:
        lease = leases.claim(s, job.id, "w1", 1.0)
    leased = LeasedJob(pg_db, lease, lease_s=1.0, retry=RetryPolicy())
    with Heartbeat(leased, interval_s=0.1):
        time.sleep(1.5)  # longer than the lease: only the heartbeats keep it
        with pg_db.transaction() as s:
            assert upkeep.reap_expired(s) == []
            leases.release(s, lease)  # as if another party took it away
        assert leased.lost.wait(2)
    assert not leased.heartbeat()
    # once lost, every write is refused without a round trip to the database
    with pytest.raises(leases.LeaseLost):
        leased.progress(1)
    with pytest.raises(leases.LeaseLost):
        leased.record_interval(None, 1, duration_s=0.0, bytes=0)


def test_worker_config_checks_its_heartbeat():
    assert WorkerConfig(lease_s=120).heartbeat_interval_s == 30
    with pytest.raises(ValueError, match="heartbeat_s"):
        WorkerConfig(lease_s=10, heartbeat_s=10)


def test_a_wake_up_that_cannot_be_claimed_is_not_dropped(tmp_path, local_storage):
    """With the database unreachable, the outcome says so (the Celery task then retries the
    wake-up later) instead of claiming the job was a duplicate."""
    from db.database import Database
    from tests.conftest import free_port
    from worker.lifecycle import Lifecycle, Outcome

    nowhere = Database(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    quick = RetryPolicy(attempts=2, base_delay_s=0.01, max_delay_s=0.01)
    config = WorkerConfig(scratch_dir=tmp_path, database_retry=quick)
    assert Lifecycle(config, nowhere, local_storage).run(uuid.uuid4()) is Outcome.UNCLAIMED
    nowhere.dispose()


def test_a_job_renders_at_the_engines_thread_count_in_the_thread_that_renders(
    sqlite_db, local_storage, tmp_path
):
    """CPU float results depend on torch's thread count, which is per thread: the model loads
    in a thread of its own, and other code may have changed the rendering thread's count."""
    import torch

    from tests.worker.lifecycle_helpers import make_job
    from worker.config import EngineSpec
    from worker.engine import EngineCache
    from worker.lifecycle import Lifecycle, Outcome

    spec = EngineSpec(preset="tiny", device="cpu", torch_threads=1)
    config = WorkerConfig(scratch_dir=tmp_path, engine=spec)
    seen: list[int] = []
    engines, previous = EngineCache(), torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        job_id = make_job(sqlite_db, local_storage, clips=1)
        lifecycle = Lifecycle(
            config, sqlite_db, local_storage, engines=engines.get,
            on_clip=lambda done: seen.append(torch.get_num_threads()),
        )  # fmt: skip
        assert lifecycle.run(job_id) is Outcome.SUCCEEDED
    finally:
        engines.close()
        torch.set_num_threads(previous)
    assert seen == [1]


def test_an_attempt_clears_what_earlier_attempts_left_and_never_a_later_ones(tmp_path):
    """A stale attempt (paused past its lease) that wakes up on the node of its successor
    must not remove the successor's files; the successor may remove the stale one's."""
    from worker.lifecycle import _remove_older_attempts

    job = tmp_path / "job"
    for n in (1, 2, 3):
        (job / f"attempt-{n}").mkdir(parents=True)
        (job / f"attempt-{n}" / "source.wav").write_bytes(b"x")
    _remove_older_attempts(job / "attempt-2")
    assert sorted(p.name for p in job.iterdir()) == ["attempt-2", "attempt-3"]


def test_a_workers_compiled_kernels_are_kept_under_its_scratch_directory(tmp_path):
    """torch.compile's caches go to the node's disk (<scratch>/compile-cache by default), where
    a restarted worker finds them, instead of wherever the process's /tmp happens to be."""
    script = textwrap.dedent(
        """
        import os, sys, torch
        from ops.settings import Settings
        from worker.engine import build_engine
        spec = Settings().worker_config().engine
        build_engine(spec)
        torch.compile(lambda x: torch.sin(x) * 2 + 1)(torch.randn(8))
        print(spec.compile_cache_dir, os.environ["TORCHINDUCTOR_CACHE_DIR"])
        """
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")
    }
    env.update(LONGTAKE_SCRATCH_DIR=str(tmp_path / "scratch"), LONGTAKE_MODEL_PRESET="tiny")
    env.update(LONGTAKE_MODEL_DEVICE="cpu")
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    root = tmp_path / "scratch" / "compile-cache"
    assert out.stdout.split() == [str(root), str(root / "inductor")]
    assert any(p.is_file() for p in (root / "inductor").rglob("*"))  # the kernel was kept
