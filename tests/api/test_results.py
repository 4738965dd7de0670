"""Results: presigned URLs with a chosen lifetime, what the output is, and the segments of a
render that has not finished yet."""

from __future__ import annotations

import hashlib
import io
import urllib.parse

import av
import httpx
import numpy as np

from db import job_store, leases
from db.segments import Segment
from storage import keys
from tests.factories import lease_for


def tiny_mp4(frames: int = 10, fps: int = 25) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(
                np.full((64, 64, 3), i * 20, np.uint8), format="rgb24"
            )
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def test_segments_of_a_running_job(api_client, api_services, create_job):
    db, storage = api_services.database, api_services.storage
    job = create_job(db, clips_total=6)
    assert api_client.get(f"/v1/jobs/{job.id}/segments").json()["segments"] == []
    with db.transaction() as s:
        lease = leases.claim(s, job.id, "gpu-1", 60)
        for index in range(2):
            key = keys.segment_key(job.id, index)
            data = f"segment {index}".encode()
            storage.put_bytes(key, data, "video/mp4")
            sha = hashlib.sha256(data).hexdigest()
            seg = Segment(index, key, 2 * index, 2, 96, len(data), sha)
            leases.record_segment(s, lease_for(job.id, "gpu-1", lease.attempt), seg)
    body = api_client.get(f"/v1/jobs/{job.id}/segments", params={"expires_in": 120}).json()
    assert (body["status"], body["clips_total"], body["expires_in_s"]) == ("running", 6, 120)
    got = body["segments"]
    assert [(g["index"], g["first_clip"], g["clips"]) for g in got] == [(0, 0, 2), (1, 2, 2)]
    for g in got:
        content = httpx.get(g["url"]).content
        assert hashlib.sha256(content).hexdigest() == g["sha256"] and len(content) == g["bytes"]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(got[0]["url"]).query)
    assert query["X-Amz-Expires"] == ["120"]  # the lifetime asked for


def test_result_lifetime_and_metadata(api_client, api_services, create_job):
    db, storage = api_services.database, api_services.storage
    video = tiny_mp4(frames=10)
    job = create_job(db)
    with db.transaction() as s:  # a worker that did not describe its output
        lease = leases.claim(s, job.id, "gpu-1", 60)
        leases.mark_stitching(s, lease_for(job.id, "gpu-1", lease.attempt))
        storage.put_bytes(keys.output_key(job.id), video, "video/mp4")
        leases.mark_succeeded(s, lease_for(job.id, "gpu-1", lease.attempt), keys.output_key(job.id))
    r = api_client.get(f"/v1/jobs/{job.id}/result", params={"expires_in": 600})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["expires_in_s"] == 600
    assert body["output"] == {
        "bytes": len(video), "sha256": hashlib.sha256(video).hexdigest(), "frames": 10,
        "duration_s": 0.4,
    }  # fmt: skip
    with db.transaction() as s:  # measured once, kept
        assert job_store.get_job(s, job.id).output_meta == body["output"]
    assert httpx.get(body["url"]).content == video

    max_s = api_services.config.presign_max_s
    r = api_client.get(f"/v1/jobs/{job.id}/result", params={"expires_in": max_s + 1})
    assert (r.status_code, r.json()["error"]["field"]) == (422, "expires_in")


def test_result_metadata_recorded_by_the_worker(api_client, api_services, create_job):
    db = api_services.database
    job = create_job(db)
    meta = {"bytes": 123, "sha256": "c" * 64, "frames": 480, "duration_s": 19.2}
    with db.transaction() as s:
        lease = leases.claim(s, job.id, "gpu-1", 60)
        leases.mark_stitching(s, lease_for(job.id, "gpu-1", lease.attempt))
        leases.mark_succeeded(
            s, lease_for(job.id, "gpu-1", lease.attempt), "jobs/x/output.mp4", output=meta
        )
    assert api_client.get(f"/v1/jobs/{job.id}/result").json()["output"] == meta


def test_segments_removed_after_success_are_not_listed(api_client, api_services, create_job):
    db, storage = api_services.database, api_services.storage
    job = create_job(db, clips_total=2)
    key = keys.segment_key(job.id, 0)
    storage.put_bytes(key, b"seg", "video/mp4")
    with db.transaction() as s:
        lease = leases.claim(s, job.id, "gpu-1", 60)
        seg = Segment(0, key, 0, 2, 96, 3, hashlib.sha256(b"seg").hexdigest())
        leases.record_segment(s, lease_for(job.id, "gpu-1", lease.attempt), seg)
        leases.mark_stitching(s, lease_for(job.id, "gpu-1", lease.attempt))
        leases.mark_succeeded(s, lease_for(job.id, "gpu-1", lease.attempt), keys.output_key(job.id))
    assert len(api_client.get(f"/v1/jobs/{job.id}/segments").json()["segments"]) == 1  # kept
    storage.delete(key)  # what a worker does after success unless told to keep them
    body = api_client.get(f"/v1/jobs/{job.id}/segments").json()
    assert (body["status"], body["segments"]) == ("succeeded", [])
