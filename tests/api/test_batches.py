"""Batches: many jobs in one request, shared inputs read once, combined status and cancel."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import pytest

from db import job_store, leases, webhooks
from tests import media
from tests.conftest import INPUT_BUCKET, count_rows


@pytest.fixture
def uploads(api_client):
    def upload(data: bytes, kind: str) -> str:
        r = api_client.post("/v1/uploads", files={"file": ("f", data)}, data={"kind": kind})
        assert r.status_code in (200, 201), r.text
        return r.json()["id"]

    return {"face": upload(media.png(), "image"), "talk": upload(media.wav(4.0), "audio")}


def test_a_batch_of_a_thousand_jobs(api_client, api_services, uploads):
    jobs = [{"prompt": f"lesson {i}", "seed": i} for i in range(1000)]
    body = {
        "name": "course 7",
        "inputs": {"face": uploads["face"], "talk": uploads["talk"]},
        "defaults": {"image": "face", "audio": "talk", "size": "384*256", "num_clips": 1},
        "jobs": jobs,
    }
    started = time.perf_counter()
    r = api_client.post("/v1/batches", json=body)
    elapsed = time.perf_counter() - started
    assert r.status_code == 201, r.text
    created = r.json()
    ids = created["job_ids"]
    assert created["jobs_total"] == len(ids) == len(set(ids)) == 1000
    assert elapsed < 10  # one transaction, multi-row inserts (ops/bench/api.py measures it)

    # ids come back in the order of the request's jobs, each with its own parameters
    with api_services.database.transaction() as s:
        for i in (0, 1, 500, 999):
            job = job_store.get_job(s, uuid.UUID(ids[i]))
            assert job.params["prompt"] == f"lesson {i}" and job.params["seed"] == i
            assert (job.params["width"], job.params["height"], job.clips_total) == (256, 384, 1)
            assert job.image_key == f"uploads/{uploads['face']}.png"  # stored once, shared
    assert count_rows(api_services.database) == {
        "jobs": 1000, "outbox": 1000, "job_events": 1000, "job_segments": 0,
    }  # fmt: skip
    assert len(api_services.storage.list()) == 2

    batch_id = created["id"]
    status = api_client.get(f"/v1/batches/{batch_id}").json()
    assert status["counts"] == {"queued": 1000} and status["clips_total"] == 1000
    assert not status["finished"] and status["name"] == "course 7"
    page = api_client.get("/v1/jobs", params={"batch_id": batch_id, "limit": 7}).json()
    assert len(page["jobs"]) == 7 and page["next_cursor"]

    with api_services.database.transaction() as s:
        leases.claim(s, uuid.UUID(ids[0]), "gpu-1", 60)
    r = api_client.post(f"/v1/batches/{batch_id}/cancel")
    assert r.status_code == 200 and r.json()["canceled"] == 1000
    status = r.json()["batch"]
    assert status["counts"] == {"canceled": 999, "running": 1}  # the running one stops later
    assert api_client.get(f"/v1/jobs/{ids[0]}").json()["cancel_requested"]


def test_a_bad_job_rejects_the_whole_batch_and_says_which(api_client, api_services, uploads):
    good = {"prompt": "p", "image": uploads["face"], "audio": uploads["talk"]}
    cases = [
        ({**good, "sample_steps": 50}, "jobs[1].sample_steps", 422),
        ({**good, "num_clips": 50}, "jobs[1].num_clips", 422),  # 4 s of audio is 3 clips
        ({**good, "image": uploads["talk"]}, "jobs[1].image", 422),  # an audio upload
        ({**good, "audio": "upl_" + "0" * 24}, "jobs[1].audio", 422),  # no such upload
        ({**good, "image": "nope"}, "jobs[1].image", 422),
        ({"prompt": "p", "image": uploads["face"]}, "jobs[1].audio", 422),
        ({**good, "colour": "red"}, "jobs[1].colour", 422),
    ]
    for bad, field, status in cases:
        r = api_client.post("/v1/batches", json={"jobs": [good, bad, good]})
        assert r.status_code == status, (bad, r.text)
        assert r.json()["error"]["field"] == field, r.json()
    too_many = {"jobs": [good] * (api_services.config.max_batch_jobs + 1)}
    r = api_client.post("/v1/batches", json=too_many)
    assert (r.status_code, r.json()["error"]["code"]) == (422, "too_many_jobs")
    assert api_client.post("/v1/batches", json={"jobs": []}).status_code == 422
    assert count_rows(api_services.database)["jobs"] == 0


def test_shared_s3_inputs_are_read_and_stored_once(api_client, api_services, s3_client):
    prefix = f"course-{uuid.uuid4().hex}"
    s3_client.put_object(Bucket=INPUT_BUCKET, Key=f"{prefix}/face.png", Body=media.png())
    for i in range(3):
        s3_client.put_object(
            Bucket=INPUT_BUCKET, Key=f"{prefix}/{i}.flac", Body=media.encoded_audio("flac", 1 + i)
        )
    body = {
        "inputs": {"face": f"s3://{INPUT_BUCKET}/{prefix}/face.png"},
        "defaults": {"image": "face"},
        "jobs": [
            {"prompt": f"part {i}", "audio": f"s3://{INPUT_BUCKET}/{prefix}/{i % 3}.flac"}
            for i in range(6)
        ],
    }
    r = api_client.post("/v1/batches", json=body)
    assert r.status_code == 201, r.text
    stored = api_services.storage.list()
    assert len(stored) == 4 and all(k.startswith("uploads/") for k in stored)
    with api_services.database.transaction() as s:
        jobs = [job_store.get_job(s, uuid.UUID(i)) for i in r.json()["job_ids"]]
    assert len({j.image_key for j in jobs}) == 1
    assert [j.clips_total for j in jobs] == [1, 2, 2, 1, 2, 2]  # 1, 2, 3 s of audio
    assert jobs[0].audio_key == jobs[3].audio_key != jobs[1].audio_key

    # the same files again: found by content, nothing new stored
    again = api_client.post("/v1/batches", json={**body, "name": "rerun"})
    assert again.status_code == 201 and len(api_services.storage.list()) == 4


def test_batch_idempotency_and_webhooks(api_client, api_services, uploads):
    # the hooks point at loopback, which the operator allows here
    api_services.config = replace(api_services.config, webhook_allowed_hosts=("127.0.0.1",))
    body = {
        "defaults": {
            "image": uploads["face"],
            "audio": uploads["talk"],
            "webhook_url": "http://127.0.0.1:9/done",
            "webhook_events": ["succeeded", "failed"],
        },
        "jobs": [{"prompt": "a"}, {"prompt": "b"}],
    }
    key = {"Idempotency-Key": "course-7-upload"}
    first = api_client.post("/v1/batches", json=body, headers=key)
    again = api_client.post("/v1/batches", json=body, headers=key)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["job_ids"] == first.json()["job_ids"]
    conflict = api_client.post("/v1/batches", json={**body, "jobs": [{"prompt": "c"}]}, headers=key)
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_key_reused"

    job_id = first.json()["job_ids"][1]
    hooks = api_client.get("/v1/webhooks", params={"job_id": job_id}).json()["webhooks"]
    assert [(h["url"], h["events"]) for h in hooks] == [
        ("http://127.0.0.1:9/done", ["succeeded", "failed"])
    ]
    with api_services.database.transaction() as s:
        assert len(webhooks.list_webhooks(s, tenant="default", include_job=True)) == 2
