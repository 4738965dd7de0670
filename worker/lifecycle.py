"""The render lifecycle: one wake-up, one attempt of one job, from claim to output.

    claim the lease                  (a duplicate wake-up finds it taken and is dropped)
    heartbeat in the background      (extends the lease while worker id and attempt match)
    the model loads in the background while the inputs and the checkpoint are downloaded
    inputs from storage; the AAC track is prepared beside the render
    open the engine's stream         (from the last recorded checkpoint, if any)
    for each clip:
        frames -> watermark -> segment encoder (its own thread)
        every N clips: capture the stream state, hand the interval to the committer
                       (segment upload, checkpoint upload, database record: worker/commit.py)
        progress (at a bounded rate), the cancel flag, the shutdown flag
    stitching: segments joined by stream copy, the audio muxed once, +faststart
    upload the output and its provenance manifest; succeeded; checkpoints deleted

Ways an attempt ends (`Outcome`): succeeded; canceled (the flag is read after every clip);
released (SIGTERM: the clips since the last checkpoint are checkpointed when there is time,
the job goes back to the queue); requeued or failed (retryable errors requeue while attempts
remain, see worker/errors.py); lease_lost (someone else owns the job now: nothing more is
written); dropped (the wake-up was a duplicate). A worker killed outright leaves its lease to
expire; the reaper requeues the job and the next attempt resumes from its last checkpoint,
keeping the segments before it and regenerating the rest.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

import numpy as np

from db import leases, upkeep
from db.database import Database
from db.leases import LeaseLost
from db.segments import Segment
from db.states import JobStatus
from pipeline.engine import Engine, PresenterEngine, RenderStream
from storage import keys
from storage.base import ObjectNotFound, Storage
from worker.backoff import with_retries
from worker.checkpoints import download_checkpoint
from worker.commit import Interval, IntervalCommitter, OpenInterval, read_open_interval
from worker.config import EngineSpec, WorkerConfig
from worker.engine import ENGINES, use_threads
from worker.errors import JobInputError, describe, is_retryable
from worker.faults import FaultPlan
from worker.finish import Finisher
from worker.lease import Heartbeat, LeasedJob
from worker.plan import JobPlan
from worker.resume import ResumePoint, needs_checkpoint, resume_point
from worker.segments import SegmentEncoder
from worker.stitch import prepare_audio
from worker.tiers import LocalTier
from worker.watermark import Watermark

log = logging.getLogger(__name__)

LOCAL_SWEEP_MIN_AGE_S = 600.0
"""A local checkpoint younger than this may be one being written and not yet recorded."""


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    RELEASED = "released"
    REQUEUED = "requeued"
    LEASE_LOST = "lease_lost"
    DROPPED = "dropped"
    UNCLAIMED = "unclaimed"
    """The database could not be reached to claim the job: the wake-up should come again."""
    ABANDONED = "abandoned"
    """The attempt failed and the database could not be told; the lease will expire."""


@dataclass(frozen=True, eq=False)
class ClipDone:
    """What an `on_clip` hook is told, in the worker's thread, right after a clip came back
    from the engine (before it is encoded): a test's or an operator's point to act at."""

    job_id: uuid.UUID
    attempt: int
    clip: int
    frames: np.ndarray
    """uint8 [T, H, W, 3] as generated (before the mark); the hook must not change them."""


ClipHook = Callable[[ClipDone], None]


@dataclass
class AttemptStats:
    """Where an attempt's time went (logged at its end; read by ops/bench/lifecycle.py)."""

    job_id: uuid.UUID
    attempt: int
    resumed_from: int = 0
    resumed_from_tier: str = ""
    """Where the resumed checkpoint came from: local (this node's disk) or remote (the bucket)."""
    clips: int = 0
    engine_s: float = 0.0
    """Waiting for the model to load, after the inputs and the checkpoint were downloaded
    beside it (0 when it was loaded already)."""
    open_s: float = 0.0
    presenter_cached: bool = False
    """The stream's presenter came from the worker's presenter cache."""
    render_s: float = 0.0
    """From the first clip asked of the stream to the last one back, boundaries included."""
    capture_s: float = 0.0
    """Device-to-host copies of the stream state at boundaries (the generator waits)."""
    commit_wait_s: float = 0.0
    """Boundaries waiting for the previous interval's commit (the generator waits)."""
    encoder_wait_s: float = 0.0
    """Time the generator was held back by a full encoder queue."""
    commit_s: list[float] = field(default_factory=list)
    """Each interval's commit, in the background."""
    checkpoint_bytes: int = 0
    stitch_s: float = 0.0
    upload_s: float = 0.0

    @property
    def checkpoint_overhead(self) -> float:
        """Share of the render the generator spent on checkpoints."""
        return (self.capture_s + self.commit_wait_s) / self.render_s if self.render_s else 0.0


class _Stop(Exception):
    """Ends the attempt early with an outcome that has been recorded already."""

    def __init__(self, outcome: Outcome):
        self.outcome = outcome


_T = TypeVar("_T")


def _beside(work: Callable[[], _T], name: str) -> Future[_T]:
    """`work`'s result (or exception, raised where the attempt asks for the result), made in a
    daemon thread: a worker told to exit does not wait for work nobody needs any more."""
    future: Future[_T] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(work())
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


class _DamagedLocal(Exception):
    """The local checkpoint a stream opened from failed its CRCs: resume from the bucket."""


class Lifecycle:
    """Runs attempts of jobs. One per worker process; `run` one job at a time."""

    def __init__(
        self,
        config: WorkerConfig,
        database: Database,
        storage: Storage,
        *,
        engines: Callable[[EngineSpec], Engine] | None = None,
        presenter_keys: Callable[[], Collection[str]] | None = None,
        on_clip: ClipHook | None = None,
    ):
        self.config = config
        self.database = database
        self.storage = storage
        self._engines = engines if engines is not None else ENGINES.get
        self.presenter_keys = presenter_keys or (
            ENGINES.presenter_keys if engines is None else tuple
        )
        """The presenters this worker's engines hold: the claim prefers their jobs."""
        self.on_clip = on_clip
        """Called after every generated clip (see `ClipDone`)."""
        self.faults = FaultPlan.parse(config.fault)
        self.shutdown = threading.Event()
        self._shutdown_at: float | None = None
        self.last_stats: AttemptStats | None = None
        self.running: uuid.UUID | None = None
        """The job of the attempt in progress, if any."""

    def engine(self, precision: str) -> Engine:
        """This worker's engine for `precision`, built at its first use and kept."""
        return self._engines(self.config.engine_for(precision))

    def request_shutdown(self) -> None:
        """Stop after the current clip: checkpoint, release the job to the queue, return."""
        if not self.shutdown.is_set():
            self._shutdown_at = time.monotonic()
            self.shutdown.set()

    def shutdown_time_left(self) -> float:
        if self._shutdown_at is None:
            return float("inf")
        return self.config.soft_shutdown_timeout_s - (time.monotonic() - self._shutdown_at)

    def run(self, job_id: uuid.UUID) -> Outcome:
        """Handle one wake-up, sent for `job_id`.

        A wake-up says that work exists, not which comes first: the worker takes the best
        queued job (priority, then fair share between tenants, then a presenter it holds,
        then age), which is `job_id`
        unless others are ahead of it; with none queued, it takes over `job_id` if that job's
        lease expired unreaped, and otherwise drops the wake-up as a duplicate.
        """
        try:
            lease = with_retries(
                lambda: self._claim(job_id), f"claim job {job_id}", self.config.database_retry
            )
        except Exception:
            # The job stays queued: the Celery task retries the wake-up, and the relay
            # re-sends wake-ups of jobs that stay queued.
            log.exception("job %s: could not claim it", job_id)
            return Outcome.UNCLAIMED
        if lease is None:
            log.info("job %s: wake-up dropped (job is final or leased by a live worker)", job_id)
            return Outcome.DROPPED
        self._sweep_local_tier()
        self.running = lease.job_id
        try:
            outcome = _Attempt(self, lease).run()
        finally:
            self.running = None
        log.info("job %s: attempt %d ended %s", lease.job_id, lease.attempt, outcome.value)
        return outcome

    __call__ = run

    def _sweep_local_tier(self) -> None:
        """Remove this node's local checkpoints that no job needs any more (finished jobs,
        jobs resumed elsewhere); recent ones are left to the workers writing them."""

        def needed(job_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
            with self.database.transaction() as s:
                return upkeep.local_checkpoints(s, job_ids, self.config.tiers.node)

        try:
            LocalTier(self.config.local_root).sweep(needed, min_age_s=LOCAL_SWEEP_MIN_AGE_S)
        except Exception as exc:  # garbage only: the next attempt sweeps again
            log.warning("local checkpoints not swept: %s", exc)

    def _claim(self, job_id: uuid.UUID) -> leases.Lease | None:
        with self.database.transaction() as s:
            return leases.claim_for_wakeup(
                s,
                job_id,
                self.config.worker_id,
                self.config.lease_s,
                serves=self.config.capabilities,
                cached=self.presenter_keys(),
            )


class _Attempt:
    """One attempt: everything between a successful claim and the attempt's outcome."""

    def __init__(self, lifecycle: Lifecycle, lease: leases.Lease):
        self.lc = lifecycle
        self.config = lifecycle.config
        self.storage = lifecycle.storage
        self.job_id = lease.job_id
        self.attempt = lease.attempt
        # One directory per attempt: an older attempt of the job on this node (one that was
        # paused past its lease, say) may still be running and must not touch this one's files.
        self.scratch = self.config.scratch_dir / str(self.job_id) / f"attempt-{self.attempt}"
        self.stats = AttemptStats(self.job_id, self.attempt)
        self.leased = LeasedJob(
            lifecycle.database,
            lease,
            lease_s=self.config.lease_s,
            retry=self.config.database_retry,
        )
        self.heartbeat = Heartbeat(self.leased, interval_s=self.config.heartbeat_interval_s)
        self.committer = IntervalCommitter(
            self.config, self.leased, self.storage, self.scratch, lifecycle.faults
        )
        self._background = ThreadPoolExecutor(1, thread_name_prefix="audio")
        self._engine: Future[Engine] | None = None
        # the local checkpoint's CRCs, read beside the model load and the open; no clip is
        # rendered from it before they match its seal
        self._local_sound: Future[bool] | None = None
        self._stream: RenderStream | None = None
        self._interval: Interval | None = None
        self._last_progress = 0.0
        self._clip_s: float | None = None
        self._engine_writes_checkpoints = False

    # ---- the attempt ---------------------------------------------------------------------

    def run(self) -> Outcome:
        _remove_older_attempts(self.scratch)
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True)
        self.heartbeat.start()
        try:
            outcome = self._run()
        except _Stop as stop:
            outcome = stop.outcome
        except Exception as exc:
            self.leased.stop.set()
            if self.leased.lost.is_set() or isinstance(exc, LeaseLost):
                log.warning("job %s: attempt %d lost its lease: %s", self.job_id, self.attempt, exc)
                outcome = Outcome.LEASE_LOST
            else:
                outcome = self._fail(exc)
        finally:
            self.leased.stop.set()
            self._close_stream()
            if self._interval is not None:
                self._interval.encoder.abort()
            self.committer.shutdown()
            # An audio track still being encoded is not waited for (it is not needed now).
            self._background.shutdown(wait=False, cancel_futures=True)
            self.heartbeat.stop()
            shutil.rmtree(self.scratch, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.scratch.parent.rmdir()  # the job's directory, once no attempt uses it
            self.stats.commit_s = [t.seconds for t in self.committer.timings]
            self.stats.checkpoint_bytes = sum(t.checkpoint_bytes for t in self.committer.timings)
            self.lc.last_stats = self.stats
        return outcome

    def _run(self) -> Outcome:
        job = self.leased.job()
        plan = JobPlan.from_job(
            job,
            default_watermark=self.config.watermark,
            watermark_allowed=self.config.watermark_allowed,
        )
        recorded = self.leased.lease.checkpoints.newest
        if recorded < plan.clips_total:
            self._engine = self._load_engine_beside(plan.precision)
        image = self._input_bytes(plan.image_key)
        audio = self.scratch / f"source{Path(plan.audio_key).suffix}"
        self._input_file(plan.audio_key, audio)
        audio_track: Future[Path] = self._background.submit(
            prepare_audio, audio, self.scratch / "audio.m4a", plan.duration_s, self.config.audio
        )
        start = self._starting_at(plan, job.max_attempts, use_local=True)
        segments = start.segments
        if start.clip < plan.clips_total:
            try:
                segments = segments + self._render(plan, image, audio, start)
            except _DamagedLocal:
                log.warning(
                    "job %s: the local checkpoint at clip %d does not match its seal; "
                    "resuming from the bucket's",
                    self.job_id,
                    start.clip,
                )
                self._close_stream()
                start = self._starting_at(plan, job.max_attempts, use_local=False)
                segments = start.segments
                if start.clip < plan.clips_total:
                    segments = segments + self._render(plan, image, audio, start)
        finisher = Finisher(self.config, self.leased, self.storage, self.scratch, self.lc.faults)
        timing = finisher.finish(plan, segments, audio_track.result())
        self.stats.stitch_s, self.stats.upload_s = timing.stitch_s, timing.upload_s
        return Outcome.SUCCEEDED

    def _load_engine_beside(self, precision: str) -> Future[Engine]:
        """Load the worker's model (the first job of a process, or after a crash: minutes for
        the 14B weights) while the inputs and the checkpoint download. The model stays loaded
        for the worker's next jobs whatever happens to this attempt."""
        return _beside(lambda: self.lc.engine(precision), "engine-load")

    def _starting_at(self, plan: JobPlan, max_attempts: int, *, use_local: bool) -> ResumePoint:
        start = self._resume_point(plan, use_local=use_local)
        self.stats.resumed_from = start.clip
        tier = self.stats.resumed_from_tier if start.checkpoint is not None else ""
        log.info(
            "job %s: attempt %d of %d starts at clip %d of %d (%d segments kept): %s%s",
            self.job_id,
            self.attempt,
            max_attempts,
            start.clip,
            plan.clips_total,
            len(start.segments),
            start.reason,
            f" (the {tier} tier)" if tier else "",
        )
        return start

    def _resume_point(self, plan: JobPlan, *, use_local: bool = True) -> ResumePoint:
        """The newest checkpoint this worker can reach, fetched, and the decision on it: the
        local one when it is on this node, sealed with every file at its size, and not older
        than the bucket's (no download; its CRCs are read beside the open, `_local_sound`);
        else the bucket's."""
        cp = self.leased.lease.checkpoints
        node = self.config.tiers.node
        checkpoint, recorded = None, cp.remote_clip or 0
        carried: OpenInterval | None = None
        self.stats.resumed_from_tier = ""
        if (
            use_local
            and cp.local_clip is not None
            and cp.local_node == node
            and cp.local_clip >= recorded
        ):
            local = self.committer.local.directory(self.job_id, cp.local_clip)
            sound = self.committer.local.valid(local, verify=False)
            if sound:
                try:
                    carried = read_open_interval(local)
                except (OSError, ValueError, KeyError, TypeError):
                    sound = False  # damaged where the CRCs would have said so
            if sound:
                checkpoint, recorded = local, cp.local_clip
                self.stats.resumed_from_tier = "local"
                if self.config.tiers.verify:
                    self._local_sound = self._verify_beside(local)
            else:
                log.warning(
                    "job %s: the local checkpoint at clip %d is missing or damaged; using the "
                    "bucket's (clip %d)",
                    self.job_id,
                    cp.local_clip,
                    recorded,
                )
        if checkpoint is None and needs_checkpoint(recorded, plan.clips_total):
            try:
                checkpoint = self._download_checkpoint(recorded)
                self.stats.resumed_from_tier = "remote"
            except JobInputError as exc:
                log.warning("job %s: %s", self.job_id, exc)
        if checkpoint is not None and self.stats.resumed_from_tier != "local":
            carried = read_open_interval(checkpoint)
        segments = self.leased.segments() if recorded else []
        return resume_point(
            recorded, plan.clips_total, plan.infer_frames, segments, checkpoint, carried
        )

    def _verify_beside(self, local: Path) -> Future[bool]:
        """Read the local checkpoint's CRCs in a thread of their own (seconds for a 14B
        stream's state: beside the model load and the open, off the way to the first clip)."""
        return _beside(lambda: self.committer.local.valid(local, verify=True), "local-verify")

    def _local_damaged(self) -> bool:
        """Whether the local checkpoint being resumed from failed its CRCs (waits for them;
        False when none is being checked). Asked once."""
        sound, self._local_sound = self._local_sound, None
        return sound is not None and not sound.result()

    # ---- inputs --------------------------------------------------------------------------

    def _input_bytes(self, key: str) -> bytes:
        try:
            return with_retries(
                lambda: self.storage.get_bytes(key),
                f"download {key}",
                self.config.storage_retry,
                stop=self.leased.stop,
            )
        except ObjectNotFound as e:
            raise JobInputError(f"input {key} is missing from storage") from e

    def _input_file(self, key: str, path: Path) -> None:
        try:
            with_retries(
                lambda: self.storage.get_file(key, path),
                f"download {key}",
                self.config.storage_retry,
                stop=self.leased.stop,
            )
        except ObjectNotFound as e:
            raise JobInputError(f"input {key} is missing from storage") from e

    # ---- rendering -----------------------------------------------------------------------

    def _render(
        self, plan: JobPlan, image: bytes, audio: Path, start: ResumePoint
    ) -> list[Segment]:
        """Generate clips [start.clip, clips_total); return the segments committed meanwhile.

        Ends the attempt early (`_Stop`) on cancel or shutdown.
        """
        self._check_flags(start.clip)  # a cancel or a shutdown before the model is used
        started = time.monotonic()
        engine = (
            self._engine.result() if self._engine is not None else self.lc.engine(plan.precision)
        )
        use_threads(self.config.engine_for(plan.precision))  # here: the thread that renders
        self.stats.engine_s = time.monotonic() - started
        mode = self.config.checkpoint_mode
        self._engine_writes_checkpoints = mode == "directory" or (
            mode == "auto" and engine.writes_own_checkpoints
        )

        started = time.monotonic()
        request = plan.request(image, audio)
        try:
            if isinstance(engine, PresenterEngine) and engine.presenter_cache is not None:
                # the tenant is the namespace: no job sees another tenant's presenters
                stream = engine.open(request, resume_from=start.checkpoint, namespace=plan.tenant)
            else:
                stream = engine.open(request, resume_from=start.checkpoint)
        except Exception as exc:
            if self._local_damaged():  # what the open tripped on
                raise _DamagedLocal from exc
            raise
        self._stream = stream
        if self._local_damaged():  # before anything is rendered or encoded from it
            raise _DamagedLocal
        self.stats.open_s = time.monotonic() - started
        self.stats.presenter_cached = bool(getattr(stream, "presenter_cached", False))
        log.info(
            "job %s: stream opened in %.2f s%s",
            self.job_id,
            self.stats.open_s,
            " (presenter from the cache)" if self.stats.presenter_cached else "",
        )
        if stream.num_clips != plan.clips_total or stream.next_clip != start.clip:
            raise RuntimeError(
                f"the engine's stream renders clips {stream.next_clip}..{stream.num_clips}, "
                f"the job needs {start.clip}..{plan.clips_total}"
            )
        watermark = Watermark(plan.watermark, stream.width, stream.height)

        done = start.clip
        index = len(start.segments)
        carried = start.open_interval
        first_clip = carried.first_clip if carried is not None else done
        self._interval = self._open_interval(stream, watermark, index, first_clip)
        if carried is not None:
            # The frames an interrupted attempt generated for this segment, encoded again
            # so the segment is the one an uninterrupted render makes.
            frames = carried.read_frames()
            for i in range(carried.clips):
                self._interval.encoder.submit(
                    frames[i * plan.infer_frames : (i + 1) * plan.infer_frames]
                )
        if start.checkpoint is not None and not start.checkpoint.is_relative_to(
            self.committer.local.root
        ):
            shutil.rmtree(start.checkpoint, ignore_errors=True)  # a download: used now
        self._check_flags(start.clip)  # loading and opening may take minutes

        render_started = time.monotonic()
        self._last_progress = render_started
        while done < plan.clips_total:
            clip_started = time.monotonic()
            clip = next(stream)
            if clip.index != done:
                raise RuntimeError(f"the engine returned clip {clip.index}, expected {done}")
            self.lc.faults.hit("during_clip")
            if self.lc.on_clip is not None:
                self.lc.on_clip(ClipDone(self.job_id, self.attempt, clip.index, clip.frames))
            waited = time.monotonic()
            self._interval.encoder.submit(clip.frames[: plan.delivered(clip.index)])
            self.stats.encoder_wait_s += time.monotonic() - waited
            done += 1
            self.stats.clips += 1
            log.info("job %s: attempt %d generated clip %d", self.job_id, self.attempt, clip.index)

            self.committer.raise_if_failed()
            self.leased.check()
            if plan.is_boundary(done):
                final = done == plan.clips_total
                self._boundary(stream, done, final)
                if not final:
                    index += 1
                    self._interval = self._open_interval(stream, watermark, index, done)
            self.stats.render_s = time.monotonic() - render_started
            self._clip_s = time.monotonic() - clip_started
            self._progress(plan, done, start.clip)
            self._check_flags(done)

        self.committer.wait()
        self._close_stream()
        self._progress(plan, done, start.clip, force=True)
        return list(self.committer.committed)

    def _open_interval(
        self, stream: RenderStream, watermark: Watermark, index: int, first_clip: int
    ) -> Interval:
        path = self.scratch / "segments" / f"{index:05d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        encoder = SegmentEncoder(
            path,
            stream.width,
            stream.height,
            stream.fps,
            self.config.encoder,
            watermark=watermark,
            raw_copy=path.with_suffix(".rgb"),  # what a shutdown mid-interval checkpoints
            index=index,
            first_clip=first_clip,
            key=keys.segment_key(self.job_id, index),
        )
        return Interval(encoder)

    def _boundary(
        self,
        stream: RenderStream,
        clip: int,
        final: bool,
        open: bool = False,
        remote: bool | None = None,
    ) -> None:
        """Hand the interval to the committer; the generator waits only for the previous
        commit (if still running) and for the state's capture: a device-to-host copy, or,
        for an engine that writes its own checkpoints, that write."""
        assert self._interval is not None
        waited = time.monotonic()
        self.committer.wait()
        captured = time.monotonic()
        self.stats.commit_wait_s += captured - waited
        state, written = None, None
        if not final and self._engine_writes_checkpoints:
            written = self.committer.place(clip)
            stream.checkpoint(written)
        elif not final:
            # into pinned memory: the copy runs at full bus speed; writing happens elsewhere
            state = stream.state_dict(pin_memory=True)
        done = time.monotonic()
        self.stats.capture_s += done - captured
        self.committer.submit(
            self._interval,
            clip,
            state,
            render_cost_s=done - waited,
            open=open,
            written=written,
            remote=remote,
        )
        self._interval = None

    def _download_checkpoint(self, clip: int) -> Path:
        shutil.rmtree(self.scratch / "resume", ignore_errors=True)
        return download_checkpoint(
            self.storage,
            self.job_id,
            clip,
            self.scratch / "resume",
            self.config.storage_retry,
            stop=self.leased.stop,
        )

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()  # frees the caches (GPU memory) before anything else runs
            self._stream = None

    # ---- progress, cancel, shutdown ------------------------------------------------------

    def _progress(self, plan: JobPlan, done: int, resume: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < self.config.progress_interval_s:
            return
        self._last_progress = now
        frames = (done - resume) * plan.infer_frames
        fps = frames / self.stats.render_s if self.stats.render_s > 0 else None
        eta = (plan.clips_total - done) * plan.infer_frames / fps if fps else None
        self.leased.progress(done, fps=fps, eta_s=eta, clip_s=self._clip_s)

    def _check_flags(self, done: int) -> None:
        """Between clips: stop for a cancel request or a shutdown."""
        if self.leased.cancel_requested():
            raise _Stop(self._cancel(done))
        if self.lc.shutdown.is_set():
            raise _Stop(self._release(done))

    def _cancel(self, done: int) -> Outcome:
        log.info("job %s: cancel requested; stopping after clip %d", self.job_id, done - 1)
        self._close_stream()  # the GPU is free at once
        if self._interval is not None:
            self._interval.encoder.abort()  # the open interval is not kept
            self._interval = None
        self.committer.shutdown()  # a commit in flight still becomes the resume point
        self.leased.cancel()
        return Outcome.CANCELED

    def _release(self, done: int) -> Outcome:
        """A graceful shutdown: checkpoint the clips since the last checkpoint (with the open
        interval's frames) if that fits in what is left of the shutdown time, and put the
        newest checkpoint in the bucket if its upload fits too (the node may not come back);
        then give the job back. What stays on this node only is offered to this node's
        workers first."""
        interval = self._interval
        if interval is not None and interval.clips > 0 and self._stream is not None:
            self.committer.wait()
            last = self.committer.timings[-1].seconds if self.committer.timings else 0.0
            if 2 * last < self.lc.shutdown_time_left():
                self._boundary(
                    self._stream, done, final=False, open=True, remote=self._upload_fits()
                )
        self._close_stream()
        if self._interval is not None:
            self._interval.encoder.abort()
            self._interval = None
        self.committer.wait()
        self._promote_newest()
        self.leased.release(
            f"worker {self.leased.worker_id} shutting down",
            prefer_local_s=self.config.tiers.prefer_local_s,
        )
        return Outcome.RELEASED

    def _upload_fits(self) -> bool:
        """Whether a checkpoint's upload fits in the shutdown time left (judged by this
        attempt's last upload; when there was none, try)."""
        rate = self.committer.upload_rate
        if rate is None:
            return True
        return 2 * self.committer.last_bytes / rate < self.lc.shutdown_time_left()

    def _promote_newest(self) -> None:
        """Upload the newest checkpoint to the bucket if it is on this node alone."""
        job = self.leased.job()
        local, remote = job.local_checkpoint_clip, job.remote_checkpoint_clip or 0
        if (
            local is None
            or local <= remote
            or job.local_checkpoint_node != self.config.tiers.node
            or not self._upload_fits()
        ):
            return
        try:
            if self.committer.promote(local):
                log.info("job %s: checkpoint at clip %d promoted to the bucket", self.job_id, local)
        except LeaseLost:
            raise
        except Exception as exc:  # it stays on this node, offered to its workers first
            log.warning("job %s: could not promote the checkpoint: %s", self.job_id, exc)

    # ---- failures ------------------------------------------------------------------------

    def _fail(self, exc: Exception) -> Outcome:
        retryable = is_retryable(exc)
        failure = describe(exc)
        log.error(
            "job %s: attempt %d failed (%s): %s",
            self.job_id,
            self.attempt,
            "retryable" if retryable else "not retryable",
            failure.detail,
        )
        try:
            job = self.leased.fail(
                failure, retryable=retryable, prefer_local_s=self.config.tiers.prefer_local_s
            )
        except LeaseLost:
            return Outcome.LEASE_LOST
        except Exception:
            log.exception(
                "job %s: could not record the failure; its lease will expire", self.job_id
            )
            return Outcome.ABANDONED
        return Outcome.REQUEUED if job.status == JobStatus.QUEUED.value else Outcome.FAILED


def _remove_older_attempts(scratch: Path) -> None:
    """What earlier attempts of the job left on this node (a crash, a lost lease): their files
    are of no use to anyone now. Later attempts' are left alone (that would be this one's
    successor, and this attempt is the stale one)."""
    mine = int(scratch.name.removeprefix("attempt-"))
    for other in scratch.parent.glob("attempt-*"):
        number = other.name.removeprefix("attempt-")
        if number.isdigit() and int(number) < mine:
            shutil.rmtree(other, ignore_errors=True)
