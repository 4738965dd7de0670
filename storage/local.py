"""Objects as files under a directory (embedded mode, tests, single-machine installs)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from storage.base import ObjectNotFound, Storage, StorageError, StoredObject
from storage.keys import validate_key, validate_prefix
from storage.signing import UrlSigner

_PARTIAL = ".partial-"


class LocalStorage(Storage):
    def __init__(self, root: Path | str, signer: UrlSigner | None = None):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.signer = signer

    def path(self, key: str) -> Path:
        """The file that holds `key` (validated, so it is always inside the root)."""
        return self.root.joinpath(*validate_key(key).split("/"))

    @contextmanager
    def _atomic_target(self, key: str) -> Iterator[Path]:
        """Write to a hidden sibling, then rename: readers never see a partial object."""
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(f"{_PARTIAL}{uuid.uuid4().hex}")
        try:
            yield partial
            os.replace(partial, final)
        except FileExistsError as e:  # a key that is also a "directory" of other keys
            raise StorageError(f"cannot store {key!r}: a prefix of that name exists") from e
        finally:
            partial.unlink(missing_ok=True)

    def put_file(self, key: str, path: Path | str, content_type: str | None = None) -> None:
        with self._atomic_target(key) as target:
            shutil.copyfile(path, target)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        with self._atomic_target(key) as target:
            target.write_bytes(data)

    def _existing(self, key: str) -> Path:
        path = self.path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return path

    def get_file(self, key: str, path: Path | str) -> None:
        source = self._existing(key)
        dest = Path(path)
        partial = dest.with_name(f"{dest.name}{_PARTIAL}{uuid.uuid4().hex}")
        try:
            shutil.copyfile(source, partial)
            os.replace(partial, dest)
        finally:
            partial.unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        return self._existing(key).read_bytes()

    @contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        with self._existing(key).open("rb") as f:
            yield f

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        return self._existing(key).stat().st_size

    def list(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)
        # walk only the deepest directory the prefix names, then filter by string prefix
        directory = self.root.joinpath(*prefix.split("/")[:-1]) if "/" in prefix else self.root
        if not directory.is_dir():
            return []
        keys = []
        for dirpath, _dirnames, filenames in os.walk(directory):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith("."):
                    continue  # partial writes
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def list_objects(self, prefix: str = "") -> list[StoredObject]:
        found = []
        for key in self.list(prefix):
            try:
                stat = self.path(key).stat()
            except FileNotFoundError:  # deleted since it was listed
                continue
            modified = datetime.fromtimestamp(stat.st_mtime, UTC)
            found.append(StoredObject(key, stat.st_size, modified))
        return found

    def delete(self, key: str) -> None:
        path = self.path(key)
        path.unlink(missing_ok=True)
        # prune directories the deletion emptied, never the root itself
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def presign_get(self, key: str, expires_s: int) -> str:
        validate_key(key)
        if self.signer is None:
            raise StorageError(
                "local storage cannot make download URLs without a signer "
                "(configure the API's public URL and a signing key)"
            )
        return self.signer.url(key, expires_s)
