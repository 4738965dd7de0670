"""Idempotency-Key: a retried submission returns the first job, never a second one; the same
key with a different request is a conflict."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from threading import Barrier

import httpx

from tests import media
from tests.conftest import count_rows


def files(image: bytes, audio: bytes) -> dict:
    return {"image": ("face.png", image, "image/png"), "audio": ("talk.wav", audio, "audio/wav")}


def test_twenty_concurrent_identical_submissions_make_one_job(live_api, api_key, api_services):
    image, audio = media.png(), media.wav(1.0)
    barrier = Barrier(20)

    def send(_):
        with httpx.Client(base_url=live_api.url, timeout=60) as client:
            barrier.wait()
            return client.post(
                "/v1/jobs",
                files=files(image, audio),
                data={"prompt": "A teacher", "seed": "3"},
                headers={"Authorization": f"Bearer {api_key}", "Idempotency-Key": "lesson-1"},
            )

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(send, range(20)))
    assert sorted(r.status_code for r in answers) == [200] * 19 + [201]
    assert len({r.json()["id"] for r in answers}) == 1
    assert count_rows(api_services.database) == {
        "jobs": 1, "outbox": 1, "job_events": 1, "job_segments": 0,
    }  # fmt: skip
    assert len(api_services.storage.list()) == 2  # the losers' stored inputs were removed


def test_same_key_different_request_is_a_conflict(api_client):
    image, audio = media.png(), media.wav(1.0)
    key = {"Idempotency-Key": "k-1"}
    first = api_client.post(
        "/v1/jobs", files=files(image, audio), data={"prompt": "p"}, headers=key
    )
    again = api_client.post(
        "/v1/jobs", files=files(image, audio), data={"prompt": "p"}, headers=key
    )
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()

    other_prompt = api_client.post(
        "/v1/jobs", files=files(image, audio), data={"prompt": "q"}, headers=key
    )
    other_audio = api_client.post(
        "/v1/jobs", files=files(image, media.wav(1.5)), data={"prompt": "p"}, headers=key
    )
    for r in (other_prompt, other_audio):
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "idempotency_key_reused"
        assert first.json()["id"] in r.json()["error"]["message"]
    # file names are not part of the request's identity, the bytes are
    renamed = {"image": ("x.png", image), "audio": ("y.wav", audio)}
    assert (
        api_client.post("/v1/jobs", files=renamed, data={"prompt": "p"}, headers=key).json()["id"]
        == first.json()["id"]
    )
    assert len(api_client.get("/v1/jobs").json()["jobs"]) == 1


def test_json_submissions_by_reference_are_idempotent(api_client):
    image = api_client.post("/v1/uploads", files={"file": ("a.png", media.png())},
                            data={"kind": "image"}).json()["id"]  # fmt: skip
    audio = api_client.post("/v1/uploads", files={"file": ("a.wav", media.wav(1.0))},
                            data={"kind": "audio"}).json()["id"]  # fmt: skip
    body = {"prompt": "p", "image": image, "audio": audio, "priority": 2}
    key = {"Idempotency-Key": "json-1"}
    first = api_client.post("/v1/jobs", json=body, headers=key)
    assert first.status_code == 201, first.text
    assert api_client.post("/v1/jobs", json=body, headers=key).status_code == 200
    r = api_client.post("/v1/jobs", json={**body, "priority": 3}, headers=key)
    assert r.status_code == 409
    # a key is per tenant and per kind of request: a batch may reuse it
    batch = api_client.post("/v1/batches", json={"jobs": [body]}, headers=key)
    assert batch.status_code == 201
