"""The render lifecycle in-process, with the tiny model on the CPU: a job rendered end to end,
checkpoints and resume, cancel, shutdown, a lost lease, and failures.

Jobs are 5 clips of 12 frames at 64x64 with a checkpoint every 2 clips, so segments cover
clips [0, 2), [2, 4) and [4, 5). Every resumed render is compared frame for frame (decoded
frame hashes) with one uninterrupted render of the same job.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from datetime import timedelta

import numpy as np
import pytest
import sqlalchemy as sa

from db import job_store, leases
from db.models import OutboxMessage, utcnow
from db.params import WatermarkSpec
from dispatch.embedded import EmbeddedRunner
from storage import keys
from storage.keys import manifest_key
from storage.local import LocalStorage
from storage.s3 import S3Config, S3Storage
from tests.conftest import TEST_BUCKET, free_port
from tests.worker.lifecycle_helpers import (
    CLIPS,
    DELIVERED,
    INFER_FRAMES,
    ClipLog,
    config,
    events,
    explain_difference,
    job,
    make_job,
    output_hashes,
    probe,
    segments,
    shut_down_during_clip_2,
)
from worker.config import EngineSpec, RetryPolicy
from worker.lifecycle import ClipDone, Lifecycle, Outcome
from worker.plan import JobPlan
from worker.provenance import iter_frame_hashes, verify
from worker.tiers import TierSettings
from worker.watermark import Watermark

pytestmark = pytest.mark.slow

UNINTERRUPTED_SEGMENTS = [(0, 0, 2), (1, 2, 2), (2, 4, 1)]


@pytest.fixture
def clip_log() -> ClipLog:
    """Give it to a Lifecycle as `on_clip`; tests add hooks to act after a given clip."""
    return ClipLog()


@pytest.mark.parametrize("backend", ["postgres+s3", "sqlite+local"])
def test_a_job_renders_end_to_end(backend, request, tmp_path, clip_log, reference):
    database_name, storage_name = backend.split("+")
    database = request.getfixturevalue("pg_db" if database_name == "postgres" else "sqlite_db")
    storage = request.getfixturevalue(f"{storage_name}_storage")
    job_id = make_job(database, storage)

    lifecycle = Lifecycle(config(tmp_path), database, storage, on_clip=clip_log)
    assert lifecycle.run(job_id) is Outcome.SUCCEEDED

    row = job(database, job_id)
    assert (row.status, row.attempt, row.error, row.worker_id) == ("succeeded", 1, None, None)
    assert (row.clips_done, row.frames_done, row.last_checkpoint_clip) == (5, DELIVERED, 5)
    assert row.output_key == keys.output_key(job_id)
    assert row.output_meta["frames"] == DELIVERED
    assert segments(database, job_id) == UNINTERRUPTED_SEGMENTS
    assert clip_log.generated(job_id) == [0, 1, 2, 3, 4]
    history = events(database, job_id)
    node = config(tmp_path).tiers.node
    # the tiny state is far below the upload budget: each checkpoint goes to both tiers; the
    # end of the job needs no state, only its segments, which are in the bucket
    assert [r for e, r in history if e == "checkpoint"] == [
        f"checkpoint at clip 2 on {node}",
        "checkpoint at clip 2 in the bucket",
        f"checkpoint at clip 4 on {node}",
        "checkpoint at clip 4 in the bucket",
        "checkpoint at clip 5 in the bucket",
    ]
    assert [e for e, _ in history if e in ("claimed", "stitching", "succeeded")] == [
        "claimed",
        "stitching",
        "succeeded",
    ]

    # storage: the output and its manifest; checkpoints and (by default) segments are gone
    prefix = keys.job_prefix(job_id)
    assert sorted(k[len(prefix) :] for k in storage.list(prefix)) == [
        "inputs/audio.wav",
        "inputs/image.png",
        "output.manifest.json",
        "output.mp4",
    ]

    output = tmp_path / "output.mp4"
    storage.get_file(keys.output_key(job_id), output)
    p = probe(output)
    assert (p.video_streams, p.audio_streams, p.audio_codec) == (1, 1, "aac")
    assert (p.frames, p.width, p.height, p.fps) == (DELIVERED, 64, 64, 25)
    # the video ends with the speech (frame-accurate), not with the last clip
    assert p.video_s == pytest.approx(DELIVERED / 25) and DELIVERED < CLIPS * INFER_FRAMES
    assert p.audio_s == pytest.approx(p.video_s, abs=0.03)

    manifest_path = tmp_path / "manifest.json"
    manifest_path.write_bytes(storage.get_bytes(manifest_key(job_id)))
    assert verify(output, manifest_path).verdict == "exact"
    manifest = json.loads(manifest_path.read_text())
    assert [s["frames"] for s in manifest["segments"]] == [24, 24, 10]  # the last cut short
    assert manifest["metadata"]["job_id"] == str(job_id)
    assert manifest["frame_hashes"] == reference  # same frames on every backend

    stats = lifecycle.last_stats
    assert stats.clips == 5 and len(stats.commit_s) == 3 and stats.checkpoint_bytes > 0
    assert 0 < stats.checkpoint_overhead < 0.5


def test_cancel_stops_within_one_clip_and_retry_resumes_from_the_checkpoint(
    sqlite_db, local_storage, tmp_path, clip_log, reference
):
    job_id = make_job(sqlite_db, local_storage)

    def cancel_after_clip_2(done: ClipDone) -> None:
        if (done.job_id, done.attempt, done.clip) == (job_id, 1, 2):
            with sqlite_db.transaction() as s:
                job_store.request_cancel(s, job_id)

    clip_log.hooks.append(cancel_after_clip_2)
    assert (
        Lifecycle(config(tmp_path), sqlite_db, local_storage, on_clip=clip_log).run(job_id)
        is Outcome.CANCELED
    )
    assert clip_log.generated(job_id, 1) == [0, 1, 2]  # the flag came during clip 2: no clip 3
    row = job(sqlite_db, job_id)
    assert (row.status, row.worker_id, row.lease_expires_at) == ("canceled", None, None)
    assert row.last_checkpoint_clip == 2 and segments(sqlite_db, job_id) == [(0, 0, 2)]
    assert local_storage.exists(keys.checkpoint_manifest_key(job_id, 2))

    # Garbage past the recorded checkpoint (what a crash mid-upload leaves) is not used.
    local_storage.put_bytes(keys.segment_key(job_id, 1), b"a truncated segment")
    local_storage.put_bytes(keys.checkpoint_key(job_id, 4, "step-0.safetensors"), b"partial")

    with sqlite_db.transaction() as s:
        job_store.retry(s, job_id, attempts=3)
    assert (
        Lifecycle(config(tmp_path), sqlite_db, local_storage, on_clip=clip_log).run(job_id)
        is Outcome.SUCCEEDED
    )
    assert clip_log.generated(job_id, 2) == [2, 3, 4]  # nothing before the checkpoint again
    assert segments(sqlite_db, job_id) == UNINTERRUPTED_SEGMENTS
    assert output_hashes(local_storage, job_id, tmp_path) == reference
    assert local_storage.list(keys.checkpoints_prefix(job_id)) == []


@pytest.mark.parametrize("checkpoint_mode", ["capture", "directory"])
def test_shutdown_checkpoints_mid_interval_and_the_resumed_video_is_identical(
    checkpoint_mode, sqlite_db, local_storage, tmp_path, clip_log, reference
):
    """Also with checkpoints the stream writes itself (as a multi-GPU engine's do)."""
    job_id = make_job(sqlite_db, local_storage)
    first = Lifecycle(
        config(tmp_path, checkpoint_mode=checkpoint_mode),
        sqlite_db,
        local_storage,
        on_clip=clip_log,
    )

    assert shut_down_during_clip_2(first, job_id, clip_log) is Outcome.RELEASED
    assert clip_log.generated(job_id, 1) == [0, 1, 2]
    row = job(sqlite_db, job_id)
    assert (row.status, row.worker_id, row.last_checkpoint_clip) == ("queued", None, 3)
    assert row.clips_done == 3
    assert segments(sqlite_db, job_id) == [(0, 0, 2)]  # clip 2 waits in the checkpoint
    names = local_storage.list(keys.checkpoint_prefix(job_id, 3))
    assert any(n.endswith("open-interval.rgb") for n in names)
    assert [e for e, _ in events(sqlite_db, job_id)][-1] == "released"
    with sqlite_db.transaction() as s:  # the release queued a new wake-up
        assert s.scalar(
            sa.select(sa.func.count()).where(
                OutboxMessage.job_id == job_id, OutboxMessage.reason == "released"
            )
        )

    second = Lifecycle(
        config(tmp_path, checkpoint_mode=checkpoint_mode),
        sqlite_db,
        local_storage,
        on_clip=clip_log,
    )
    assert second.run(job_id) is Outcome.SUCCEEDED
    assert clip_log.generated(job_id, 2) == [3, 4]
    assert segments(sqlite_db, job_id) == UNINTERRUPTED_SEGMENTS
    assert output_hashes(local_storage, job_id, tmp_path) == reference


def test_a_new_worker_loads_its_model_while_the_inputs_and_checkpoint_download(
    sqlite_db, local_storage, tmp_path, clip_log, reference
):
    """After a crash the next worker starts cold: the model load (minutes for the 14B weights)
    runs beside the downloads of the job's inputs and its checkpoint, not after them."""
    from worker.engine import build_engine

    job_id = make_job(sqlite_db, local_storage)
    first = Lifecycle(config(tmp_path), sqlite_db, local_storage, on_clip=clip_log)

    assert shut_down_during_clip_2(first, job_id, clip_log) is Outcome.RELEASED
    assert job(sqlite_db, job_id).last_checkpoint_clip == 3

    loading, downloaded = threading.Event(), threading.Event()
    load_seen_by_downloads: list[bool] = []

    class Watched(LocalStorage):
        def get_file(self, key, path):
            load_seen_by_downloads.append(loading.wait(10))
            super().get_file(key, path)
            if key == keys.checkpoint_manifest_key(job_id, 3):
                downloaded.set()

    def cold_engine(spec):
        loading.set()
        # still loading when the checkpoint has arrived: the two ran at the same time
        assert downloaded.wait(30), "the checkpoint was not downloaded while the model loaded"
        return build_engine(spec)

    second = Lifecycle(  # on another node: the first's local checkpoint is out of reach
        config(tmp_path, tiers=TierSettings(node="node-b")),
        sqlite_db,
        Watched(local_storage.root),
        engines=cold_engine,
        on_clip=clip_log,
    )
    assert second.run(job_id) is Outcome.SUCCEEDED
    assert load_seen_by_downloads and all(load_seen_by_downloads)
    assert downloaded.is_set()
    assert clip_log.generated(job_id, 2) == [3, 4]
    assert output_hashes(local_storage, job_id, tmp_path) == reference


def test_a_lost_lease_stops_the_render_and_writes_nothing_more(
    sqlite_db, local_storage, tmp_path, clip_log
):
    job_id = make_job(sqlite_db, local_storage)

    def taken_over_after_clip_1(done: ClipDone) -> None:
        if (done.job_id, done.attempt, done.clip) == (job_id, 1, 1):
            # This worker went silent too long: its lease expired and another worker took the
            # job (attempt 2).
            later = utcnow() + timedelta(seconds=60)
            with sqlite_db.transaction() as s:
                assert leases.claim(s, job_id, "another-worker", 600, now=later).attempt == 2

    clip_log.hooks.append(taken_over_after_clip_1)
    lifecycle = Lifecycle(
        config(tmp_path, progress_interval_s=0.0), sqlite_db, local_storage, on_clip=clip_log
    )
    assert lifecycle.run(job_id) is Outcome.LEASE_LOST
    assert clip_log.generated(job_id, 1) == [0, 1]  # stopped at the first write after clip 1
    row = job(sqlite_db, job_id)
    assert (row.status, row.worker_id, row.attempt) == ("running", "another-worker", 2)
    assert row.last_checkpoint_clip is None and row.error is None
    assert segments(sqlite_db, job_id) == []


def test_an_undecodable_input_fails_the_job_at_once_telling_the_owner_what_to_do(
    sqlite_db, local_storage, tmp_path
):
    job_id = make_job(sqlite_db, local_storage, image=b"\x89PNG\r\n\x1a\n but not really")
    lifecycle = Lifecycle(config(tmp_path), sqlite_db, local_storage)
    assert lifecycle.run(job_id) is Outcome.FAILED
    row = job(sqlite_db, job_id)
    assert (row.status, row.attempt, row.worker_id) == ("failed", 1, None)
    assert row.error.startswith("the job's inputs cannot be rendered (image is not decodable")
    assert "submit it again" in row.error and row.error_kind == "input"
    # the traceback is the operator's, not the owner's
    assert "traceback" not in row.error and "pipeline/inputs.py" in row.error_detail
    assert row.error_detail.startswith("InputError: image is not decodable")
    assert "retry_scheduled" not in [e for e, _ in events(sqlite_db, job_id)]
    assert lifecycle.run(job_id) is Outcome.DROPPED  # a late wake-up of a failed job


def test_watermark_follows_the_job_and_the_operator(sqlite_db, local_storage, tmp_path, reference):
    marked = make_job(
        sqlite_db, local_storage, watermark={"text": "Synthetic", "corner": "top-left"}
    )
    Lifecycle(config(tmp_path), sqlite_db, local_storage).run(marked)
    unmarked = make_job(sqlite_db, local_storage)
    kept = Lifecycle(
        config(tmp_path, watermark_allowed=False, keep_segments=True), sqlite_db, local_storage
    )
    kept.run(unmarked)

    def frames(job_id) -> np.ndarray:
        import av

        path = tmp_path / f"{job_id}.mp4"
        local_storage.get_file(keys.output_key(job_id), path)
        with av.open(str(path)) as c:
            return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])

    def meta(job_id) -> dict:
        return json.loads(local_storage.get_bytes(manifest_key(job_id)))["metadata"]

    assert meta(marked)["watermark"] == "Synthetic" and meta(unmarked)["watermark"] == ""
    default_box = Watermark(WatermarkSpec(), 64, 64).box
    custom_box = Watermark(WatermarkSpec(text="Synthetic", corner="top-left"), 64, 64).box

    def difference(a: np.ndarray, b: np.ndarray, box) -> float:
        x0, y0, x1, y1 = box
        return float(np.abs(a[:, y0:y1, x0:x1].astype(int) - b[:, y0:y1, x0:x1]).mean())

    plain = frames(unmarked)
    # The default mark (bottom right) is gone where the operator turned marks off ...
    assert reference != list(iter_frame_hashes(tmp_path / f"{unmarked}.mp4"))
    assert difference(frames(marked), plain, custom_box) > 20
    assert difference(frames(marked), plain, default_box) < 8  # only coding noise there
    # ... and segments stay in storage when configured so.
    assert len(local_storage.list(keys.segments_prefix(unmarked))) == 3


def test_a_watermark_asked_for_through_the_api_is_rendered(
    api_client, api_services, tmp_path, reference
):
    """The documented `watermark` parameter, sent as a client sends it, reaches the plan the
    worker builds and the frames it renders."""
    from tests import media

    audio = media.wav(CLIPS * INFER_FRAMES / 25 - 0.1)
    mark = {"text": "Synthetic", "corner": "top-left"}
    r = api_client.post(
        "/v1/jobs",
        files={
            "image": ("portrait.png", media.png(128, 128), "image/png"),
            "audio": ("speech.wav", audio, "audio/wav"),
        },
        data={
            "prompt": "a person talking",
            "size": "64*64",
            "infer_frames": str(INFER_FRAMES),
            "seed": "7",
            "checkpoint_every": "2",
            "watermark": json.dumps(mark),
        },
    )
    assert r.status_code == 201, r.text
    job_id = uuid.UUID(r.json()["id"])
    database, storage = api_services.database, api_services.storage
    plan = JobPlan.from_job(
        job(database, job_id), default_watermark=WatermarkSpec(), watermark_allowed=True
    )
    assert (plan.watermark.text, plan.watermark.corner) == ("Synthetic", "top-left")

    assert Lifecycle(config(tmp_path), database, storage).run(job_id) is Outcome.SUCCEEDED
    meta = json.loads(storage.get_bytes(manifest_key(job_id)))["metadata"]
    assert meta["watermark"] == "Synthetic"
    rendered = output_hashes(storage, job_id, tmp_path)
    assert len(rendered) == len(reference) and rendered != reference  # the mark is in them


def test_an_fp8_job_is_rendered_and_resumed_only_by_a_worker_that_serves_fp8(
    sqlite_db, local_storage, tmp_path, clip_log
):
    job_id = make_job(sqlite_db, local_storage, precision="fp8")
    plain = Lifecycle(config(tmp_path), sqlite_db, local_storage, on_clip=clip_log)
    assert plain.run(job_id) is Outcome.DROPPED  # serves bf16 only: never claims it
    assert job(sqlite_db, job_id).status == "queued"

    both = config(tmp_path, precisions=("bf16", "fp8"))
    first = Lifecycle(both, sqlite_db, local_storage, on_clip=clip_log)
    assert shut_down_during_clip_2(first, job_id, clip_log) is Outcome.RELEASED
    manifest = json.loads(local_storage.get_bytes(keys.checkpoint_manifest_key(job_id, 3)))
    assert manifest["meta"]["precision"] == "fp8"  # the checkpoint is an fp8 stream's
    second = Lifecycle(both, sqlite_db, local_storage, on_clip=clip_log)
    assert second.run(job_id) is Outcome.SUCCEEDED
    meta = json.loads(local_storage.get_bytes(manifest_key(job_id)))["metadata"]
    assert meta["precision"] == "fp8"
    assert clip_log.generated(job_id) == [0, 1, 2, 3, 4]


def test_a_worker_paused_past_its_lease_uploads_nothing(
    sqlite_db, local_storage, tmp_path, clip_log
):
    """As if SIGSTOPped: its lease expires and another attempt takes the job, while this
    worker's heartbeat has not noticed yet. At its next boundary it must upload neither the
    segment nor the checkpoint into the job that is someone else's now."""
    job_id = make_job(sqlite_db, local_storage)

    def paused_during_clip_1(done: ClipDone) -> None:
        if (done.job_id, done.attempt, done.clip) == (job_id, 1, 1):
            later = utcnow() + timedelta(seconds=60)
            with sqlite_db.transaction() as s:
                assert leases.claim(s, job_id, "another-worker", 600, now=later).attempt == 2

    clip_log.hooks.append(paused_during_clip_1)
    quiet = config(tmp_path, progress_interval_s=3600, heartbeat_s=25)  # no write of its own
    lifecycle = Lifecycle(quiet, sqlite_db, local_storage, on_clip=clip_log)
    assert lifecycle.run(job_id) is Outcome.LEASE_LOST
    assert local_storage.list(keys.segments_prefix(job_id)) == []
    assert local_storage.list(keys.checkpoints_prefix(job_id)) == []
    assert job(sqlite_db, job_id).last_checkpoint_clip is None


def test_a_storage_outage_is_ridden_out_with_backoff(sqlite_db, tmp_path, clip_log, reference):
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = S3Config(
        bucket=TEST_BUCKET,
        prefix="outage/",
        endpoint_url=f"http://127.0.0.1:{port}",
        region="us-east-1",
        path_style=True,
        max_attempts=1,  # the worker's own backoff rides the outage out
    )
    storage = S3Storage(s3)
    storage.client.create_bucket(Bucket=TEST_BUCKET)
    job_id = make_job(sqlite_db, storage)
    servers = [server]

    def restart() -> None:
        servers.append(ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False))
        servers[-1].start()

    def outage_after_clip_1(done: ClipDone) -> None:
        if (done.job_id, done.attempt, done.clip) == (job_id, 1, 1):
            server.stop()  # the segment upload at the boundary after clip 1 meets it
            threading.Timer(1.5, restart).start()

    clip_log.hooks.append(outage_after_clip_1)
    patient = RetryPolicy(attempts=8, base_delay_s=0.2, max_delay_s=1.0)
    lifecycle = Lifecycle(
        config(tmp_path, storage_retry=patient), sqlite_db, storage, on_clip=clip_log
    )
    try:
        assert lifecycle.run(job_id) is Outcome.SUCCEEDED
        assert len(servers) == 2  # the outage did happen
        assert job(sqlite_db, job_id).attempt == 1
        assert output_hashes(storage, job_id, tmp_path) == reference
    finally:
        servers[-1].stop()


def test_a_job_that_keeps_failing_stops_at_max_attempts(sqlite_db, tmp_path):
    """A retryable failure every time (its storage is gone for good): the job is requeued
    until its attempts are used up, then fails with the error; it never loops."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = S3Config(
        bucket=TEST_BUCKET,
        endpoint_url=f"http://127.0.0.1:{port}",
        region="us-east-1",
        path_style=True,
        max_attempts=1,
    )
    storage = S3Storage(s3)
    storage.client.create_bucket(Bucket=TEST_BUCKET)
    job_id = make_job(sqlite_db, storage, max_attempts=3)
    server.stop()

    lifecycle = Lifecycle(config(tmp_path), sqlite_db, storage)
    runner = EmbeddedRunner(sqlite_db, lifecycle, poll_s=0.05)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while job(sqlite_db, job_id).status != "failed" and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # time for a loop to show, if there were one
    finally:
        runner.stop()
    row = job(sqlite_db, job_id)
    assert (row.status, row.attempt) == ("failed", 3)
    assert row.error_kind == "infrastructure" and "storage problem" in row.error
    assert row.error_detail.startswith("StorageError: could not download")
    assert "127.0.0.1" not in row.error  # the server's addresses stay with the operator
    history = [e for e, _ in events(sqlite_db, job_id)]
    assert history.count("claimed") == 3 and history.count("retry_scheduled") == 2
    assert history[-1] == "failed"


def test_a_wake_up_runs_the_best_queued_job_first(sqlite_db, local_storage, tmp_path, clip_log):
    """Wake-ups say that work exists: the first one to arrive runs the job with the highest
    priority, and the other job's wake-up runs the other job."""
    low = make_job(sqlite_db, local_storage, clips=2)
    with sqlite_db.transaction() as s:
        high = job_store.create_job(
            s,
            job_store.NewJob(
                id=uuid.uuid4(),
                tenant="default",
                params=job(sqlite_db, low).job_params,
                image_key=job(sqlite_db, low).image_key,
                audio_key=job(sqlite_db, low).audio_key,
                clips_total=2,
                max_attempts=3,
                priority=10,
            ),
        ).id
    lifecycle = Lifecycle(config(tmp_path), sqlite_db, local_storage, on_clip=clip_log)
    assert lifecycle.run(low) is Outcome.SUCCEEDED  # low's wake-up ...
    assert (job(sqlite_db, high).status, job(sqlite_db, low).status) == ("succeeded", "queued")
    assert lifecycle.run(high) is Outcome.SUCCEEDED  # ... and high's
    assert job(sqlite_db, low).status == "succeeded"
    assert [c.job_id for c in clip_log.clips] == [high] * 2 + [low] * 2
    assert lifecycle.run(low) is Outcome.DROPPED  # a late duplicate


TPP_SPEC = EngineSpec(
    preset="tiny", device="cpu", ranks=2, torch_threads=1, factory="worker.engine:multi_gpu_engine"
)


def test_the_multi_gpu_engine_plugs_in(sqlite_db, local_storage, tmp_path, clip_log, reference_run):
    """The Timestep-forcing Pipeline Parallelism engine as the worker's engine (two CPU ranks
    here): its ranks write the checkpoints, a shutdown mid-interval resumes, and the video is
    the single-device generator's, frame for frame."""
    from worker.engine import EngineCache

    engines = EngineCache()
    job_id = make_job(sqlite_db, local_storage)
    try:
        first = Lifecycle(
            config(tmp_path, engine=TPP_SPEC),
            sqlite_db,
            local_storage,
            engines=engines.get,
            on_clip=clip_log,
        )

        assert shut_down_during_clip_2(first, job_id, clip_log) is Outcome.RELEASED
        assert job(sqlite_db, job_id).last_checkpoint_clip == 3
        second = Lifecycle(
            config(tmp_path, engine=TPP_SPEC),
            sqlite_db,
            local_storage,
            engines=engines.get,
            on_clip=clip_log,
        )
        assert second.run(job_id) is Outcome.SUCCEEDED
        cut = engines.get(TPP_SPEC).partition(4)
    finally:
        engines.close()
    assert clip_log.generated(job_id) == [0, 1, 2, 3, 4]
    got = output_hashes(local_storage, job_id, tmp_path)
    assert got == reference_run.frame_hashes, explain_difference(
        clip_log, job_id, reference_run, cut
    )


def test_shutdowns_at_random_points_under_load_resume_exactly(
    sqlite_db, local_storage, tmp_path, clip_log, reference_run
):
    """Deploy after deploy, each SIGTERM at a random moment inside a clip, on a machine kept
    busy, with a fresh multi-GPU engine for every attempt (its layer cut is chosen from costs
    measured at its start, so load changes it): the video is the uninterrupted one."""
    from worker.engine import EngineCache

    rng = random.Random(20261202)
    busy = threading.Event()

    def burn() -> None:
        while not busy.is_set():
            sum(range(20_000))

    load = [threading.Thread(target=burn, daemon=True) for _ in range(2)]
    for t in load:
        t.start()
    job_id = make_job(sqlite_db, local_storage)
    cuts = []
    attempts = 0
    try:
        while attempts < 20:
            attempts += 1
            engines = EngineCache()  # a new engine: its cut is measured again, under load
            lifecycle = Lifecycle(
                config(tmp_path, engine=TPP_SPEC),
                sqlite_db,
                local_storage,
                engines=engines.get,
                on_clip=clip_log,
            )
            generated = len(clip_log.generated(job_id))

            def stop_soon(done: ClipDone, lifecycle=lifecycle, generated=generated) -> None:
                # after this attempt's first clip, at a random moment of a later clip
                if done.job_id == job_id and len(clip_log.generated(job_id)) == generated + 1:
                    threading.Timer(rng.uniform(0.0, 1.5), lifecycle.request_shutdown).start()

            clip_log.hooks.append(stop_soon)
            try:
                outcome = lifecycle.run(job_id)
                cuts.append(engines.get(TPP_SPEC).partition(4))
            finally:
                clip_log.hooks.remove(stop_soon)
                engines.close()
            if outcome is Outcome.SUCCEEDED:
                break
            assert outcome is Outcome.RELEASED
    finally:
        busy.set()
    assert attempts > 2, "every attempt but the last must have been stopped"
    got = output_hashes(local_storage, job_id, tmp_path)
    assert got == reference_run.frame_hashes, explain_difference(
        clip_log, job_id, reference_run, cuts
    )
