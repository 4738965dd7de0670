"""A worker builds its engine as it starts (worker.engine.preload): a job asking for it meanwhile
waits for that build instead of starting another, a failed preload is logged and the job's own
request builds again, and `longtake worker` preloads unless told not to."""

from __future__ import annotations

import argparse
import logging
import threading

import pytest
from celery import Celery

from ops import cli
from ops.settings import Settings
from worker import engine as engine_mod
from worker.config import EngineSpec

WAIT_S = 120  # a bound on conditions, never a sleep

_builds: list[EngineSpec] = []
_started = threading.Event()
_release = threading.Event()
_fail = threading.Event()


class _Built:
    """What the plug-in factory below returns: an engine is anything the worker can hold."""

    def __init__(self, spec: EngineSpec):
        self.spec = spec

    def shutdown(self) -> None:
        pass


def held_factory(spec: EngineSpec) -> _Built:
    """An engine plug-in (`EngineSpec.factory`) whose build lasts until the test says so."""
    _builds.append(spec)
    _started.set()
    assert _release.wait(WAIT_S)
    if _fail.is_set():
        raise RuntimeError("no device for this engine")
    return _Built(spec)


SPEC = EngineSpec(factory=f"{__name__}:held_factory", device="cpu")


@pytest.fixture(autouse=True)
def fresh_factory():
    _builds.clear()
    _started.clear()
    _release.clear()
    _fail.clear()
    yield
    _release.set()  # never leave a build waiting


def test_a_job_asking_during_the_preload_waits_for_it():
    cache = engine_mod.EngineCache()
    preloading = engine_mod.preload(SPEC, cache)
    got: list[object] = []
    job = threading.Thread(target=lambda: got.append(cache.get(SPEC)))
    job.start()
    _release.set()
    preloading.join(WAIT_S)
    job.join(WAIT_S)
    assert len(_builds) == 1  # one build, shared
    assert got and got[0] is cache.get(SPEC)
    assert isinstance(got[0], _Built)


def test_a_failed_preload_is_logged_and_the_job_builds_again(caplog):
    cache = engine_mod.EngineCache()
    _fail.set()
    _release.set()
    with caplog.at_level(logging.ERROR, logger="worker.engine"):
        engine_mod.preload(SPEC, cache).join(WAIT_S)
    assert "preloading the" in caplog.text and "no device for this engine" in caplog.text
    with pytest.raises(RuntimeError, match="no device"):
        cache.get(SPEC)  # the job's attempt sees the failure itself
    assert len(_builds) == 2


@pytest.mark.parametrize("preload", [True, False])
def test_the_worker_command_preloads_unless_told_not_to(monkeypatch, preload):
    monkeypatch.setenv("LONGTAKE_ENGINE_FACTORY", SPEC.factory or "")
    monkeypatch.setenv("LONGTAKE_MODEL_DEVICE", "cpu")
    monkeypatch.setenv("LONGTAKE_WORKER_PRELOAD", "true" if preload else "false")
    monkeypatch.setenv("LONGTAKE_WORKER_RESPAWN", "false")  # the worker in this process
    consuming: list[str] = []
    # Celery's own worker loop is not under test: here it returns at once
    monkeypatch.setattr(Celery, "worker_main", lambda self, argv: consuming.append("started"))
    settings = Settings()
    config = settings.worker_config()
    try:
        assert cli.cmd_worker(settings, argparse.Namespace(log_level="info", name="w@%h")) == 0
        assert consuming == ["started"]
        if preload:  # the build began without any job, and a job finds its engine
            assert _started.wait(WAIT_S)
            _release.set()
            built = engine_mod.ENGINES.get(config.engine_for(config.precisions[0]))
            assert isinstance(built, _Built) and len(_builds) == 1
        else:
            assert _builds == []
    finally:
        _release.set()
        engine_mod.ENGINES.close()
