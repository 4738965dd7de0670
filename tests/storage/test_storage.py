"""The storage interface, the same tests on S3 (moto server) and on a local directory."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest

from storage import InvalidKey, ObjectNotFound, StorageError


def test_bytes_round_trip(storage):
    storage.put_bytes("jobs/a/inputs/image.png", b"\x89PNG data", "image/png")
    assert storage.exists("jobs/a/inputs/image.png")
    assert storage.get_bytes("jobs/a/inputs/image.png") == b"\x89PNG data"
    assert storage.size("jobs/a/inputs/image.png") == 9
    storage.put_bytes("jobs/a/inputs/image.png", b"new")  # overwrite
    assert storage.get_bytes("jobs/a/inputs/image.png") == b"new"


def test_file_round_trip_and_streaming(storage, tmp_path):
    data = os.urandom(300_000)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    storage.put_file("jobs/a/segments/00000.mp4", src, "video/mp4")
    dest = tmp_path / "dest.bin"
    storage.get_file("jobs/a/segments/00000.mp4", dest)
    assert dest.read_bytes() == data
    with storage.open("jobs/a/segments/00000.mp4") as f:
        assert f.read(10) == data[:10]
        assert f.read() == data[10:]
    assert b"".join(storage.iter_chunks("jobs/a/segments/00000.mp4", 65536)) == data


def test_missing_objects(storage, tmp_path):
    assert not storage.exists("jobs/none/output.mp4")
    for call in (
        lambda: storage.get_bytes("jobs/none/output.mp4"),
        lambda: storage.size("jobs/none/output.mp4"),
        lambda: storage.get_file("jobs/none/output.mp4", tmp_path / "x"),
    ):
        with pytest.raises(ObjectNotFound, match="jobs/none/output.mp4"):
            call()
    with pytest.raises(ObjectNotFound), storage.open("jobs/none/output.mp4"):
        pass
    assert not (tmp_path / "x").exists()
    storage.delete("jobs/none/output.mp4")  # deleting nothing is fine


def test_list_and_delete_prefix(storage):
    for key in [
        "jobs/a/inputs/image.png",
        "jobs/a/segments/00000.mp4",
        "jobs/a/segments/00001.mp4",
        "jobs/ab/output.mp4",
        "jobs/b/output.mp4",
    ]:
        storage.put_bytes(key, key.encode())
    assert storage.list("jobs/a/segments/") == [
        "jobs/a/segments/00000.mp4",
        "jobs/a/segments/00001.mp4",
    ]
    assert storage.list("jobs/a") == [  # a string prefix, as in S3
        "jobs/a/inputs/image.png",
        "jobs/a/segments/00000.mp4",
        "jobs/a/segments/00001.mp4",
        "jobs/ab/output.mp4",
    ]
    assert len(storage.list()) == 5
    assert storage.list("jobs/zzz/") == []
    assert storage.delete_prefix("jobs/a/") == 3
    assert storage.list() == ["jobs/ab/output.mp4", "jobs/b/output.mp4"]
    storage.delete("jobs/b/output.mp4")
    assert storage.list() == ["jobs/ab/output.mp4"]
    with pytest.raises(StorageError):
        storage.delete_prefix("")


@pytest.mark.parametrize("key", ["../escape", "/abs/key", "jobs/a/../../x", "jobs//x", ""])
def test_bad_keys_never_reach_the_backend(storage, key, tmp_path):
    with pytest.raises(InvalidKey):
        storage.put_bytes(key, b"x")
    with pytest.raises(InvalidKey):
        storage.get_bytes(key)
    with pytest.raises(InvalidKey):
        storage.presign_get(key, 60)
    assert storage.list() == []
    assert not (tmp_path / "escape").exists()


def test_presigned_get_s3(s3_storage, tmp_path):
    data = os.urandom(1000)
    s3_storage.put_bytes("jobs/a/output.mp4", data, "video/mp4")
    url = s3_storage.presign_get("jobs/a/output.mp4", 300)
    assert "X-Amz-Signature" in url and "X-Amz-Expires=300" in url
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == data
    assert response.headers["content-type"] == "video/mp4"


def test_presigned_urls_are_made_for_the_public_endpoint(s3_config, s3_client):
    """Services reach the bucket at one address, users at another: the URL works for users."""
    from dataclasses import replace
    from urllib.parse import urlparse

    from storage.s3 import S3Storage

    internal = urlparse(s3_config.endpoint_url)
    public = f"http://localhost:{internal.port}"  # the same server under another host name
    storage = S3Storage(replace(s3_config, public_endpoint_url=public), client=s3_client)
    data = os.urandom(100)
    storage.put_bytes("jobs/a/output.mp4", data, "video/mp4")
    url = storage.presign_get("jobs/a/output.mp4", 60)
    assert urlparse(url).netloc == f"localhost:{internal.port}"
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == data


def test_multipart_upload_and_presigned_round_trip(s3_storage, tmp_path):
    """A file over the multipart threshold goes up in parts and comes back identical."""
    size = 12 * 1024 * 1024 + 123  # three 5 MiB parts
    src = tmp_path / "big.mp4"
    with src.open("wb") as f:
        f.write(os.urandom(size))
    s3_storage.put_file("jobs/a/output.mp4", src, "video/mp4")

    head = s3_storage.client.head_object(
        Bucket=s3_storage.bucket, Key=s3_storage.config.prefix + "jobs/a/output.mp4"
    )
    assert head["ETag"].strip('"').endswith("-3")  # the ETag of a three-part upload
    assert s3_storage.size("jobs/a/output.mp4") == size

    digest = hashlib.sha256()
    with httpx.stream("GET", s3_storage.presign_get("jobs/a/output.mp4", 60)) as response:
        assert response.status_code == 200
        for chunk in response.iter_bytes():
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(src.read_bytes()).hexdigest()


def test_s3_prefix_isolates_deployments(s3_config, s3_storage):
    from dataclasses import replace

    from storage import S3Storage

    other = S3Storage(replace(s3_config, prefix="other-deployment/"))
    s3_storage.put_bytes("jobs/a/output.mp4", b"mine")
    assert other.list() == []
    assert not other.exists("jobs/a/output.mp4")


def test_local_presigned_urls_are_signed_and_expire(local_storage, url_signer):
    from urllib.parse import parse_qs, urlparse

    local_storage.put_bytes("jobs/a/output.mp4", b"video")
    url = urlparse(local_storage.presign_get("jobs/a/output.mp4", 60))
    assert url.path == "/v1/files/jobs/a/output.mp4"
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    expires, signature = int(query["expires"]), query["signature"]
    assert url_signer.verify("jobs/a/output.mp4", expires, signature)
    assert not url_signer.verify("jobs/a/inputs/image.png", expires, signature)
    assert not url_signer.verify("jobs/a/output.mp4", expires + 1, signature)
    assert not url_signer.verify("jobs/a/output.mp4", expires, signature, now=expires + 1)


def test_local_writes_are_atomic_and_hidden_until_complete(local_storage):
    local_storage.put_bytes("jobs/a/output.mp4", b"x" * 10)
    assert sorted(p.name for p in local_storage.path("jobs/a/output.mp4").parent.iterdir()) == [
        "output.mp4"
    ]
    # a partial file left by a crash is not an object
    (local_storage.path("jobs/a/output.mp4").parent / ".partial-123").write_bytes(b"xx")
    assert local_storage.list() == ["jobs/a/output.mp4"]
