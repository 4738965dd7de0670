"""Object storage behind one small interface: S3 (boto3) or a local directory."""

from storage.base import ObjectNotFound, Storage, StorageError
from storage.keys import InvalidKey
from storage.local import LocalStorage
from storage.s3 import S3Config, S3Reader, S3Storage

__all__ = [
    "InvalidKey",
    "LocalStorage",
    "ObjectNotFound",
    "S3Config",
    "S3Reader",
    "S3Storage",
    "Storage",
    "StorageError",
]
