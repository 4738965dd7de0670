"""Helpers for the render lifecycle tests: jobs as the API stores them, probes of the output,
the worker's per-clip hook, and its per-clip log lines (for workers in other processes)."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from db import job_store
from db.database import Database
from db.models import Job
from db.params import ImageFacts, presenter_key
from pipeline.params import frames_for_duration
from storage import keys
from storage.base import Storage
from tests import media
from tests.factories import job_params
from worker.config import EngineSpec, RetryPolicy, WorkerConfig
from worker.lifecycle import ClipDone, Lifecycle, Outcome
from worker.provenance import iter_frame_hashes

# Small and quick with the tiny model: 64x64, clips of 12 frames, 2.3 s of speech = 5 clips.
CLIPS = 5
INFER_FRAMES = 12
CHECKPOINT_EVERY = 2
SEED = 7
SPEECH_S = round(CLIPS * INFER_FRAMES / 25 - 0.1, 3)
DELIVERED = frames_for_duration(SPEECH_S)
"""Frames of the video: it ends with the speech (58), not with the fifth clip (60)."""

CLIP_LINE = re.compile(
    r"job (?P<job>[0-9a-f-]{36}): attempt (?P<attempt>\d+) generated clip (?P<clip>\d+)"
)


def make_job(
    database: Database,
    storage: Storage,
    *,
    image: bytes | None = None,
    audio: bytes | None = None,
    clips: int = CLIPS,
    checkpoint_every: int = CHECKPOINT_EVERY,
    max_attempts: int = 3,
    precision: str = "bf16",
    tenant: str = "default",
    priority: int = 0,
    **params: Any,
) -> uuid.UUID:
    """Store the inputs and insert a queued job with its outbox row, as the API does.

    The speech lasts 0.1 s less than the clips (the last clip is padded with silence).
    """
    job_id = uuid.uuid4()
    image_key = keys.input_key(job_id, "image", "png")
    audio_key = keys.input_key(job_id, "audio", "wav")
    seconds = round(clips * INFER_FRAMES / 25 - 0.1, 3)  # SPEECH_S for the standard job
    image = image if image is not None else media.png(128, 128)
    storage.put_bytes(image_key, image)
    storage.put_bytes(audio_key, audio if audio is not None else media.wav(seconds))
    all_params = job_params(
        size="64*64",
        width=64,
        height=64,
        infer_frames=INFER_FRAMES,
        seed=SEED,
        checkpoint_every=checkpoint_every,
        audio_duration_s=seconds,
        image=ImageFacts(width=128, height=128, format="PNG"),
        **params,
    )
    with database.transaction() as s:
        job_store.create_job(
            s,
            job_store.NewJob(
                id=job_id,
                tenant=tenant,
                params=all_params,
                image_key=image_key,
                audio_key=audio_key,
                clips_total=clips,
                max_attempts=max_attempts,
                precision=precision,
                priority=priority,
                presenter_key=presenter_key(
                    tenant, hashlib.sha256(image).hexdigest(), all_params, precision
                ),
            ),
        )
    return job_id


def job(database: Database, job_id: uuid.UUID) -> Job:
    with database.transaction() as s:
        return job_store.get_job(s, job_id)


def events(database: Database, job_id: uuid.UUID) -> list[tuple[str, str]]:
    with database.transaction() as s:
        return [(e.event, e.reason) for e in job_store.list_events(s, job_id)]


def segments(database: Database, job_id: uuid.UUID) -> list[tuple[int, int, int]]:
    """(index, first_clip, clips) of the recorded segments."""
    with database.transaction() as s:
        return [(r.index, r.first_clip, r.clips) for r in job_store.list_segments(s, job_id)]


@dataclass
class Probe:
    video_streams: int
    audio_streams: int
    frames: int
    fps: Fraction
    width: int
    height: int
    video_s: float
    audio_s: float
    audio_codec: str


def probe(path: Path) -> Probe:
    """What the file holds, counted by decoding (not from the container's claims)."""
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        frames = sum(1 for _ in c.decode(v))
        audio_s = float(a.duration * a.time_base)
        return Probe(
            video_streams=len(c.streams.video),
            audio_streams=len(c.streams.audio),
            frames=frames,
            fps=Fraction(v.average_rate),
            width=v.codec_context.width,
            height=v.codec_context.height,
            video_s=frames / float(v.average_rate),
            audio_s=audio_s,
            audio_codec=a.codec_context.name,
        )


class ClipLog:
    """The worker's `on_clip` hook for tests: records every generated clip and runs the
    test's own `hooks(done)` synchronously, in the worker's thread, right after the clip."""

    def __init__(self) -> None:
        self.clips: list[ClipDone] = []
        self.hooks: list[Callable[[ClipDone], None]] = []
        self.raw: dict[tuple[uuid.UUID, int, int], str] = {}
        """sha256 of each clip's frames as generated, by (job, attempt, clip)."""

    def __call__(self, done: ClipDone) -> None:
        self.clips.append(done)
        self.raw[(done.job_id, done.attempt, done.clip)] = hashlib.sha256(
            done.frames.tobytes()
        ).hexdigest()
        for hook in list(self.hooks):
            hook(done)

    def raw_by_clip(self, job_id: uuid.UUID) -> dict[int, tuple[int, str]]:
        """clip -> (the attempt that generated it last, the hash of its frames)."""
        out: dict[int, tuple[int, str]] = {}
        for (j, attempt, clip), digest in self.raw.items():
            if j == job_id and attempt >= out.get(clip, (0, ""))[0]:
                out[clip] = (attempt, digest)
        return out

    def generated(self, job_id: uuid.UUID, attempt: int | None = None) -> list[int]:
        return [
            c.clip
            for c in self.clips
            if c.job_id == job_id and (attempt is None or c.attempt == attempt)
        ]


def parse_clip_lines(text: str) -> list[tuple[str, int, int]]:
    return [(m["job"], int(m["attempt"]), int(m["clip"])) for m in CLIP_LINE.finditer(text)]


# --------------------------------------------------------------------------- in-process workers

FAST_RETRY = RetryPolicy(attempts=3, base_delay_s=0.05, max_delay_s=0.2)


def config(tmp_path: Path, **overrides) -> WorkerConfig:
    fields = dict(
        scratch_dir=tmp_path / "scratch",
        lease_s=30,
        engine=EngineSpec(preset="tiny", device="cpu", torch_threads=1),
        storage_retry=FAST_RETRY,
        database_retry=FAST_RETRY,
    )
    fields.update(overrides)
    return WorkerConfig(**fields)


@dataclass(frozen=True)
class Reference:
    frame_hashes: list[str]
    """Decoded frames of the standard job's output, rendered without interruption."""
    raw: dict[int, str]
    """Each clip's frames as the generator made them (sha256), by clip."""


def shut_down_during_clip_2(lifecycle: Lifecycle, job_id: uuid.UUID, clip_log) -> Outcome:
    """Run the job's first attempt, asking the worker to shut down (as SIGTERM does) while
    clip 2 is being finished."""

    def hook(done: ClipDone) -> None:
        if (done.job_id, done.attempt, done.clip) == (job_id, 1, 2):
            lifecycle.request_shutdown()

    clip_log.hooks.append(hook)
    return lifecycle.run(job_id)


def output_hashes(storage, job_id, tmp_path: Path) -> list[str]:
    path = tmp_path / f"{job_id}.mp4"
    storage.get_file(keys.output_key(job_id), path)
    return list(iter_frame_hashes(path))


def explain_difference(
    clip_log: ClipLog, job_id: uuid.UUID, expected: Reference, cut: object
) -> str:
    """What a failed exactness check needs: which clips' raw frames differ, from which
    attempt, and the engine's cut (raw frames equal but the video not: the encoder)."""
    lines = [f"engine cut: {cut}"]
    for clip, (attempt, digest) in sorted(clip_log.raw_by_clip(job_id).items()):
        same = "same" if expected.raw.get(clip) == digest else "DIFFERENT"
        lines.append(f"clip {clip}: attempt {attempt} raw {digest[:12]} ({same} as uninterrupted)")
    return "\n".join(lines)
