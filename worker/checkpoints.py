"""Stream checkpoints in object storage: upload (manifest last), download, prune.

A checkpoint is the directory `pipeline.state.write_checkpoint` writes (one safetensors shard
per state group, then ``manifest.json``), stored under ``jobs/<id>/checkpoints/<clip:06d>/``.
The manifest is uploaded last, so a checkpoint whose upload was cut short has none. The
database's ``last_checkpoint_clip`` is still the only resume point: it is recorded after the
whole upload, and anything else under ``checkpoints/`` is garbage, overwritten or pruned.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from storage import keys
from storage.base import Storage
from worker.backoff import with_retries
from worker.config import RetryPolicy
from worker.errors import JobInputError

MANIFEST = "manifest.json"


def upload_checkpoint(
    storage: Storage,
    job_id: uuid.UUID,
    clip: int,
    directory: Path,
    policy: RetryPolicy,
    *,
    after_first_file: Callable[[], None] | None = None,
    before_each_file: Callable[[], None] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Upload a checkpoint directory, manifest.json last; return the bytes uploaded.

    `before_each_file` runs before every write (the worker confirms its lease there: raising
    stops the upload)."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{directory} has no {MANIFEST}: not a complete checkpoint")
    # A manifest left by an earlier, unrecorded upload to the same clip must not describe the
    # shards while they are being replaced.
    manifest_key = keys.checkpoint_manifest_key(job_id, clip)
    if before_each_file is not None:
        before_each_file()
    with_retries(lambda: storage.delete(manifest_key), f"delete {manifest_key}", policy, stop=stop)
    total = 0
    for i, path in enumerate([*files, manifest]):
        key = keys.checkpoint_key(job_id, clip, path.name)
        if before_each_file is not None:
            before_each_file()
        with_retries(
            lambda k=key, p=path: storage.put_file(k, p), f"upload {key}", policy, stop=stop
        )
        total += path.stat().st_size
        if i == 0 and after_first_file is not None:
            after_first_file()
    return total


def download_checkpoint(
    storage: Storage,
    job_id: uuid.UUID,
    clip: int,
    dest: Path,
    policy: RetryPolicy,
    *,
    stop: threading.Event | None = None,
) -> Path:
    """Fetch the checkpoint at `clip` into `dest` (JobInputError if it is not complete)."""
    prefix = keys.checkpoint_prefix(job_id, clip)
    names = [
        key[len(prefix) :]
        for key in with_retries(lambda: storage.list(prefix), f"list {prefix}", policy, stop=stop)
    ]
    if MANIFEST not in names:
        raise JobInputError(f"checkpoint {prefix} has no {MANIFEST}; it cannot be resumed from")
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        if "/" in name:
            continue  # nothing nests in a checkpoint; ignore what does not belong
        key = prefix + name
        with_retries(
            lambda k=key, n=name: storage.get_file(k, dest / n),
            f"download {key}",
            policy,
            stop=stop,
        )
    return dest


def prune_checkpoints(
    storage: Storage,
    job_id: uuid.UUID,
    keep: int | None,
    policy: RetryPolicy,
    *,
    stop: threading.Event | None = None,
) -> int:
    """Delete every checkpoint of the job except the one at clip `keep` (all when None)."""
    root = keys.checkpoints_prefix(job_id)
    if keep is None:
        return with_retries(
            lambda: storage.delete_prefix(root), f"delete {root}", policy, stop=stop
        )
    kept = keys.checkpoint_prefix(job_id, keep)
    stale = [
        key
        for key in with_retries(lambda: storage.list(root), f"list {root}", policy, stop=stop)
        if not key.startswith(kept)
    ]
    for key in stale:
        with_retries(lambda k=key: storage.delete(k), f"delete {key}", policy, stop=stop)
    return len(stale)
