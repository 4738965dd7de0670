"""Two checkpoint tiers, as large training systems keep them: frequent checkpoints on the
node's own disk, rarer ones in the bucket.

Local tier: every checkpoint interval (N clips) the stream state is written to
`<local root>/<job id>/<clip:06d>/` beside generation, then sealed: `tier.json`, written last,
lists every file with its size and the CRC-32 of each of its 64 MiB chunks (chunks, so that
sealing and checking tens of GB run on several cores: a worker checks while its model loads
and its stream opens). A directory that is not sealed, or whose files do not match their
seal, is never resumed from. Disk use is bounded: a job keeps its newest local
checkpoint only, the free space is checked before a write (a full disk, or a node over its
budget, skips the local checkpoint with a warning; the render goes on), and what no job of
this node needs any more is removed.

Remote tier: the bucket receives a checkpoint only when the node's upload budget allows it
(its size over the budget's bytes per second since the last upload), or when the longest
interval the operator allows has passed, and on a graceful shutdown (the newest local
checkpoint is promoted when the upload fits in the time left). Segments always go to the
bucket: they are the output.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SEAL = "tier.json"
CRC_CHUNK = 64 << 20
CRC_THREADS = 4
"""Threads that sum a checkpoint's CRCs: the sums run beside generation (the seal) and beside
a resume's model load, restore and compiles (the check), which need the host's cores too.
Four checked a 48 GB checkpoint in 10.9 s beside a resume's 11.3 s open on an H200 host
(docs/benchmarks.md, run j)."""


@dataclass(frozen=True)
class TierSettings:
    node: str
    """This node's name: where its local checkpoints are (LONGTAKE_NODE_ID)."""
    local: bool = True
    """Keep checkpoints on the node's disk; False sends every checkpoint to the bucket."""
    local_root: Path | None = None
    """Where they go (default: <scratch>/checkpoints); must survive a worker's restart."""
    local_max_bytes: int = 0
    """The most this node's local checkpoints may take together (0: what the disk has)."""
    local_reserve_bytes: int = 10 << 30
    """Free space left untouched on the local disk after a checkpoint is written."""
    verify: bool = True
    """Check every file's CRC-32 against its seal before resuming from it."""
    upload_bytes_per_s: float = 50e6
    """The node's budget for checkpoint uploads: on average no more than this many bytes a
    second go to the bucket (segments aside)."""
    upload_max_interval_s: float = 1800.0
    """A checkpoint reaches the bucket at least this often, whatever the budget (what losing
    the node may cost at most); 0: only the budget decides."""
    prefer_local_s: float = 120.0
    """A requeued job whose newest checkpoint is on this node waits this long for a worker
    here before any worker may take it."""

    def __post_init__(self) -> None:
        if not self.node:
            raise ValueError("a worker needs a node name for its local checkpoints")
        if self.upload_bytes_per_s <= 0:
            raise ValueError("the checkpoint upload budget must be positive (bytes per second)")


class RemotePolicy:
    """When a checkpoint goes to the bucket: when the budget has refilled for its size, or
    when the longest interval has passed. With no local tier, always."""

    def __init__(self, settings: TierSettings, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self._clock = clock
        self._last = clock()  # an attempt starts from a checkpoint the bucket or disk has

    def due(self, state_bytes: int) -> bool:
        s = self.settings
        if not s.local:
            return True
        elapsed = self._clock() - self._last
        if s.upload_max_interval_s > 0 and elapsed >= s.upload_max_interval_s:
            return True
        return elapsed >= state_bytes / s.upload_bytes_per_s

    def uploaded(self) -> None:
        self._last = self._clock()


class LocalTier:
    def __init__(self, root: Path):
        self.root = root

    def directory(self, job_id: uuid.UUID, clip: int) -> Path:
        return self.root / str(job_id) / f"{clip:06d}"

    def has_room(self, need_bytes: int, settings: TierSettings) -> bool:
        """Whether a checkpoint of `need_bytes` fits the disk's free space (keeping the
        reserve) and the node's budget."""
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if free - need_bytes < settings.local_reserve_bytes:
            return False
        return not settings.local_max_bytes or self.bytes() + need_bytes <= settings.local_max_bytes

    def bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def seal(self, directory: Path) -> int:
        """Write the seal last (atomically); returns the checkpoint's bytes."""
        paths = [
            p
            for p in sorted(directory.iterdir())
            if p.is_file() and p.name != SEAL and not p.name.endswith(".tmp")
        ]
        crcs = _chunk_crcs(paths)
        files = {p.name: {"bytes": p.stat().st_size, "crc32": crcs[p]} for p in paths}
        tmp = directory / (SEAL + ".tmp")
        seal = {"chunk_bytes": CRC_CHUNK, "files": files}
        tmp.write_text(json.dumps(seal, indent=1, sort_keys=True))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.replace(directory / SEAL)
        return sum(f["bytes"] for f in files.values())

    def valid(self, directory: Path, *, verify: bool) -> bool:
        """Sealed, and every file as the seal says (sizes; CRC-32s when `verify`)."""
        try:
            seal = json.loads((directory / SEAL).read_text())
            if seal["chunk_bytes"] != CRC_CHUNK:
                return False
            paths = {directory / name: want for name, want in seal["files"].items()}
            for path, want in paths.items():
                if path.stat().st_size != want["bytes"]:
                    return False
            if verify:
                crcs = _chunk_crcs(list(paths))
                if any(crcs[path] != want["crc32"] for path, want in paths.items()):
                    return False
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return bool(seal["files"])

    def keep_only(self, job_id: uuid.UUID, clip: int | None) -> None:
        """Remove the job's local checkpoints but the one at `clip` (all with None)."""
        job_dir = self.root / str(job_id)
        if not job_dir.is_dir():
            return
        for d in job_dir.iterdir():
            if clip is None or d.name != f"{clip:06d}":
                shutil.rmtree(d, ignore_errors=True)
        if clip is None:
            shutil.rmtree(job_dir, ignore_errors=True)

    def sweep(
        self, needed: Callable[[list[uuid.UUID]], dict[uuid.UUID, int]], min_age_s: float
    ) -> int:
        """Remove what no job of this node needs: `needed(job ids)` says, of the jobs found
        here, which clip each still resumes from on this node. Directories younger than
        `min_age_s` are left alone (a checkpoint being written, not yet recorded)."""
        if not self.root.is_dir():
            return 0
        found: dict[uuid.UUID, Path] = {}
        for d in self.root.iterdir():
            try:
                found[uuid.UUID(d.name)] = d
            except ValueError:
                continue
        keep = needed(list(found))
        removed = 0
        now = time.time()
        for job_id, job_dir in found.items():
            for d in job_dir.iterdir():
                if keep.get(job_id) == _clip_of(d) or now - d.stat().st_mtime < min_age_s:
                    continue
                shutil.rmtree(d, ignore_errors=True)
                removed += 1
            if not any(job_dir.iterdir()):
                job_dir.rmdir()
        return removed


def _clip_of(directory: Path) -> int | None:
    return int(directory.name) if directory.name.isdigit() else None


def _chunk_crcs(paths: list[Path]) -> dict[Path, list[int]]:
    """Each file's CRC-32 per CRC_CHUNK bytes, chunks computed by CRC_THREADS threads (zlib
    releases the GIL while it sums)."""
    jobs = [(p, at) for p in paths for at in range(0, max(p.stat().st_size, 1), CRC_CHUNK)]
    buffers = threading.local()  # a chunk buffer per thread, reused: no fresh pages per chunk

    def crc(job: tuple[Path, int]) -> int:
        buf = getattr(buffers, "buf", None)
        if buf is None:
            buf = buffers.buf = bytearray(CRC_CHUNK)
        return _crc32_at(*job, buf)

    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), CRC_THREADS))) as pool:
        sums = list(pool.map(crc, jobs))
    out: dict[Path, list[int]] = {p: [] for p in paths}
    for (path, _), value in zip(jobs, sums, strict=True):
        out[path].append(value)
    return out


def _crc32_at(path: Path, offset: int, buf: bytearray) -> int:
    """The CRC-32 of the CRC_CHUNK bytes (fewer at the end) of `path` from `offset`."""
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY)
    try:
        got = 0
        while got < len(buf):
            n = os.preadv(fd, [view[got:]], offset + got)
            if n == 0:
                break
            got += n
        return zlib.crc32(view[:got])
    finally:
        os.close(fd)
