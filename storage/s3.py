"""S3-compatible object storage through boto3 (AWS S3, MinIO, R2, Ceph).

Credentials come from boto3's standard chain (environment, shared files, instance roles);
nothing here reads them. Checksums are computed only when an operation requires them, which
is what S3-compatible services other than AWS accept.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from storage.base import ObjectNotFound, Storage, StorageError, StoredObject
from storage.keys import validate_key, validate_prefix

MiB = 1024 * 1024
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


@dataclass(frozen=True)
class S3Config:
    bucket: str
    prefix: str = ""
    """Prepended to every key (e.g. "prod/"), so several deployments can share a bucket."""
    endpoint_url: str | None = None
    public_endpoint_url: str | None = None
    """Where clients outside the deployment reach the same bucket (e.g. `https://s3.example.com`
    when the services talk to `http://minio:9000`). Presigned URLs are signed for this host."""
    region: str | None = None
    path_style: bool = False
    multipart_threshold: int = 64 * MiB
    multipart_chunksize: int = 64 * MiB
    max_concurrency: int = 8
    max_attempts: int = 5
    connect_timeout_s: float = 10
    read_timeout_s: float = 60


def make_client(config: S3Config, endpoint_url: str | None = None) -> Any:
    boto_config = BotoConfig(
        region_name=config.region,
        signature_version="s3v4",
        s3={"addressing_style": "path" if config.path_style else "auto"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"mode": "standard", "max_attempts": config.max_attempts},
        connect_timeout=config.connect_timeout_s,
        read_timeout=config.read_timeout_s,
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url or config.endpoint_url, config=boto_config
    )


def is_not_found(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code")) in _NOT_FOUND


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key); ValueError saying what is wrong otherwise."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or not key:
        raise ValueError(f"{uri!r} must look like s3://bucket/path/to/object")
    return bucket, key


class S3Storage(Storage):
    def __init__(self, config: S3Config, client: Any = None):
        if config.prefix:
            validate_prefix(config.prefix)
        self.config = config
        self.bucket = config.bucket
        self.client = client if client is not None else make_client(config)
        # A signature covers the host, so URLs for outside clients are signed by a client
        # configured with the public endpoint (signing needs no connection to it).
        self._presigner = (
            make_client(config, config.public_endpoint_url)
            if config.public_endpoint_url
            else self.client
        )
        self.transfer = TransferConfig(
            multipart_threshold=config.multipart_threshold,
            multipart_chunksize=config.multipart_chunksize,
            max_concurrency=config.max_concurrency,
        )

    def _full(self, key: str) -> str:
        return self.config.prefix + validate_key(key)

    @contextmanager
    def _errors(self, key: str, action: str) -> Iterator[None]:
        try:
            yield
        except ClientError as e:
            if is_not_found(e):
                raise ObjectNotFound(key) from e
            raise StorageError(f"could not {action} {key!r} in bucket {self.bucket}: {e}") from e
        except BotoCoreError as e:
            raise StorageError(f"could not {action} {key!r} in bucket {self.bucket}: {e}") from e

    def put_file(self, key: str, path: Path | str, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else None
        with self._errors(key, "upload"):
            self.client.upload_file(
                str(path), self.bucket, self._full(key), ExtraArgs=extra, Config=self.transfer
            )

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        with self._errors(key, "upload"):
            self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data, **extra)

    def get_file(self, key: str, path: Path | str) -> None:
        with self._errors(key, "download"):
            # boto3 writes to a temporary name and renames it when complete
            self.client.download_file(self.bucket, self._full(key), str(path), Config=self.transfer)

    def get_bytes(self, key: str) -> bytes:
        with self._errors(key, "download"):
            body = self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"]
            try:
                return body.read()
            finally:
                body.close()

    @contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        with self._errors(key, "read"):
            body = self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"]
        try:
            yield body
        finally:
            body.close()

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True

    def size(self, key: str) -> int:
        with self._errors(key, "inspect"):
            head = self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        return int(head["ContentLength"])

    def list(self, prefix: str = "") -> list[str]:
        return [o.key for o in self.list_objects(prefix)]

    def list_objects(self, prefix: str = "") -> list[StoredObject]:
        validate_prefix(prefix)
        full = self.config.prefix + prefix
        found: list[StoredObject] = []
        with self._errors(prefix, "list"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            )
            for page in pages:
                found.extend(
                    StoredObject(
                        obj["Key"][len(self.config.prefix) :],
                        int(obj["Size"]),
                        obj["LastModified"].astimezone(UTC),
                    )
                    for obj in page.get("Contents", [])
                )
        return sorted(found, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        with self._errors(key, "delete"):
            self.client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def delete_prefix(self, prefix: str) -> int:
        if not prefix:
            raise StorageError("refusing to delete everything: delete_prefix needs a prefix")
        keys = self.list(prefix)
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": self._full(k)} for k in keys[start : start + 1000]]
            with self._errors(prefix, "delete"):
                result = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            if result.get("Errors"):
                first = result["Errors"][0]
                raise StorageError(
                    f"could not delete {len(result['Errors'])} objects under {prefix!r}: "
                    f"{first.get('Key')}: {first.get('Message')}"
                )
        return len(keys)

    def presign_get(self, key: str, expires_s: int) -> str:
        with self._errors(key, "presign"):
            return self._presigner.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._full(key)},
                ExpiresIn=int(expires_s),
            )


class S3Reader:
    """Reads objects the caller names by bucket and key (`s3://` input references)."""

    def __init__(self, client: Any):
        self.client = client

    def head(self, bucket: str, key: str) -> int:
        """Size in bytes; ObjectNotFound when the object (or the bucket) does not exist."""
        try:
            head = self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as e:
            if is_not_found(e) or e.response.get("Error", {}).get("Code") == "NoSuchBucket":
                raise ObjectNotFound(f"s3://{bucket}/{key}") from e
            raise StorageError(f"could not read s3://{bucket}/{key}: {e}") from e
        return int(head["ContentLength"])

    def download(self, bucket: str, key: str, path: Path | str) -> None:
        try:
            self.client.download_file(bucket, key, str(path))
        except ClientError as e:
            if is_not_found(e):
                raise ObjectNotFound(f"s3://{bucket}/{key}") from e
            raise StorageError(f"could not download s3://{bucket}/{key}: {e}") from e
