"""The storage interface every backend implements, and its errors."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO


class StorageError(Exception):
    """A storage operation failed (the message names the key and the cause)."""


class ObjectNotFound(StorageError, KeyError):
    def __init__(self, key: str):
        self.key = key
        super().__init__(f"no object at key {key!r}")

    def __str__(self) -> str:  # KeyError would print the repr
        return self.args[0]


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    modified: datetime
    """When the object was last written (UTC)."""


class Storage(abc.ABC):
    """Objects under string keys (see `storage.keys`). Writes are whole-object and atomic:
    a reader sees the old object, the new one, or none, never a part."""

    @abc.abstractmethod
    def put_file(self, key: str, path: Path | str, content_type: str | None = None) -> None:
        """Upload a file (multipart on S3 above the configured threshold)."""

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None: ...

    @abc.abstractmethod
    def get_file(self, key: str, path: Path | str) -> None:
        """Download to `path` (written completely or not at all)."""

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abc.abstractmethod
    def open(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A streaming reader: `with storage.open(key) as f: f.read(n)`."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def size(self, key: str) -> int: ...

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Every key starting with `prefix` (a string prefix, as in S3), sorted."""

    @abc.abstractmethod
    def list_objects(self, prefix: str = "") -> list[StoredObject]:
        """`list`, with each object's size and time of writing."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; removing a missing object is not an error."""

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under `prefix`; returns how many were removed."""
        if not prefix:
            raise StorageError("refusing to delete everything: delete_prefix needs a prefix")
        keys = self.list(prefix)
        for key in keys:
            self.delete(key)
        return len(keys)

    @abc.abstractmethod
    def presign_get(self, key: str, expires_s: int) -> str:
        """A URL that downloads the object without credentials until it expires."""

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with self.open(key) as f:
            while chunk := f.read(chunk_size):
                yield chunk
