"""Object keys: validation and the layout of a job's objects.

    jobs/<job_id>/inputs/{image,audio}.<ext>
    jobs/<job_id>/segments/<index:05d>.mp4        one segment per checkpoint interval
    jobs/<job_id>/checkpoints/<clip:06d>/...      stream state at a clip boundary + manifest.json
    jobs/<job_id>/output.mp4                       the stitched video with its audio track
    jobs/<job_id>/output.manifest.json             its provenance manifest
    uploads/<upload_id>.<ext>                      an input shared by any number of jobs

Keys are relative to the storage's own prefix and use `/` separators.
"""

from __future__ import annotations

import re
import uuid
from typing import Literal

MAX_KEY_LENGTH = 900  # S3 allows 1024 bytes; leave room for a deployment prefix
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_EXT = re.compile(r"^[a-z0-9]{1,8}$")


class InvalidKey(ValueError):
    pass


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative object key, else raise InvalidKey saying why."""
    if not isinstance(key, str) or not key:
        raise InvalidKey("object key is empty")
    if len(key.encode()) > MAX_KEY_LENGTH:
        raise InvalidKey(f"object key is longer than {MAX_KEY_LENGTH} bytes")
    if key.startswith("/") or re.match(r"^[A-Za-z]:", key):
        raise InvalidKey(f"object key {key!r} is absolute; keys are relative paths")
    if "\\" in key or _CONTROL.search(key):
        raise InvalidKey(f"object key {key!r} contains a backslash or a control character")
    for part in key.split("/"):
        if part == "":
            raise InvalidKey(f"object key {key!r} has an empty path segment")
        if part.startswith("."):
            raise InvalidKey(f"object key {key!r} has a segment starting with '.' (no '..')")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty (everything) or a valid key, optionally ending in '/'."""
    if prefix:
        validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def check_filename(name: str) -> str:
    """A client-supplied file name: a plain name, no directories and no traversal."""
    if not name or name in (".", ".."):
        raise InvalidKey("file name is empty")
    if "/" in name or "\\" in name or ".." in name or _CONTROL.search(name):
        raise InvalidKey(f"file name {name!r} must be a plain name without directories or '..'")
    if len(name) > 255:
        raise InvalidKey("file name is longer than 255 characters")
    return name


def job_prefix(job_id: uuid.UUID) -> str:
    return f"jobs/{job_id}/"


def input_key(job_id: uuid.UUID, kind: Literal["image", "audio"], ext: str) -> str:
    if kind not in ("image", "audio"):
        raise ValueError(f"input kind must be 'image' or 'audio', got {kind!r}")
    if not _EXT.match(ext):
        raise ValueError(f"file extension must be 1-8 lowercase letters or digits, got {ext!r}")
    return f"{job_prefix(job_id)}inputs/{kind}.{ext}"


def segment_key(job_id: uuid.UUID, index: int) -> str:
    if index < 0:
        raise ValueError(f"segment index must be >= 0, got {index}")
    return f"{job_prefix(job_id)}segments/{index:05d}.mp4"


def segments_prefix(job_id: uuid.UUID) -> str:
    return f"{job_prefix(job_id)}segments/"


def checkpoint_prefix(job_id: uuid.UUID, clip: int) -> str:
    if clip < 0:
        raise ValueError(f"checkpoint clip must be >= 0, got {clip}")
    return f"{job_prefix(job_id)}checkpoints/{clip:06d}/"


def checkpoints_prefix(job_id: uuid.UUID) -> str:
    return f"{job_prefix(job_id)}checkpoints/"


def checkpoint_key(job_id: uuid.UUID, clip: int, name: str) -> str:
    return validate_key(checkpoint_prefix(job_id, clip) + name)


def checkpoint_manifest_key(job_id: uuid.UUID, clip: int) -> str:
    return checkpoint_key(job_id, clip, "manifest.json")


def output_key(job_id: uuid.UUID) -> str:
    return f"{job_prefix(job_id)}output.mp4"


def manifest_key(job_id: uuid.UUID) -> str:
    """The output's provenance manifest, beside it."""
    return f"{job_prefix(job_id)}output.manifest.json"


_UPLOAD_ID = re.compile(r"^upl_[a-z0-9]{8,36}$")


def upload_key(upload_id: str, ext: str) -> str:
    """An uploaded input, referenced by the jobs that use it (their image_key / audio_key)."""
    if not _UPLOAD_ID.match(upload_id):
        raise ValueError(f"upload id must look like upl_<hex>, got {upload_id!r}")
    if not _EXT.match(ext):
        raise ValueError(f"file extension must be 1-8 lowercase letters or digits, got {ext!r}")
    return f"uploads/{upload_id}.{ext}"
