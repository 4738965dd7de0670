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

import json
import logging
import shutil
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from db import repository as repo
from db.database import Database
from db.models import JobSegment
from db.states import JobStatus
from pipeline import params as P
from storage import keys
from storage.base import ObjectNotFound, Storage
from worker.backoff import with_retries
from worker.checkpoints import download_checkpoint, prune_checkpoints
from worker.commit import (
    Interval,
    IntervalCommitter,
    OpenInterval,
    SegmentRef,
    read_open_interval,
)
from worker.config import EngineSpec, WorkerConfig
from worker.engine import ENGINES, Engine, RenderStream, capture_state
from worker.errors import JobInputError, describe, is_retryable
from worker.faults import FaultPlan
from worker.heartbeat import Heartbeat
from worker.plan import JobPlan
from worker.provenance import build_manifest, iter_frame_hashes
from worker.segments import SegmentEncoder, SegmentInfo, file_sha256
from worker.stitch import prepare_audio, stitch
from worker.watermark import Watermark

log = logging.getLogger(__name__)


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


def manifest_key(job_id: uuid.UUID) -> str:
    """The provenance manifest, stored beside the output."""
    return f"{keys.job_prefix(job_id)}output.manifest.json"


@dataclass
class AttemptStats:
    """Where an attempt's time went (logged at its end; read by ops/bench/lifecycle.py)."""

    job_id: uuid.UUID
    attempt: int
    resumed_from: int = 0
    clips: int = 0
    engine_s: float = 0.0
    """Waiting for the model to load, after the inputs and the checkpoint were downloaded
    beside it (0 when it was loaded already)."""
    open_s: float = 0.0
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


@dataclass
class _Start:
    """Where an attempt starts."""

    clip: int
    segments: list[SegmentRef]
    """Recorded segments before `clip` (all of them, unless an open interval is carried)."""
    checkpoint: Path | None = None
    """The downloaded checkpoint directory at `clip` (None: from the start, or stitch only)."""
    open_interval: OpenInterval | None = None


class _Stop(Exception):
    """Ends the attempt early with an outcome that has been recorded already."""

    def __init__(self, outcome: Outcome):
        self.outcome = outcome


class Lifecycle:
    """Runs attempts of jobs. One per worker process; `run` one job at a time."""

    def __init__(
        self,
        config: WorkerConfig,
        database: Database,
        storage: Storage,
        *,
        engines: Any = None,
    ):
        self.config = config
        self.database = database
        self.storage = storage
        self._engines = engines if engines is not None else ENGINES.get
        self.faults = FaultPlan.parse(config.fault)
        self.shutdown = threading.Event()
        self._shutdown_at: float | None = None
        self.last_stats: AttemptStats | None = None
        self.running: uuid.UUID | None = None
        """The job of the attempt in progress, if any."""

    def engine(self, spec: EngineSpec | None = None) -> Engine:
        return self._engines(spec or self.config.engine)

    def request_shutdown(self) -> None:
        """Stop after the current clip: checkpoint, release the job to the queue, return."""
        if not self.shutdown.is_set():
            self._shutdown_at = time.monotonic()
            self.shutdown.set()
            if self.running is not None:
                log.warning(
                    "shutdown requested: job %s is released after its current clip", self.running
                )

    def shutdown_time_left(self) -> float:
        if self._shutdown_at is None:
            return float("inf")
        return self.config.soft_shutdown_timeout_s - (time.monotonic() - self._shutdown_at)

    def run(self, job_id: uuid.UUID) -> Outcome:
        """Handle one wake-up, sent for `job_id`.

        A wake-up says that work exists, not which comes first: the worker takes the best
        queued job (priority, then fair share between tenants, then age), which is `job_id`
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
        self.running = lease.job_id
        try:
            outcome = _Attempt(self, lease).run()
        finally:
            self.running = None
        log.info("job %s: attempt %d ended %s", lease.job_id, lease.attempt, outcome.value)
        return outcome

    __call__ = run

    def _claim(self, job_id: uuid.UUID) -> repo.Lease | None:
        with self.database.transaction() as s:
            return repo.claim_for_wakeup(s, job_id, self.config.worker_id, self.config.lease_s)


class _Attempt:
    """One attempt: everything between a successful claim and the attempt's outcome."""

    def __init__(self, lifecycle: Lifecycle, lease: repo.Lease):
        self.lc = lifecycle
        self.config = lifecycle.config
        self.database = lifecycle.database
        self.storage = lifecycle.storage
        self.lease = lease
        self.job_id = lease.job_id
        self.attempt = lease.attempt
        self.worker_id = lease.worker_id
        self.scratch = self.config.scratch_dir / str(self.job_id)
        self.stats = AttemptStats(self.job_id, self.attempt)
        self.stop = threading.Event()  # set when the attempt ends early: retries stop waiting
        self.heartbeat = Heartbeat(
            self.database,
            self.job_id,
            self.worker_id,
            self.attempt,
            lease_s=self.config.lease_s,
            interval_s=self.config.heartbeat_interval_s,
        )
        self.committer = IntervalCommitter(
            self.config,
            self.database,
            self.storage,
            self.job_id,
            self.attempt,
            self.scratch,
            lifecycle.faults,
            self.stop,
        )
        self._background = ThreadPoolExecutor(1, thread_name_prefix="audio")
        self._engine: Future[Engine] | None = None
        self._stream: RenderStream | None = None
        self._interval: Interval | None = None
        self._last_progress = 0.0
        self._clip_s: float | None = None
        self._engine_writes_checkpoints = False

    # ---- the attempt ---------------------------------------------------------------------

    def run(self) -> Outcome:
        shutil.rmtree(self.scratch, ignore_errors=True)  # leftovers of an earlier attempt here
        self.scratch.mkdir(parents=True)
        self.heartbeat.start()
        try:
            outcome = self._run()
        except _Stop as stop:
            outcome = stop.outcome
        except Exception as exc:
            self.stop.set()
            if self.heartbeat.lost.is_set() or isinstance(exc, repo.LeaseLost):
                log.warning("job %s: attempt %d lost its lease: %s", self.job_id, self.attempt, exc)
                outcome = Outcome.LEASE_LOST
            else:
                outcome = self._fail(exc)
        finally:
            self.stop.set()
            self._close_stream()
            if self._interval is not None:
                self._interval.encoder.abort()
            self.committer.shutdown()
            # An audio track still being encoded is not waited for (it is not needed now).
            self._background.shutdown(wait=False, cancel_futures=True)
            self.heartbeat.stop()
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.stats.commit_s = [t.seconds for t in self.committer.timings]
            self.stats.checkpoint_bytes = sum(t.checkpoint_bytes for t in self.committer.timings)
            self.lc.last_stats = self.stats
        return outcome

    def _run(self) -> Outcome:
        job = self._db(lambda s: repo.get_job(s, self.job_id), "read the job")
        plan = JobPlan.from_job(
            job,
            default_watermark=self.config.watermark,
            watermark_allowed=self.config.watermark_allowed,
        )
        if (self.lease.resume_from_clip or 0) < plan.clips_total:
            self._engine = self._load_engine_beside()
        image = self._input_bytes(plan.image_key)
        audio = self.scratch / f"source{Path(plan.audio_key).suffix}"
        self._input_file(plan.audio_key, audio)
        audio_track: Future[Path] = self._background.submit(
            prepare_audio, audio, self.scratch / "audio.m4a", plan.duration_s, self.config.audio
        )
        start = self._resume_point(plan, self.lease.resume_from_clip or 0)
        self.stats.resumed_from = start.clip
        log.info(
            "job %s: attempt %d of %d starts at clip %d of %d (%d segments kept)",
            self.job_id,
            self.attempt,
            job.max_attempts,
            start.clip,
            plan.clips_total,
            len(start.segments),
        )
        segments = start.segments
        if start.clip < plan.clips_total:
            segments = segments + self._render(plan, image, audio, start)
        return self._finish(plan, segments, audio_track)

    def _load_engine_beside(self) -> Future[Engine]:
        """Load the worker's model (the first job of a process, or after a crash: minutes for
        the 14B weights) while the inputs and the checkpoint download. The model stays loaded
        for the worker's next jobs whatever happens to this attempt; a daemon thread, so a
        worker told to exit does not wait for a load nobody needs."""
        future: Future[Engine] = Future()

        def load() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(self.lc.engine())
            except BaseException as exc:  # raised in the attempt, where it waits for the model
                future.set_exception(exc)

        threading.Thread(target=load, name="engine-load", daemon=True).start()
        return future

    # ---- resume point --------------------------------------------------------------------

    def _resume_point(self, plan: JobPlan, recorded: int) -> _Start:
        """Where this attempt starts: the recorded checkpoint, its files, the segments before it.

        Segment rows are recorded with their checkpoints, so segments 0..k tile [0, e) with
        e == recorded, or e < recorded when the checkpoint carries the open interval [e,
        recorded). Anything else (rows or checkpoint files lost) starts the job over from
        clip 0: its segments are regenerated and their rows replaced.
        """
        if recorded == 0:
            return _Start(0, [])
        rows: list[JobSegment] = self._db(
            lambda s: repo.list_segments(s, self.job_id), "read the segments"
        )
        kept: list[SegmentRef] = []
        end = 0
        for row in rows:
            if row.index != len(kept) or row.first_clip != end:
                break
            if row.first_clip + row.clips > recorded:
                break
            kept.append(
                SegmentRef(
                    row.index, row.key, row.first_clip, row.clips, row.frames, row.bytes, row.sha256
                )
            )
            end = row.first_clip + row.clips
        if recorded == plan.clips_total and end == recorded:
            return _Start(recorded, kept)  # every clip is in a segment: only the stitch is left
        if recorded < plan.clips_total:
            try:
                directory = self._download_checkpoint(recorded)
            except JobInputError as exc:
                log.warning("job %s: %s", self.job_id, exc)
                directory = None
            if directory is not None:
                carried = read_open_interval(directory)
                if end == recorded and carried is None:
                    return _Start(recorded, kept, directory)
                if (
                    carried is not None
                    and carried.index == len(kept)
                    and carried.first_clip == end
                    and carried.first_clip + carried.clips == recorded
                    and carried.frames == carried.clips * plan.infer_frames
                ):
                    return _Start(recorded, kept, directory, carried)
        log.warning(
            "job %s: the checkpoint at clip %d and the segments before it (clips [0, %d)) do "
            "not make a resume point: starting over",
            self.job_id,
            recorded,
            end,
        )
        return _Start(0, [])

    # ---- inputs --------------------------------------------------------------------------

    def _input_bytes(self, key: str) -> bytes:
        try:
            return with_retries(
                lambda: self.storage.get_bytes(key),
                f"download {key}",
                self.config.storage_retry,
                stop=self.stop,
            )
        except ObjectNotFound as e:
            raise JobInputError(f"input {key} is missing from storage") from e

    def _input_file(self, key: str, path: Path) -> None:
        try:
            with_retries(
                lambda: self.storage.get_file(key, path),
                f"download {key}",
                self.config.storage_retry,
                stop=self.stop,
            )
        except ObjectNotFound as e:
            raise JobInputError(f"input {key} is missing from storage") from e

    # ---- rendering -----------------------------------------------------------------------

    def _render(self, plan: JobPlan, image: bytes, audio: Path, start: _Start) -> list[SegmentRef]:
        """Generate clips [start.clip, clips_total); return the segments committed meanwhile.

        Ends the attempt early (`_Stop`) on cancel or shutdown.
        """
        self._check_flags(plan, start.clip)  # a cancel or a shutdown before the model is used
        started = time.monotonic()
        engine = self._engine.result() if self._engine is not None else self.lc.engine()
        self.stats.engine_s = time.monotonic() - started
        mode = self.config.checkpoint_mode
        self._engine_writes_checkpoints = mode == "directory" or (
            mode == "auto" and getattr(engine, "writes_own_checkpoints", False)
        )

        started = time.monotonic()
        request = plan.request(image, audio)
        if start.checkpoint is not None:
            stream = engine.open(request, resume_from=start.checkpoint)
        else:
            stream = engine.open(request)
        self._stream = stream
        self.stats.open_s = time.monotonic() - started
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
            self._interval.clips = carried.clips
        if start.checkpoint is not None:
            shutil.rmtree(start.checkpoint, ignore_errors=True)
        self._check_flags(plan, start.clip)  # loading and opening may take minutes

        render_started = time.monotonic()
        self._last_progress = render_started
        while done < plan.clips_total:
            clip_started = time.monotonic()
            clip = next(stream)
            if clip.index != done:
                raise RuntimeError(f"the engine returned clip {clip.index}, expected {done}")
            self.lc.faults.hit("during_clip")
            waited = time.monotonic()
            self._interval.encoder.submit(clip.frames)
            self.stats.encoder_wait_s += time.monotonic() - waited
            self._interval.clips += 1
            done += 1
            self.stats.clips += 1
            log.info("job %s: attempt %d generated clip %d", self.job_id, self.attempt, clip.index)

            self.committer.raise_if_failed()
            if self.heartbeat.lost.is_set():
                raise repo.LeaseLost(self.job_id, self.worker_id, self.attempt)
            if plan.is_boundary(done):
                final = done == plan.clips_total
                self._boundary(stream, done, final)
                if not final:
                    index += 1
                    self._interval = self._open_interval(stream, watermark, index, done)
            self.stats.render_s = time.monotonic() - render_started
            self._clip_s = time.monotonic() - clip_started
            self._progress(plan, done, start.clip)
            self._check_flags(plan, done)

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
        )
        return Interval(index=index, first_clip=first_clip, encoder=encoder)

    def _boundary(self, stream: RenderStream, clip: int, final: bool, open: bool = False) -> None:
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
            written = self.scratch / "checkpoints" / f"{clip:06d}"
            shutil.rmtree(written, ignore_errors=True)
            stream.checkpoint(written)
        elif not final:
            state = capture_state(stream)
        done = time.monotonic()
        self.stats.capture_s += done - captured
        self.committer.submit(
            self._interval, clip, state, render_cost_s=done - waited, open=open, written=written
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
            stop=self.stop,
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
        try:
            with self.database.transaction() as s:
                held = repo.update_progress(
                    s,
                    self.job_id,
                    self.worker_id,
                    self.attempt,
                    clips_done=done,
                    frames_done=done * plan.infer_frames,
                    fps=fps,
                    eta_s=eta,
                    clip_s=self._clip_s,
                )
        except Exception as exc:  # progress can wait for the database; the render cannot
            log.warning("job %s: progress not recorded (%s)", self.job_id, exc)
            return
        if not held:
            self.heartbeat.lost.set()
            raise repo.LeaseLost(self.job_id, self.worker_id, self.attempt)

    def _cancel_requested(self) -> bool:
        try:
            with self.database.transaction() as s:
                return repo.is_cancel_requested(s, self.job_id)
        except Exception as exc:
            log.warning("job %s: cancel flag not read (%s)", self.job_id, exc)
            return False

    def _check_flags(self, plan: JobPlan, done: int) -> None:
        """Between clips: stop for a cancel request or a shutdown."""
        if self._cancel_requested():
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
        self._db(
            lambda s: repo.mark_canceled(s, self.job_id, self.worker_id, self.attempt),
            "record the cancel",
        )
        return Outcome.CANCELED

    def _release(self, done: int) -> Outcome:
        interval = self._interval
        if interval is not None and interval.clips > 0 and self._stream is not None:
            # Checkpoint here, with the open interval's frames, if that fits in what is left
            # of the shutdown timeout (judged by the last commit); else the clips since the
            # last checkpoint are regenerated by the next attempt.
            self.committer.wait()
            last = self.committer.timings[-1].seconds if self.committer.timings else 0.0
            if 2 * last < self.lc.shutdown_time_left():
                self._boundary(self._stream, done, final=False, open=True)
        self._close_stream()
        if self._interval is not None:
            self._interval.encoder.abort()
            self._interval = None
        self.committer.wait()
        self._db(
            lambda s: repo.release(
                s,
                self.job_id,
                self.worker_id,
                self.attempt,
                reason=f"worker {self.worker_id} shutting down",
            ),
            "release the job",
        )
        return Outcome.RELEASED

    # ---- finishing -----------------------------------------------------------------------

    def _finish(
        self, plan: JobPlan, segments: list[SegmentRef], audio_track: Future[Path]
    ) -> Outcome:
        self._db(
            lambda s: repo.mark_stitching(s, self.job_id, self.worker_id, self.attempt),
            "mark the job stitching",
        )
        started = time.monotonic()
        infos = [self._local_segment(seg) for seg in segments]
        hashes = [
            seg.frame_hashes if seg.frame_hashes is not None else list(iter_frame_hashes(info.path))
            for seg, info in zip(segments, infos, strict=True)
        ]
        output = self.scratch / "output.mp4"
        result = stitch([i.path for i in infos], audio_track.result(), output, self.config.audio)
        if result.frames != plan.frames_total:
            raise RuntimeError(
                f"the stitched video has {result.frames} frames, the job {plan.frames_total}"
            )
        self.stats.stitch_s = time.monotonic() - started

        started = time.monotonic()
        output_key = keys.output_key(self.job_id)
        self._upload(output_key, output, "video/mp4")
        self.lc.faults.hit("stitch")
        manifest = build_manifest(
            infos,
            output,
            metadata={
                "job_id": str(self.job_id),
                "tenant": plan.tenant,
                "seed": str(plan.seed),
                "size": plan.size,
                "model": self.config.engine.preset,
                "watermark": plan.watermark.text if plan.watermark.enabled else "",
            },
            segment_frame_hashes=hashes,
        )
        body = (json.dumps(manifest, indent=1) + "\n").encode()
        key = manifest_key(self.job_id)
        with_retries(
            lambda: self.storage.put_bytes(key, body, "application/json"),
            f"upload {key}",
            self.config.storage_retry,
            stop=self.stop,
        )
        self.stats.upload_s = time.monotonic() - started
        output_meta = {
            "bytes": result.bytes,
            "sha256": manifest["output"]["sha256"],
            "frames": result.frames,
            "duration_s": result.duration_s,
        }
        self._db(
            lambda s: repo.mark_succeeded(
                s, self.job_id, self.worker_id, self.attempt, output_key, output=output_meta
            ),
            "record the success",
        )
        self._clean_up_storage(segments)
        return Outcome.SUCCEEDED

    def _local_segment(self, seg: SegmentRef) -> SegmentInfo:
        """The segment as a local file, downloaded if this attempt did not encode it."""
        path = seg.path
        if path is None or not path.is_file():
            path = self.scratch / "segments" / f"{seg.index:05d}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            key = seg.key
            with_retries(
                lambda: self.storage.get_file(key, path),
                f"download {key}",
                self.config.storage_retry,
                stop=self.stop,
            )
            sha = file_sha256(path)
            if sha != seg.sha256:
                raise RuntimeError(
                    f"segment {key} in storage has sha256 {sha}, the record says {seg.sha256}"
                )
        return SegmentInfo(
            path=path,
            frames=seg.frames,
            bytes=seg.bytes,
            sha256=seg.sha256,
            duration_s=seg.frames / P.FPS,
        )

    def _upload(self, key: str, path: Path, content_type: str) -> None:
        with_retries(
            lambda: self.storage.put_file(key, path, content_type),
            f"upload {key}",
            self.config.storage_retry,
            stop=self.stop,
        )

    def _clean_up_storage(self, segments: list[SegmentRef]) -> None:
        """After success: checkpoints always go; segments unless kept (the output holds them)."""
        try:
            prune_checkpoints(self.storage, self.job_id, None, self.config.storage_retry)
            prefix = keys.segments_prefix(self.job_id)
            used = {seg.key for seg in segments}
            for key in self.storage.list(prefix):
                if not self.config.keep_segments or key not in used:
                    self.storage.delete(key)
        except Exception as exc:  # garbage only: the job has succeeded
            log.warning("job %s: storage clean-up incomplete: %s", self.job_id, exc)

    # ---- failures and database calls -----------------------------------------------------

    def _fail(self, exc: Exception) -> Outcome:
        retryable = is_retryable(exc)
        error = describe(exc)
        log.error(
            "job %s: attempt %d failed (%s): %s",
            self.job_id,
            self.attempt,
            "retryable" if retryable else "not retryable",
            error,
        )
        try:
            job = self._db(
                lambda s: repo.mark_failed(
                    s, self.job_id, self.worker_id, self.attempt, error, retryable=retryable
                ),
                "record the failure",
            )
        except repo.LeaseLost:
            return Outcome.LEASE_LOST
        except Exception:
            log.exception(
                "job %s: could not record the failure; its lease will expire", self.job_id
            )
            return Outcome.ABANDONED
        return Outcome.REQUEUED if job.status == JobStatus.QUEUED.value else Outcome.FAILED

    def _db(self, operation: Any, what: str) -> Any:
        """Run `operation(session)` in a transaction, retrying while the database is away."""

        def once() -> Any:
            with self.database.transaction() as s:
                return operation(s)

        try:
            return with_retries(once, what, self.config.database_retry, stop=self.stop)
        except repo.LeaseLost:
            self.heartbeat.lost.set()
            raise
