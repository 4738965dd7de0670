"""Closing an interval in the background: segment, checkpoint, then one database record.

Every N clips the render hands the interval it just finished (its segment encoder and the
stream state captured at that clip) to an `IntervalCommitter` and goes on generating. On the
committer's thread, in this order:

    1. close the segment encoder (it finishes encoding the interval's last frames)
    2. upload the segment to jobs/<id>/segments/<index:05d>.mp4 (a fixed key: idempotent)
    3. write the stream state to local files and upload them under
       jobs/<id>/checkpoints/<clip:06d>/, manifest.json last
    4. one transaction, guarded by the lease: the segment's row and `last_checkpoint_clip`
    5. delete the previous checkpoint (and any garbage) from storage

The database is the only resume point, and it moves only in step 4, after everything it points
at is stored: a crash at any instant leaves either the previous consistent point or the new
one, never a checkpoint that points past a segment that was not uploaded. What a crash leaves
in storage past the recorded point is overwritten by the next attempt or pruned in step 5.

A worker told to stop (SIGTERM) in the middle of an interval commits an *open* interval
instead: no segment, but a checkpoint at the current clip that also holds the interval's
frames so far (``open-interval.rgb``, uint8 RGB as generated, described by
``open-interval.json``). The next attempt encodes them again into the same segment before
its first new clip, so segment boundaries, and with them the encoded video, are exactly those
of a render that never stopped.

One interval is in flight at a time: the render waits for the previous commit only if it is
still running when the next boundary comes, which is also what bounds host memory to one
captured state.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from db.segments import Segment
from pipeline import state as state_io
from storage.base import Storage
from worker.backoff import with_retries
from worker.checkpoints import prune_checkpoints, upload_checkpoint
from worker.config import WorkerConfig
from worker.faults import FaultPlan
from worker.lease import LeasedJob
from worker.provenance import iter_frame_hashes
from worker.segments import SegmentEncoder
from worker.tiers import LocalTier, RemotePolicy

log = logging.getLogger(__name__)

OPEN_INTERVAL = "open-interval.json"
OPEN_INTERVAL_FRAMES = "open-interval.rgb"


@dataclass
class Interval:
    """The segment being encoded (its index, first clip and key are the encoder's)."""

    encoder: SegmentEncoder

    @property
    def index(self) -> int:
        return self.encoder.index

    @property
    def first_clip(self) -> int:
        return self.encoder.first_clip

    @property
    def clips(self) -> int:
        return self.encoder.clips_submitted


@dataclass(frozen=True)
class OpenInterval:
    """The unfinished interval a mid-interval checkpoint carries."""

    index: int
    first_clip: int
    clips: int
    frames: int
    width: int
    height: int
    frames_path: Path

    def read_frames(self) -> np.ndarray:
        """uint8 [frames, height, width, 3], as generated (before the mark)."""
        data = np.fromfile(self.frames_path, dtype=np.uint8)
        expected = self.frames * self.height * self.width * 3
        if data.size != expected:
            raise ValueError(
                f"{self.frames_path} holds {data.size} bytes, the interval needs {expected}"
            )
        return data.reshape(self.frames, self.height, self.width, 3)


def read_open_interval(directory: Path) -> OpenInterval | None:
    """The open interval stored in a checkpoint directory, or None if it holds none."""
    meta_path = directory / OPEN_INTERVAL
    frames_path = directory / OPEN_INTERVAL_FRAMES
    if not meta_path.is_file() or not frames_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    return OpenInterval(
        index=int(meta["index"]),
        first_clip=int(meta["first_clip"]),
        clips=int(meta["clips"]),
        frames=int(meta["frames"]),
        width=int(meta["width"]),
        height=int(meta["height"]),
        frames_path=frames_path,
    )


@dataclass
class CommitTiming:
    end_clip: int
    seconds: float
    checkpoint_bytes: int


@dataclass
class _Commit:
    interval: Interval
    end_clip: int
    state: dict[str, Any] | None
    """The stream state at `end_clip`; None at the end of the job (nothing left to resume)."""
    render_cost_s: float
    """What this boundary cost the generator (state capture, waiting for the previous commit)."""
    open: bool = False
    """The interval is unfinished: checkpoint its frames instead of recording a segment."""
    written: Path | None = None
    """A checkpoint directory the engine wrote itself (then `state` is None)."""
    remote: bool | None = None
    """Send the checkpoint to the bucket (True) or not (False) whatever the budget says; None:
    as the budget says (a graceful shutdown promotes its checkpoint when the upload fits)."""

    @property
    def checkpointed(self) -> bool:
        return self.state is not None or self.written is not None


@dataclass
class _Placed:
    """Where a boundary's checkpoint was written, and which tiers it reached."""

    directory: Path
    local: bool
    remote: bool = False
    bytes: int = 0


@dataclass
class IntervalCommitter:
    config: WorkerConfig
    leased: LeasedJob
    storage: Storage
    scratch: Path
    faults: FaultPlan
    committed: list[Segment] = field(default_factory=list)
    upload_rate: float | None = None
    """Bytes per second of this attempt's last checkpoint upload (None: none yet)."""
    last_bytes: int = 0
    """Size of this attempt's last checkpoint."""
    timings: list[CommitTiming] = field(default_factory=list)
    _executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="interval-commit")
    )
    _pending: Future[Segment | None] | None = None

    def __post_init__(self) -> None:
        self.local = LocalTier(self.config.local_root)
        self.policy = RemotePolicy(self.config.tiers)

    def place(self, clip: int) -> Path:
        """Where the checkpoint at `clip` is to be written: the local tier when it is on and
        has room (judged by the last checkpoint's size), else this attempt's scratch."""
        tiers = self.config.tiers
        if tiers.local and self.local.has_room(self.last_bytes, tiers):
            directory = self.local.directory(self.leased.job_id, clip)
        else:
            directory = self.scratch / "checkpoints" / f"{clip:06d}"
        shutil.rmtree(directory, ignore_errors=True)
        return directory

    def promote(self, clip: int) -> bool:
        """Upload the local checkpoint at `clip` to the bucket and record it there (a
        graceful shutdown: the node may not come back). False if it is not here or not sound."""
        directory = self.local.directory(self.leased.job_id, clip)
        if not self.local.valid(directory, verify=False):
            return False
        nbytes = self._upload(clip, directory)
        self.leased.record_interval(None, clip, remote=True, bytes=nbytes)
        self._prune_bucket(clip)
        return True

    @property
    def busy(self) -> bool:
        return self._pending is not None and not self._pending.done()

    def submit(
        self,
        interval: Interval,
        end_clip: int,
        state: dict[str, Any] | None,
        *,
        render_cost_s: float = 0.0,
        open: bool = False,
        written: Path | None = None,
        remote: bool | None = None,
    ) -> None:
        """Commit `interval` in the background (the previous commit must be finished).

        The checkpoint at `end_clip` is `state` (written to files here) or `written` (a
        directory the engine wrote); neither at the end of the job. `open`: the interval
        stops short of its boundary (shutdown); its frames so far go into the checkpoint and
        no segment is recorded.
        """
        if self._pending is not None:
            raise RuntimeError("the previous interval is still being committed; wait() first")
        commit = _Commit(interval, end_clip, state, render_cost_s, open, written, remote)
        if open and (not commit.checkpointed or interval.encoder.raw_copy is None):
            raise ValueError("an open interval needs a checkpoint and a raw copy of frames")
        self._pending = self._executor.submit(self._commit, commit)

    def wait(self) -> None:
        """Wait for the commit in flight, if any; raise what it raised."""
        pending, self._pending = self._pending, None
        if pending is not None:
            segment = pending.result()
            if segment is not None:
                self.committed.append(segment)

    def raise_if_failed(self) -> None:
        """Between clips: surface a failed commit without waiting for a running one."""
        if self._pending is not None and self._pending.done():
            self.wait()

    def shutdown(self) -> None:
        """Stop: the commit in flight is waited for (its errors are only logged)."""
        try:
            self.wait()
        except Exception as exc:
            log.warning("job %s: the last interval was not committed: %s", self.leased.job_id, exc)
        self._executor.shutdown(wait=True)

    # -- the committer's thread --------------------------------------------------------

    def _commit(self, c: _Commit) -> Segment | None:
        started = time.monotonic()
        interval = c.interval
        segment: Segment | None = interval.encoder.close()
        assert segment is not None and segment.path is not None
        raw = interval.encoder.raw_copy
        leased = self.leased
        stop = leased.stop

        placed: _Placed | None = None
        if c.open:
            segment.path.unlink(missing_ok=True)  # re-encoded whole by the next attempt
            assert raw is not None
            placed = self._checkpoint(c, open_interval=(interval, segment.frames, raw))
            segment = None
        else:
            if raw is not None:
                raw.unlink(missing_ok=True)
            segment = dataclasses.replace(
                segment, frame_hashes=tuple(iter_frame_hashes(segment.path))
            )
            path = segment.path
            leased.verify()
            with_retries(
                lambda: self.storage.put_file(segment.key, path, "video/mp4"),
                f"upload {segment.key}",
                self.config.storage_retry,
                stop=stop,
            )
            self.faults.hit("segment_upload")
            placed = self._checkpoint(c) if c.checkpointed else None

        if placed is None:  # the end of the job: every segment is in the bucket
            leased.record_interval(segment, c.end_clip, remote=True, duration_s=c.render_cost_s)
        else:
            leased.record_interval(
                segment,
                c.end_clip,
                local_node=self.config.tiers.node if placed.local else None,
                remote=placed.remote,
                duration_s=c.render_cost_s,
                bytes=placed.bytes,
            )
            if placed.local:
                self.local.keep_only(leased.job_id, c.end_clip)
            else:
                shutil.rmtree(placed.directory, ignore_errors=True)
            if placed.remote:
                self._prune_bucket(c.end_clip)
        checkpoint_bytes = placed.bytes if placed is not None else 0
        seconds = time.monotonic() - started
        self.timings.append(CommitTiming(c.end_clip, seconds, checkpoint_bytes))
        log.info(
            "job %s: %s (clips %d-%d) and checkpoint at clip %d committed in %.2f s",
            leased.job_id,
            f"segment {interval.index}" if segment else f"open interval {interval.index}",
            interval.first_clip,
            c.end_clip - 1,
            c.end_clip,
            seconds,
        )
        return segment

    def _checkpoint(
        self, c: _Commit, open_interval: tuple[Interval, int, Path] | None = None
    ) -> _Placed:
        """Write the state at `c.end_clip` (and an open interval's frames) to the local tier or
        scratch, seal it, and upload it when the budget (or `c.remote`) says so."""
        if c.written is not None:
            directory = c.written
        else:
            directory = self.place(c.end_clip)
            assert c.state is not None
            # write_checkpoint writes manifest.json last; the open interval's files go in
            # before the seal and the upload, which sends the manifest last too.
            state_io.write_checkpoint(c.state, directory)
            c.state = None  # the host copy of the state can go as soon as it is on disk
        if open_interval is not None:
            interval, frames, raw = open_interval
            shutil.move(raw, directory / OPEN_INTERVAL_FRAMES)
            meta = {
                "index": interval.index,
                "first_clip": interval.first_clip,
                "clips": interval.clips,
                "frames": frames,
                "width": interval.encoder.width,
                "height": interval.encoder.height,
            }
            (directory / OPEN_INTERVAL).write_text(json.dumps(meta))
        local = directory.is_relative_to(self.local.root)
        nbytes = self.local.seal(directory) if local else _size(directory)
        self.last_bytes = nbytes
        if self.config.tiers.local and not local:
            self.leased.note(
                "local_checkpoint_skipped",
                f"no room on {self.config.tiers.node} for the checkpoint at clip {c.end_clip}",
                {"clip": c.end_clip, "bytes": nbytes, "node": self.config.tiers.node},
            )
        remote = c.remote if c.remote is not None else self.policy.due(nbytes)
        if remote:
            self._upload(c.end_clip, directory)
        # in neither tier (no room here, the budget spent): only the segment is recorded, and
        # the resume point stays at the previous checkpoint
        return _Placed(directory, local, remote, nbytes)

    def _upload(self, clip: int, directory: Path) -> int:
        started = time.monotonic()
        uploaded = upload_checkpoint(
            self.storage,
            self.leased.job_id,
            clip,
            directory,
            self.config.storage_retry,
            after_first_file=lambda: self.faults.hit("checkpoint_write"),
            before_each_file=self.leased.verify,
            stop=self.leased.stop,
        )
        self.upload_rate = uploaded / max(time.monotonic() - started, 1e-3)
        self.policy.uploaded()
        return uploaded

    def _prune_bucket(self, keep: int) -> None:
        try:
            prune_checkpoints(
                self.storage,
                self.leased.job_id,
                keep,
                self.config.storage_retry,
                stop=self.leased.stop,
            )
        except Exception as exc:  # garbage only: the next boundary or the end prunes it
            log.warning("job %s: could not prune old checkpoints: %s", self.leased.job_id, exc)


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
