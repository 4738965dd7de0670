"""The outbox relay: publishes committed jobs exactly once to Redis, survives a dead broker,
runs safely in several processes, and drives the reaper."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from db import job_store, leases, outbox, upkeep
from db.states import JobStatus
from dispatch.celery_app import CeleryConfig, make_celery_app
from dispatch.relay import CeleryDispatcher, OutboxRelay
from ops.settings import Settings
from tests.conftest import REDIS_URL, count_rows, free_port, queued_messages
from tests.factories import job_params
from tests.worker.stack import wait_for


def test_publishes_exactly_the_committed_jobs(pg_db, create_job, celery_app, redis_prefix):
    committed = [create_job(pg_db).id for _ in range(3)]
    # a submission still in flight: its job and outbox row are not committed yet
    open_tx = pg_db.sessions()
    open_tx.begin()
    in_flight = job_store.create_job(
        open_tx,
        job_store.NewJob(
            uuid.uuid4(), "default", job_params(), "a", "b", clips_total=1, max_attempts=1
        ),
    )
    open_tx.flush()

    relay = OutboxRelay(pg_db, CeleryDispatcher(celery_app))
    assert relay.publish_pending() == (3, False)
    open_tx.rollback()  # the submission failed
    open_tx.close()
    assert relay.publish_pending() == (0, False)

    messages = queued_messages(REDIS_URL, redis_prefix)
    assert messages == [{"task": "longtake.render", "args": [str(j)]} for j in committed]
    assert str(in_flight.id) not in {m["args"][0] for m in messages}
    with pg_db.transaction() as s:
        assert outbox.count_unsent(s) == 0


def test_broker_down_at_submit_time(api_client, api_services, redis_server_factory, redis_prefix):
    """The job is accepted and stays queued while the broker is down; once the broker is
    back, the wake-up is published, once."""
    from tests import media

    port = free_port()
    app = make_celery_app(
        CeleryConfig(broker_url=f"redis://127.0.0.1:{port}/0", key_prefix=redis_prefix,
                     connect_timeout_s=1),
        task_modules=(),
    )  # fmt: skip
    relay = OutboxRelay(api_services.database, CeleryDispatcher(app))

    r = api_client.post(
        "/v1/jobs",
        files={"image": ("p.png", media.png()), "audio": ("s.wav", media.wav(1.0))},
        data={"prompt": "p"},
    )
    assert r.status_code == 201
    job_id = r.json()["id"]

    published, failed = relay.publish_pending()
    assert (published, failed) == (0, True)
    with api_services.database.transaction() as s:
        (message,) = outbox.lock_unsent(s)
        assert message.publish_attempts == 1 and "OperationalError" in message.last_error
        assert job_store.get_job(s, uuid.UUID(job_id)).status == "queued"

    url = redis_server_factory(port)  # the broker comes back
    assert relay.publish_pending() == (1, False)
    assert relay.publish_pending() == (0, False)
    assert queued_messages(url, redis_prefix) == [{"task": "longtake.render", "args": [job_id]}]
    with api_services.database.transaction() as s:
        assert outbox.count_unsent(s) == 0
    app.close()


def test_several_relays_publish_each_message_once(pg_db, create_job, celery_config, redis_prefix):
    jobs = {str(create_job(pg_db).id) for _ in range(40)}
    barrier = threading.Barrier(3)

    def relay_process():
        app = make_celery_app(celery_config, task_modules=())
        relay = OutboxRelay(pg_db, CeleryDispatcher(app), batch_size=5)
        barrier.wait()
        try:
            return relay.publish_pending()[0]
        finally:
            app.close()

    results = []
    threads = [threading.Thread(target=lambda: results.append(relay_process())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(results) == 40
    published = [m["args"][0] for m in queued_messages(REDIS_URL, redis_prefix)]
    assert sorted(published) == sorted(jobs)


class Recorder:
    def __init__(self):
        self.published: list[uuid.UUID] = []

    def publish(self, job_id, topic="render"):
        self.published.append(job_id)

    def ping(self):
        pass


def test_a_pass_reaps_expired_leases_and_publishes_their_wake_up(db, create_job):
    job = create_job(db)
    with db.transaction() as s:
        leases.claim(s, job.id, "w1", lease_s=0.01, now=datetime.now(UTC) - timedelta(seconds=5))
    recorder = Recorder()
    result = OutboxRelay(db, recorder).run_once()
    assert result.reaped == [upkeep.ReapedJob(job.id, JobStatus.QUEUED)]
    assert recorder.published == [job.id, job.id]  # "created", then "lease_expired"


def test_a_worker_frozen_inside_a_transaction_keeps_its_job_from_nobody(
    pg_db, postgres_url, create_job
):
    """A worker frozen (SIGSTOP, a paused VM, a swap storm) between a write to its job and the
    commit holds the row's lock, and the reaper skips locked rows: the job would wait for the
    frozen process forever. The server ends a session idle inside a transaction after the
    configured time, which releases the lock; the job is reaped and the frozen write is lost."""
    job = create_job(pg_db)
    settings = Settings(database_url=postgres_url, database_idle_transaction_timeout_s=1)
    worker_db = settings.make_database()
    with worker_db.transaction() as s:
        lease = leases.claim(s, job.id, "frozen", lease_s=0.01)
    frozen = worker_db.sessions()
    try:
        frozen.begin()
        leases.update_progress(frozen, lease, clips_done=1)  # locks the row; never committed
        relay = OutboxRelay(pg_db, Recorder())
        # a guard, not a measure: the lock goes one idle-timeout after the write
        wait_for(lambda: relay.run_once().reaped, 120, "the frozen worker's job to be reaped")
        with pytest.raises(sa.exc.DBAPIError) as ended:  # the server ended that session
            frozen.commit()
        # a disconnect, as the worker's retries and the pool take it: the next transaction
        # runs on a new connection and finds the lease gone
        assert ended.value.connection_invalidated
        with worker_db.transaction() as s:
            assert not leases.heartbeat(s, lease, 60)
    finally:
        frozen.close()
        worker_db.dispose()
    with pg_db.transaction() as s:
        row = job_store.get_job(s, job.id)
    assert (row.status, row.clips_done) == (JobStatus.QUEUED.value, 0)


def test_stale_queued_jobs_get_a_new_wake_up(db, create_job):
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    stale = create_job(db, now=long_ago)
    fresh = create_job(db)
    running = create_job(db, now=long_ago)
    with db.transaction() as s:
        leases.claim(s, running.id, "w1", 3600)
    recorder = Recorder()
    relay = OutboxRelay(db, recorder, redispatch_after_s=3600)
    first = relay.run_once()
    assert first.redispatched == []  # their first wake-ups were never sent: nothing to redo
    assert first.published == 3
    second = relay.run_once()
    assert second.redispatched == [stale.id]
    assert recorder.published[-1] == stale.id and second.published == 1
    assert relay.run_once().redispatched == []  # not again until another hour passes
    assert fresh.id not in second.redispatched


def test_run_loop_stops_and_survives_failures(db, create_job):
    class Flaky(Recorder):
        calls = 0

        def publish(self, job_id, topic="render"):
            self.calls += 1
            if self.calls == 1:
                raise ConnectionError("broker restarting")
            super().publish(job_id, topic)

    job = create_job(db)
    dispatcher = Flaky()
    stop, wake = threading.Event(), threading.Event()
    relay = OutboxRelay(db, dispatcher)
    thread = threading.Thread(target=relay.run, args=(stop,), kwargs={"poll_s": 0.05, "wake": wake})
    thread.start()
    try:
        for _ in range(100):
            if dispatcher.published:
                break
            threading.Event().wait(0.05)
    finally:
        stop.set()
        wake.set()
        thread.join(5)
    assert not thread.is_alive()
    assert dispatcher.published == [job.id]
    assert count_rows(db)["outbox"] == 1


def test_a_wake_up_goes_to_the_queue_of_what_the_job_needs(
    pg_db, create_job, celery_app, redis_prefix
):
    """Only workers that serve fp8 consume `render.fp8`: an fp8 job's wake-up never reaches
    a worker that would have to drop it."""
    plain, fast = create_job(pg_db), create_job(pg_db, precision="fp8")
    assert OutboxRelay(pg_db, CeleryDispatcher(celery_app)).publish_pending() == (2, False)
    assert queued_messages(REDIS_URL, redis_prefix) == [
        {"task": "longtake.render", "args": [str(plain.id)]}
    ]
    assert queued_messages(REDIS_URL, redis_prefix, "render.fp8") == [
        {"task": "longtake.render", "args": [str(fast.id)]}
    ]
