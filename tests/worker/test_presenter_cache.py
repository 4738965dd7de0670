"""The worker's presenter cache: kept across jobs, a repeat presenter's stream opens from it
with the frames of a cold open; per tenant; the worker's claim prefers a job whose presenter
it holds among equals."""

from __future__ import annotations

import pytest

from tests import media
from tests.worker.lifecycle_helpers import ClipLog, config, job, make_job
from worker.config import EngineSpec
from worker.engine import EngineCache
from worker.lifecycle import Lifecycle, Outcome

pytestmark = pytest.mark.slow

CACHED = EngineSpec(preset="tiny", device="cpu", torch_threads=1, presenter_cache_gpu_bytes=1 << 30)


@pytest.fixture
def worker(tmp_path, sqlite_db, local_storage):
    """A worker process of its own (its engines and presenter cache), on SQLite."""
    engines = EngineCache()
    clips = ClipLog()
    lifecycle = Lifecycle(
        config(tmp_path, engine=CACHED),
        sqlite_db,
        local_storage,
        engines=engines.get,
        presenter_keys=engines.presenter_keys,
        on_clip=clips,
    )
    return lifecycle, engines, clips


def raw(clips: ClipLog, job_id) -> dict[int, str]:
    return {clip: digest for clip, (_, digest) in clips.raw_by_clip(job_id).items()}


def test_a_repeat_presenter_opens_from_the_cache_with_the_same_frames(
    worker, sqlite_db, local_storage, reference_run
):
    lifecycle, engines, clips = worker
    first = make_job(sqlite_db, local_storage)
    assert lifecycle.run(first) is Outcome.SUCCEEDED
    assert not lifecycle.last_stats.presenter_cached
    assert engines.presenter_keys() == (job(sqlite_db, first).presenter_key,)

    second = make_job(sqlite_db, local_storage)  # the same presenter: from the cache
    assert lifecycle.run(second) is Outcome.SUCCEEDED
    assert lifecycle.last_stats.presenter_cached
    other_tenant = make_job(sqlite_db, local_storage, tenant="acme")  # same files, not shared
    assert lifecycle.run(other_tenant) is Outcome.SUCCEEDED
    assert not lifecycle.last_stats.presenter_cached
    assert len(engines.presenter_keys()) == 2

    for job_id in (first, second, other_tenant):  # every clip as a worker without a cache
        assert raw(clips, job_id) == reference_run.raw


def test_the_worker_takes_a_job_of_a_presenter_it_holds_first(worker, sqlite_db, local_storage):
    lifecycle, engines, _ = worker
    assert lifecycle.run(make_job(sqlite_db, local_storage)) is Outcome.SUCCEEDED
    older = make_job(sqlite_db, local_storage, image=media.png(96, 96))  # another presenter
    held = make_job(sqlite_db, local_storage)  # submitted later, presenter held
    urgent = make_job(sqlite_db, local_storage, image=media.png(80, 80), priority=1)

    order = []
    for woken in (older, older, older):  # whichever job each wake-up names
        assert lifecycle.run(woken) is Outcome.SUCCEEDED
        order.append(lifecycle.last_stats.job_id)
    assert order == [urgent, held, older]  # priority first, then the held presenter, then age
