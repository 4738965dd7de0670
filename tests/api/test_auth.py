"""API keys: every /v1 route needs one, each acts for its key's tenant only (another tenant's
resources are 404s), revoked keys stop working, and each key is rate limited."""

from __future__ import annotations

import dataclasses
import re

import pytest
from fastapi.testclient import TestClient

from api import create_app
from api.quota import QuotaCounter
from api.ratelimit import MemoryRateLimiter, RedisRateLimiter
from db import leases, tenants, webhooks
from db.segments import Segment
from storage import keys
from tests import media
from tests.conftest import REDIS_URL, make_api_key
from tests.factories import lease_for


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_requests_without_a_valid_key_are_refused(api_services, api_client, create_job):
    job = create_job(api_services.database)
    app = TestClient(create_app(api_services))
    r = app.get(f"/v1/jobs/{job.id}")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "missing_api_key"
    r = app.get(f"/v1/jobs/{job.id}", headers=bearer("lt_000000000000_guess"))
    assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_api_key")
    r = app.get(f"/v1/jobs/{job.id}", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert r.status_code == 401
    assert app.get("/healthz").status_code == 200  # probes, metrics and docs need no key
    assert app.get("/metrics").status_code == 200
    assert app.get("/openapi.json").status_code == 200


def test_a_revoked_key_stops_working(api_services):
    api_services.config = dataclasses.replace(api_services.config, auth_cache_s=0)
    api_services.authenticator.config = api_services.config
    with api_services.database.transaction() as s:
        new = tenants.create_key(s, "default")
    client = TestClient(create_app(api_services), headers=bearer(new.token))
    assert client.get("/v1/jobs").status_code == 200
    with api_services.database.transaction() as s:
        tenants.revoke_key(s, new.key.id)
        assert tenants.list_keys(s)[0].last_used_at is not None
    assert client.get("/v1/jobs").status_code == 401


def test_keys_are_cached_for_a_few_seconds(api_services):
    now = [0.0]
    api_services.authenticator._clock = lambda: now[0]
    with api_services.database.transaction() as s:
        new = tenants.create_key(s, "default")
    client = TestClient(create_app(api_services), headers=bearer(new.token))
    assert client.get("/v1/jobs").status_code == 200
    with api_services.database.transaction() as s:
        tenants.revoke_key(s, new.key.id)
    assert client.get("/v1/jobs").status_code == 200  # within auth_cache_s of the lookup
    now[0] += api_services.config.auth_cache_s + 0.1
    assert client.get("/v1/jobs").status_code == 401


# --------------------------------------------------------------------------- isolation


@pytest.fixture
def other_tenant(api_services, create_job):
    """Resources of tenant `other`: a succeeded job with a segment, a batch, an upload, a
    webhook with a delivery."""
    db, storage = api_services.database, api_services.storage
    job = create_job(db, tenant="other")
    image = media.png()
    other = TestClient(create_app(api_services), headers=bearer(make_api_key(db, "other")))
    upload = other.post(
        "/v1/uploads", files={"file": ("a.png", image)}, data={"kind": "image"}
    ).json()
    audio = other.post(
        "/v1/uploads", files={"file": ("a.wav", media.wav(1.0))}, data={"kind": "audio"}
    ).json()
    batch = other.post(
        "/v1/batches",
        json={"jobs": [{"prompt": "p", "image": upload["id"], "audio": audio["id"]}]},
    ).json()
    hook = other.post("/v1/webhooks", json={"url": "http://93.184.216.34/hook"}).json()
    presenter = other.post(
        "/v1/presenters", json={"name": "anna", "prompt": "p", "image": upload["id"]}
    ).json()
    with db.transaction() as s:
        lease = leases.claim(s, job.id, "w", 60)
        seg = Segment(0, keys.segment_key(job.id, 0), 0, 1, 48, 3, "a" * 64)
        leases.record_segment(s, lease_for(job.id, "w", lease.attempt), seg)
        leases.mark_stitching(s, lease_for(job.id, "w", lease.attempt))
        storage.put_bytes(keys.output_key(job.id), b"mp4")
        leases.mark_succeeded(s, lease_for(job.id, "w", lease.attempt), keys.output_key(job.id))
        assert webhooks.list_deliveries(s, webhook_id=hook["id"])  # started, succeeded
    return {
        "job": job.id,
        "batch": batch["id"],
        "upload": upload["id"],
        "webhook": hook["id"],
        "presenter": presenter["name"],
        "secret": other.get("/v1/webhooks/secret").json()["secret"],
    }


ISOLATION = [
    ("GET", "/v1/jobs/{job_id}", "job"),
    ("GET", "/v1/jobs/{job_id}/events", "job"),
    ("POST", "/v1/jobs/{job_id}/cancel", "job"),
    ("POST", "/v1/jobs/{job_id}/retry", "job"),
    ("GET", "/v1/jobs/{job_id}/result", "job"),
    ("GET", "/v1/jobs/{job_id}/segments", "job"),
    ("GET", "/v1/batches/{batch_id}", "batch"),
    ("POST", "/v1/batches/{batch_id}/cancel", "batch"),
    ("GET", "/v1/uploads/{upload_id}", "upload"),
    ("GET", "/v1/webhooks/{webhook_id}", "webhook"),
    ("DELETE", "/v1/webhooks/{webhook_id}", "webhook"),
    ("GET", "/v1/webhooks/{webhook_id}/deliveries", "webhook"),
    ("GET", "/v1/presenters/{presenter_name}", "presenter"),
    ("DELETE", "/v1/presenters/{presenter_name}", "presenter"),
]


def test_isolation_covers_every_route_with_an_id(api_client):
    """A new route that takes a resource id must be added to ISOLATION."""
    schema = api_client.get("/openapi.json").json()
    with_ids = {
        (method.upper(), path)
        for path, ops in schema["paths"].items()
        for method in ops
        if "{" in path and not path.startswith("/v1/files/")
    }
    assert with_ids == {(m, p) for m, p, _ in ISOLATION}


@pytest.mark.parametrize("method,path,kind", ISOLATION, ids=[f"{m} {p}" for m, p, _ in ISOLATION])
def test_another_tenants_resources_do_not_exist(api_client, other_tenant, method, path, kind):
    url = re.sub(r"\{\w+\}", str(other_tenant[kind]), path)
    r = api_client.request(method, url)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == f"{kind}_not_found"  # as if it did not exist at all
    assert r.json()["error"]["message"] == f"{kind} {other_tenant[kind]} does not exist"


def test_listings_and_references_stay_within_the_tenant(api_client, other_tenant):
    assert api_client.get("/v1/jobs").json()["jobs"] == []
    assert (
        api_client.get("/v1/jobs", params={"batch_id": other_tenant["batch"]}).json()["jobs"] == []
    )
    assert api_client.get("/v1/batches").json()["batches"] == []
    assert api_client.get("/v1/presenters").json()["presenters"] == []
    assert api_client.get("/v1/webhooks").json()["webhooks"] == []
    assert (
        api_client.get("/v1/webhooks", params={"job_id": other_tenant["job"]}).json()["webhooks"]
        == []
    )
    # another tenant's upload cannot be used, nor its job watched by a webhook
    r = api_client.post(
        "/v1/jobs",
        json={"prompt": "p", "image": other_tenant["upload"], "audio": other_tenant["upload"]},
    )
    assert (r.status_code, r.json()["error"]["code"]) == (422, "input_not_found")
    r = api_client.post(
        "/v1/jobs", json={"presenter": other_tenant["presenter"], "audio": other_tenant["upload"]}
    )
    assert (r.status_code, r.json()["error"]["code"]) == (422, "presenter_not_found")
    r = api_client.post(
        "/v1/webhooks", json={"url": "http://93.184.216.34/x", "job_id": str(other_tenant["job"])}
    )
    assert r.status_code == 404
    secret = api_client.get("/v1/webhooks/secret").json()["secret"]
    assert secret.startswith("whsec_") and secret != other_tenant["secret"]


# --------------------------------------------------------------------------- limits


def test_tenant_limits_apply_to_submissions(api_services, api_client):
    api_services.quota = QuotaCounter(ttl_s=0)  # counted at every submission here
    with api_services.database.transaction() as s:
        tenants.set_limits(s, "default", {"max_queued_jobs": 2, "max_image_bytes": 1000})
    files = {"image": ("a.png", media.png()), "audio": ("a.wav", media.wav(1.0))}
    r = api_client.post("/v1/jobs", files=files, data={"prompt": "p"})
    assert (r.status_code, r.json()["error"]["code"]) == (413, "image_too_large")
    with api_services.database.transaction() as s:
        tenants.set_limits(s, "default", {"max_image_bytes": None})
    api_services.authenticator._cache.clear()
    assert api_client.post("/v1/jobs", files=files, data={"prompt": "p"}).status_code == 201
    assert api_client.post("/v1/jobs", files=files, data={"prompt": "p"}).status_code == 201
    r = api_client.post("/v1/jobs", files=files, data={"prompt": "p"})
    assert (r.status_code, r.json()["error"]["code"]) == (429, "queued_job_limit")
    assert "at most 2" in r.json()["error"]["message"]
    job = api_client.get("/v1/jobs").json()["jobs"][0]["id"]
    api_client.post(f"/v1/jobs/{job}/cancel")  # finished jobs do not count
    assert api_client.post("/v1/jobs", files=files, data={"prompt": "p"}).status_code == 201


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_rate_limit_per_key(api_services, backend, redis_prefix):
    if backend == "redis":
        api_services.rate_limiter = RedisRateLimiter(REDIS_URL, prefix=redis_prefix)
    else:
        api_services.rate_limiter = MemoryRateLimiter()
    db = api_services.database
    slow = make_api_key(db, rate_limit_per_s=2)  # bursts of 4
    free = make_api_key(db, rate_limit_per_s=0)
    app = create_app(api_services)
    with TestClient(app, headers=bearer(slow)) as client:
        codes = [client.get("/v1/jobs").status_code for _ in range(6)]
        assert codes[:4] == [200] * 4 and codes[4:] == [429, 429]
        r = client.get("/v1/jobs")
        assert r.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 2
    with TestClient(app, headers=bearer(free)) as client:
        assert {client.get("/v1/jobs").status_code for _ in range(20)} == {200}
