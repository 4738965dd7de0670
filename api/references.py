"""Inputs given by reference instead of uploaded with the job: `s3://bucket/key` in an allowed
input bucket (read, checked, then stored), or the id of an earlier upload (`upl_...`, checked
when it was uploaded and stored once for every job that uses it)."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from starlette.datastructures import UploadFile

from api.config import InputLimits
from api.errors import ApiError
from api.inputs import AudioInfo, ImageInfo
from db import uploads
from db.database import Database
from db.uploads import UploadRecord
from storage import keys
from storage.base import ObjectNotFound, StorageError
from storage.s3 import S3Reader, parse_s3_uri

Kind = Literal["image", "audio"]
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class LocalInput:
    """A file received with the request or downloaded from S3, not yet checked or stored."""

    path: Path
    sha256: str
    source: str | None = None
    """The s3:// reference it came from."""


@dataclass(frozen=True)
class StoredInput:
    """An upload: checked and stored already."""

    upload: UploadRecord

    @property
    def key(self) -> str:
        return self.upload.key

    def info(self) -> ImageInfo | AudioInfo:
        cls = ImageInfo if self.upload.kind == "image" else AudioInfo
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in self.upload.info.items() if k in fields})


class UploadCache:
    """Uploads this process has looked up. An upload never changes once written, so a job
    that names one needs no query for it after the first.

    It holds records (plain, immutable data), never ORM rows: a row belongs to the session
    that loaded it and is unusable once that session rolls back, as it does for every job
    refused inside its transaction."""

    def __init__(self, size: int = 4096):
        self.size = size
        self._records: dict[tuple[str, str], UploadRecord] = {}
        self._lock = threading.Lock()

    def get(self, tenant: str, upload_id: str) -> UploadRecord | None:
        return self._records.get((tenant, upload_id))

    def put(self, record: UploadRecord) -> None:
        with self._lock:
            if len(self._records) >= self.size:
                self._records.clear()
            self._records[(record.tenant, record.id)] = record


def input_sha256(got: LocalInput | StoredInput) -> str:
    """The sha256 of an input's bytes (computed when it was received, or uploaded)."""
    return got.upload.sha256 if isinstance(got, StoredInput) else got.sha256


def info_dict(info: ImageInfo | AudioInfo) -> dict[str, Any]:
    return dataclasses.asdict(info)


_KEY_SEGMENT = r"[^/\\\x00-\x1f\x7f.][^/\\\x00-\x1f\x7f]*"


def reference_pattern(buckets: Sequence[str]) -> str:
    """The inputs a request may name on a server with these input buckets, as a pattern:
    an upload id, or an s3:// URI of an object in one of the buckets whose key is valid
    (storage.keys.validate_key: relative, no empty or dot-led segments, no backslash or
    control characters)."""
    if not buckets:
        return uploads.UPLOAD_ID_PATTERN
    names = "|".join(bucket.replace(".", r"\.") for bucket in buckets)
    key = rf"(?![A-Za-z]:){_KEY_SEGMENT}(/{_KEY_SEGMENT})*"
    return f"{uploads.UPLOAD_ID_PATTERN}|^s3://({names})/{key}$"


def reference_kind(value: str, field: str) -> Literal["s3", "upload"]:
    if value.startswith("s3://"):
        return "s3"
    if uploads.is_upload_id(value):
        return "upload"
    raise ApiError(
        422,
        "invalid_reference",
        f"{field}: {value[:100]!r} is neither an s3:// URI nor an upload id (upl_...)",
        field,
    )


def check_stored(stored: StoredInput, kind: Kind, limits: InputLimits, field: str) -> None:
    """An upload used as `kind` by a tenant whose limits may have changed since."""
    upload = stored.upload
    if upload.kind != kind:
        raise ApiError(
            422,
            "invalid_reference",
            f"{field}: {upload.id} is an {upload.kind}, not an {kind}",
            field,
        )
    limit = limits.max_image_bytes if kind == "image" else limits.max_audio_bytes
    if upload.bytes > limit:
        raise ApiError(
            413, f"{kind}_too_large", f"{field}: {upload.id} is {upload.bytes} bytes; the limit "
            f"is {limit} bytes", field,
        )  # fmt: skip
    duration = upload.info.get("duration_s")
    if kind == "audio" and duration is not None and duration > limits.max_audio_seconds:
        raise ApiError(
            422,
            "audio_too_long",
            f"{field}: {upload.id} lasts {duration:.1f} s; at most "
            f"{limits.max_audio_seconds:.0f} s are accepted per job, split it into several jobs",
            field,
        )


def load_uploads(database: Database, tenant: str, ids: list[str]) -> dict[str, StoredInput]:
    """The uploads of this tenant among `ids`, by id (those that do not exist are absent)."""
    with database.transaction() as s:
        found = uploads.get_upload_records(s, sorted(set(ids)), tenant=tenant)
    return {k: StoredInput(v) for k, v in found.items()}


def upload_not_found(upload_id: str, field: str) -> ApiError:
    return ApiError(422, "input_not_found", f"{field}: upload {upload_id} does not exist", field)


def download_reference(
    reader: S3Reader | None,
    allowed: Sequence[str],
    uri: str,
    kind: str,
    limit: int,
    dest: Path,
    field: str | None = None,
) -> LocalInput:
    """Read an s3:// reference into `dest` after checking the bucket (one of `allowed`, read
    with `reader`; None: references are off) and the size."""
    field = field or kind
    try:
        bucket, key = parse_s3_uri(uri)
        keys.validate_key(key)
    except ValueError as e:
        raise ApiError(422, "invalid_reference", f"{field}: {e}", field) from None
    if reader is None or not allowed:
        raise ApiError(
            422,
            "references_disabled",
            f"{field}: this server accepts no s3:// references; upload the file instead",
            field,
        )
    if bucket not in allowed:
        raise ApiError(
            422,
            "bucket_not_allowed",
            f"{field}: bucket {bucket!r} is not an allowed input bucket; use one of: "
            + ", ".join(allowed),
            field,
        )
    try:
        size = reader.head(bucket, key)
        if size > limit:
            raise ApiError(
                413,
                f"{kind}_too_large",
                f"{uri} is {size} bytes; the limit is {limit} bytes",
                field,
            )
        reader.download(bucket, key, dest)
    except ObjectNotFound:
        raise ApiError(422, "input_not_found", f"{field}: {uri} does not exist", field) from None
    except StorageError as e:
        raise ApiError(
            503, "storage_unavailable", f"{field}: could not read {uri}: {e}", field
        ) from None
    return LocalInput(dest, file_sha256(dest), source=uri)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


async def copy_upload(source: UploadFile, kind: str, limit: int, dest: Path) -> LocalInput:
    """An uploaded file copied out of the request (and hashed), refused past `limit` bytes."""
    size = 0
    digest = hashlib.sha256()
    with dest.open("wb") as out:
        while chunk := await source.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise ApiError(
                    413,
                    f"{kind}_too_large",
                    f"the {kind} file is larger than the limit of {limit} bytes",
                    kind,
                )
            digest.update(chunk)
            out.write(chunk)
    return LocalInput(dest, digest.hexdigest())
