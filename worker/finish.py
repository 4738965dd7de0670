"""Finishing a job: stitch its segments with the speech, upload the output and its provenance
manifest, record the success, then remove what the output makes unnecessary.

    stitching           the job's status (still under the lease)
    segments            each as a local file: this attempt's own, or downloaded (sha256 checked)
    stitch              stream copy of the segments + the AAC track muxed once (worker/stitch.py)
    upload              output.mp4, then output.manifest.json beside it
    succeeded           one transaction, guarded by the lease
    clean-up            checkpoints always, segments unless kept (best effort: garbage only)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from db.segments import Segment
from storage import keys
from storage.base import Storage
from worker.backoff import with_retries
from worker.checkpoints import prune_checkpoints
from worker.config import WorkerConfig
from worker.faults import FaultPlan
from worker.lease import LeasedJob
from worker.plan import JobPlan
from worker.provenance import build_manifest, iter_frame_hashes
from worker.segments import file_sha256
from worker.stitch import stitch
from worker.tiers import LocalTier

log = logging.getLogger(__name__)


def _frame_hashes(seg: Segment) -> tuple[str, ...]:
    """Known when this attempt encoded the segment; else read from its local file."""
    if seg.frame_hashes is not None:
        return seg.frame_hashes
    assert seg.path is not None, "a segment is made local before its frames are hashed"
    return tuple(iter_frame_hashes(seg.path))


@dataclass(frozen=True)
class FinishTiming:
    stitch_s: float
    upload_s: float


@dataclass
class Finisher:
    config: WorkerConfig
    leased: LeasedJob
    storage: Storage
    scratch: Path
    faults: FaultPlan

    def finish(self, plan: JobPlan, segments: list[Segment], audio_track: Path) -> FinishTiming:
        self.leased.stitching()
        started = time.monotonic()
        local = [self._local(seg) for seg in segments]
        output = self.scratch / "output.mp4"
        result = stitch([seg.path for seg in local], audio_track, output, self.config.audio)
        if result.frames != plan.frames_total:
            raise RuntimeError(
                f"the stitched video has {result.frames} frames, the job {plan.frames_total}"
            )
        stitched = time.monotonic()

        output_key = keys.output_key(plan.job_id)
        self._upload_file(output_key, output, "video/mp4")
        self.faults.hit("stitch")
        manifest = build_manifest(
            local,
            output,
            metadata={
                "job_id": str(plan.job_id),
                "tenant": plan.tenant,
                "seed": str(plan.params.seed),
                "size": plan.params.size,
                "model": self.config.engine.preset,
                "precision": plan.precision,
                "watermark": plan.watermark.text if plan.watermark.enabled else "",
                **_speech(plan),
            },
            segment_frame_hashes=[_frame_hashes(seg) for seg in local],
        )
        body = (json.dumps(manifest, indent=1) + "\n").encode()
        key = keys.manifest_key(plan.job_id)
        self.leased.verify()
        with_retries(
            lambda: self.storage.put_bytes(key, body, "application/json"),
            f"upload {key}",
            self.config.storage_retry,
            stop=self.leased.stop,
        )
        uploaded = time.monotonic()
        self.leased.succeed(
            output_key,
            {
                "bytes": result.bytes,
                "sha256": manifest["output"]["sha256"],
                "frames": result.frames,
                "duration_s": result.duration_s,
            },
        )
        self._clean_up(segments)
        return FinishTiming(stitch_s=stitched - started, upload_s=uploaded - stitched)

    def _local(self, seg: Segment) -> Segment:
        """The segment with a local file: this attempt's own, or downloaded and checked."""
        if seg.path is not None and seg.path.is_file():
            return seg
        path = self.scratch / "segments" / f"{seg.index:05d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        with_retries(
            lambda: self.storage.get_file(seg.key, path),
            f"download {seg.key}",
            self.config.storage_retry,
            stop=self.leased.stop,
        )
        sha = file_sha256(path)
        if sha != seg.sha256:
            raise RuntimeError(
                f"segment {seg.key} in storage has sha256 {sha}, the record says {seg.sha256}"
            )
        return dataclasses.replace(seg, path=path)

    def _upload_file(self, key: str, path: Path, content_type: str) -> None:
        self.leased.verify()
        with_retries(
            lambda: self.storage.put_file(key, path, content_type),
            f"upload {key}",
            self.config.storage_retry,
            stop=self.leased.stop,
        )

    def _clean_up(self, segments: list[Segment]) -> None:
        """After success: checkpoints always go (the bucket's and this node's); segments
        unless kept (the output holds them)."""
        job_id = self.leased.job_id
        LocalTier(self.config.local_root).keep_only(job_id, None)
        try:
            prune_checkpoints(self.storage, job_id, None, self.config.storage_retry)
            used = {seg.key for seg in segments}
            for key in self.storage.list(keys.segments_prefix(job_id)):
                if not self.config.keep_segments or key not in used:
                    self.storage.delete(key)
        except Exception as exc:  # garbage only: the job has succeeded
            log.warning("job %s: storage clean-up incomplete: %s", job_id, exc)


def _speech(plan: JobPlan) -> dict[str, str]:
    """Provenance of speech the API synthesised from the job's script (none for recordings)."""
    script = plan.params.script
    if script is None:
        return {}
    return {"speech": f"synthesised from a script by {script.engine} ({script.language}, "
                      f"voice {script.voice})"}  # fmt: skip
