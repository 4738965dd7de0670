"""The Celery application: settings for long GPU tasks, task registration, and a real worker
receiving the wake-up the relay publishes."""

from __future__ import annotations

import textwrap
import time

import pytest

from dispatch.celery_app import (
    RENDER_QUEUE,
    RENDER_TASK,
    CeleryConfig,
    has_render_task,
    make_celery_app,
)
from dispatch.relay import CeleryDispatcher, OutboxRelay
from tests.conftest import free_port


def test_settings_for_long_gpu_tasks(celery_app, celery_config):
    conf = celery_app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.worker_concurrency == 1
    assert conf.task_routes == {RENDER_TASK: {"queue": RENDER_QUEUE}}
    assert conf.worker_cancel_long_running_tasks_on_connection_loss
    assert conf.worker_send_task_events and conf.task_send_sent_event
    assert conf.worker_soft_shutdown_timeout == celery_config.soft_shutdown_timeout_s
    assert not conf.worker_enable_soft_shutdown_on_idle
    options = conf.broker_transport_options
    assert options["visibility_timeout"] == celery_config.visibility_timeout_s
    assert options["global_keyprefix"] == celery_config.key_prefix
    assert conf.accept_content == ["json"]


def test_task_modules_register_on_the_app(celery_config, tmp_path, monkeypatch):
    (tmp_path / "render_tasks_for_test.py").write_text(
        textwrap.dedent(
            f"""
            def register(app):
                @app.task(name={RENDER_TASK!r}, shared=False)
                def render(job_id):
                    return job_id
            """
        )
    )
    (tmp_path / "broken_tasks_for_test.py").write_text("import a_module_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    assert not has_render_task(make_celery_app(celery_config, task_modules=("absent_tasks_x",)))
    app = make_celery_app(celery_config, task_modules=("render_tasks_for_test",))
    assert has_render_task(app)
    with pytest.raises(ModuleNotFoundError, match="a_module_that_is_not_installed"):
        make_celery_app(celery_config, task_modules=("broken_tasks_for_test",))


def test_a_worker_on_the_render_queue_receives_the_wake_up(pg_db, create_job, celery_app):
    from celery.contrib.testing.worker import start_worker

    received: list[str] = []

    @celery_app.task(name=RENDER_TASK, shared=False)
    def render(job_id: str) -> None:
        received.append(job_id)

    job = create_job(pg_db)
    assert OutboxRelay(pg_db, CeleryDispatcher(celery_app)).publish_pending() == (1, False)
    with start_worker(
        celery_app,
        pool="solo",
        perform_ping_check=False,
        queues=[RENDER_QUEUE],
        shutdown_timeout=10,
    ):
        deadline = time.monotonic() + 20
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
    assert received == [str(job.id)]


def test_dispatcher_ping(celery_app):
    CeleryDispatcher(celery_app).ping()
    down = make_celery_app(
        CeleryConfig(broker_url=f"redis://127.0.0.1:{free_port()}/0", connect_timeout_s=0.5),
        task_modules=(),
    )
    with pytest.raises(Exception, match="onnect"):
        CeleryDispatcher(down).ping()
