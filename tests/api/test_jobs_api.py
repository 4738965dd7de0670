"""Reading and steering jobs: get, list, events, cancel, retry, result, health."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from db import job_store, leases
from db.failures import Failure
from storage import keys
from tests.conftest import make_api_key
from tests.factories import lease_for


def finish(db, storage, job_id, content=b"the video"):
    """Drive a job to succeeded the way a worker would, with an output object."""
    with db.transaction() as s:
        lease = leases.claim(s, job_id, "w1", 60)
        leases.mark_stitching(s, lease_for(job_id, "w1", lease.attempt))
        storage.put_bytes(keys.output_key(job_id), content, "video/mp4")
        leases.mark_succeeded(s, lease_for(job_id, "w1", lease.attempt), keys.output_key(job_id))


def test_get_job(api_client, api_services, create_job):
    job = create_job(api_services.database)
    r = api_client.get(f"/v1/jobs/{job.id}")
    assert r.status_code == 200
    assert r.json()["id"] == str(job.id) and r.json()["status"] == "queued"

    missing = uuid.uuid4()
    r = api_client.get(f"/v1/jobs/{missing}")
    assert r.status_code == 404
    assert r.json()["error"] == {
        "code": "job_not_found",
        "message": f"job {missing} does not exist",
    }
    assert api_client.get("/v1/jobs/not-a-uuid").status_code == 422


def test_other_tenants_jobs_are_invisible(api_client, api_services, create_job):
    job = create_job(api_services.database, tenant="someone-else")
    assert api_client.get(f"/v1/jobs/{job.id}").status_code == 404
    assert api_client.post(f"/v1/jobs/{job.id}/cancel").status_code == 404
    assert api_client.get("/v1/jobs").json()["jobs"] == []


def test_list_newest_first_with_cursor_pagination(api_client, api_services, create_job):
    db = api_services.database
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    ids = [create_job(db, now=t0 + timedelta(seconds=i)).id for i in range(5)]
    ids.append(create_job(db, now=t0 + timedelta(seconds=4)).id)  # same time as the fifth
    with db.transaction() as s:
        job_store.request_cancel(s, ids[1])

    seen, cursor = [], None
    while True:
        r = api_client.get(
            "/v1/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}
        )
        assert r.status_code == 200
        page = r.json()
        assert len(page["jobs"]) <= 2
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 6
    created = [
        (j["created_at"], j["id"])
        for j in api_client.get("/v1/jobs", params={"limit": 10}).json()["jobs"]
    ]
    assert created == sorted(created, reverse=True)
    assert seen == [j for _, j in created]

    r = api_client.get("/v1/jobs", params={"status": "canceled"})
    assert [j["id"] for j in r.json()["jobs"]] == [str(ids[1])]
    r = api_client.get("/v1/jobs", params=[("status", "canceled"), ("status", "queued")])
    assert len(r.json()["jobs"]) == 6


def test_list_rejects_bad_filters(api_client):
    r = api_client.get("/v1/jobs", params={"status": "done"})
    assert r.status_code == 422 and "use one of: queued" in r.json()["error"]["message"]
    r = api_client.get("/v1/jobs", params={"cursor": "garbage!"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_cursor"
    assert api_client.get("/v1/jobs", params={"limit": 0}).status_code == 422


def test_cancel_and_retry(api_client, api_services, create_job):
    job = create_job(api_services.database)
    r = api_client.post(f"/v1/jobs/{job.id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    assert api_client.post(f"/v1/jobs/{job.id}/cancel").json()["status"] == "canceled"

    r = api_client.post(f"/v1/jobs/{job.id}/retry")
    assert r.status_code == 200 and r.json()["status"] == "queued"
    r = api_client.post(f"/v1/jobs/{job.id}/retry")
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "invalid_state"
    assert "only failed or canceled jobs can be retried" in r.json()["error"]["message"]

    events = api_client.get(f"/v1/jobs/{job.id}/events").json()["events"]
    assert [(e["event"], e["to_status"]) for e in events] == [
        ("created", "queued"),
        ("canceled", "canceled"),
        ("retried", "queued"),
    ]
    assert api_client.post(f"/v1/jobs/{uuid.uuid4()}/retry").status_code == 404


def test_cancel_running_job_sets_the_flag(api_client, api_services, create_job):
    job = create_job(api_services.database)
    with api_services.database.transaction() as s:
        leases.claim(s, job.id, "w1", 60)
    body = api_client.post(f"/v1/jobs/{job.id}/cancel").json()
    assert (body["status"], body["cancel_requested"]) == ("running", True)


def test_result_of_a_succeeded_job(api_client, api_services, create_job):
    job = create_job(api_services.database)
    r = api_client.get(f"/v1/jobs/{job.id}/result")
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "result_not_ready"
    assert "is queued" in r.json()["error"]["message"]

    finish(api_services.database, api_services.storage, job.id)
    r = api_client.get(f"/v1/jobs/{job.id}/result")
    assert r.status_code == 200
    body = r.json()
    assert body["output_key"] == f"jobs/{job.id}/output.mp4"
    assert body["expires_in_s"] == api_services.config.presign_expires_s
    assert httpx.get(body["url"]).content == b"the video"

    r = api_client.get(
        f"/v1/jobs/{job.id}/result", params={"redirect": "true"}, follow_redirects=False
    )
    assert r.status_code == 307 and r.headers["location"].startswith("http://127.0.0.1:")
    assert api_client.post(f"/v1/jobs/{job.id}/cancel").status_code == 409


def test_health_and_readiness(api_client, api_services):
    assert api_client.get("/healthz").json() == {"status": "ok"}
    r = api_client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok"}

    def broker_down():
        raise ConnectionError("redis://127.0.0.1:1: connection refused")

    api_services.readiness["broker"] = broker_down
    r = api_client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["broker"].startswith("unreachable: redis://127.0.0.1:1")


def test_unknown_routes_answer_in_json(api_client):
    r = api_client.get("/jobs")
    assert r.status_code == 404 and "under /v1" in r.json()["error"]["message"]
    assert api_client.delete("/v1/jobs").json()["error"]["code"] == "method_not_allowed"


def test_openapi_documents_the_submission(api_client):
    schema = api_client.get("/openapi.json").json()
    body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert "prompt" in schema["components"]["schemas"]["JobRequest"]["properties"]


@pytest.fixture
def local_client(api_config, sqlite_db, local_storage):
    """The embedded combination: SQLite and local files, downloads through the API."""
    from fastapi.testclient import TestClient

    from api import Services, create_app

    services = Services(config=api_config, database=sqlite_db, storage=local_storage)
    headers = {"Authorization": f"Bearer {make_api_key(sqlite_db)}"}
    with TestClient(create_app(services), headers=headers) as client:
        yield client, services


def test_local_result_downloads_through_a_signed_link(local_client, create_job):
    client, services = local_client
    job = create_job(services.database)
    finish(services.database, services.storage, job.id, b"local video")
    url = client.get(f"/v1/jobs/{job.id}/result").json()["url"]
    assert url.startswith("http://testserver/v1/files/jobs/")
    r = client.get(url)
    assert r.status_code == 200 and r.content == b"local video"

    r = client.get(url.replace("signature=", "signature=0"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "invalid_signature"
    other = url.replace("output.mp4", "inputs/image.png")
    assert client.get(other).status_code == 403  # a signature covers one key only


def test_a_failed_job_tells_its_owner_what_to_do_and_whether_a_retry_helps(
    api_client, api_services, create_job
):
    db = api_services.database
    bad_input, broken = create_job(db), create_job(db)
    told = "the job's inputs cannot be rendered (audio is not decodable); submit it again"
    with db.transaction() as s:
        for job, failure in (
            (bad_input, Failure(told, "input", "InputError: ...\n  pipeline/inputs.py:117")),
            (broken, Failure("the render failed (RuntimeError: x)", "render", "RuntimeError: x")),
        ):
            leases.mark_failed(s, leases.claim(s, job.id, "w1", 60), failure)

    view = api_client.get(f"/v1/jobs/{bad_input.id}").json()
    assert (view["error"], view["error_kind"], view["can_retry"]) == (told, "input", False)
    assert "pipeline/inputs.py" not in str(view)  # the operator's detail is not in the view
    r = api_client.post(f"/v1/jobs/{bad_input.id}/retry")
    assert r.status_code == 409 and "submit it again" in r.json()["error"]["message"]

    view = api_client.get(f"/v1/jobs/{broken.id}").json()
    assert (view["error_kind"], view["can_retry"], view["failed_attempts"]) == ("render", True, 1)
    assert api_client.post(f"/v1/jobs/{broken.id}/retry").status_code == 200
