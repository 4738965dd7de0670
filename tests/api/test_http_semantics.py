"""HTTP as clients and tools read it: `Allow` on every 405, deleted resources that stay
deleted, page sizes refused with their range, and an OpenAPI document exactly as strict as
the server, so that a request the schema allows is one the server takes."""

from __future__ import annotations

import uuid

import jsonschema
import pytest

from db.states import JobStatus

METHODS = {"get", "post", "put", "patch", "delete"}


def documented(client) -> dict[str, set[str]]:
    schema = client.get("/openapi.json").json()
    return {
        path: {m.upper() for m in item if m in METHODS} for path, item in schema["paths"].items()
    }


def concrete(path: str) -> str:
    return (
        path.replace("{job_id}", str(uuid.uuid4()))
        .replace("{batch_id}", str(uuid.uuid4()))
        .replace("{upload_id}", "upl_" + "0" * 24)
        .replace("{webhook_id}", "wh_" + "0" * 24)
        .replace("{key}", "jobs/x/output.mp4")
    )


def test_every_405_lists_every_method_of_the_path(api_client):
    paths = documented(api_client)
    assert paths["/v1/jobs"] == {"GET", "POST"}
    for path, methods in paths.items():
        for method in ("OPTIONS", "PATCH", "PUT", "DELETE", "POST", "GET"):
            if method in methods:
                continue
            r = api_client.request(method, concrete(path))
            assert r.status_code == 405, (method, path, r.status_code)
            allow = {m.strip() for m in r.headers["allow"].split(",")}
            assert allow == methods, (method, path, r.headers["allow"])
            assert r.json()["error"]["code"] == "method_not_allowed"


def test_a_deleted_webhook_is_gone(api_client, api_services):
    from dataclasses import replace

    api_services.config = replace(api_services.config, webhook_allowed_hosts=("127.0.0.1",))
    hook = api_client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"}).json()
    path = f"/v1/webhooks/{hook['id']}"
    assert api_client.get(path).status_code == 200
    assert api_client.delete(path).status_code == 204
    for method, url in (("GET", path), ("DELETE", path), ("GET", f"{path}/deliveries")):
        r = api_client.request(method, url)
        assert r.status_code == 404, (method, url, r.text)
        assert r.json()["error"]["code"] == "webhook_not_found"
    assert api_client.get("/v1/webhooks").json()["webhooks"] == []


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/batches", "/v1/webhooks/{id}/deliveries"])
def test_page_sizes_past_the_maximum_are_refused_with_the_range(api_client, api_services, path):
    from dataclasses import replace

    if "{id}" in path:
        api_services.config = replace(api_services.config, webhook_allowed_hosts=("127.0.0.1",))
        hook = api_client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/h"}).json()
        path = path.replace("{id}", hook["id"])
    most = api_services.config.max_page_size
    assert api_client.get(path, params={"limit": most}).status_code == 200
    for limit in (0, most + 1, 100_000):
        r = api_client.get(path, params={"limit": limit})
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["field"] == "limit"
        assert f"between 1 and {most}" in error["message"]


# --------------------------------------------------------------------------- the schema


@pytest.fixture
def schema(api_client) -> dict:
    return api_client.get("/openapi.json").json()


def parameter(schema: dict, path: str, method: str, name: str) -> dict:
    for p in schema["paths"][path][method].get("parameters", []):
        if p["name"] == name:
            s = p["schema"]
            option = next((o for o in s.get("anyOf", []) if o.get("type") != "null"), {})
            return {**{k: v for k, v in s.items() if k != "anyOf"}, **option}
    raise KeyError(name)


def test_the_schema_states_every_limit_the_server_enforces(schema, api_services):
    config = api_services.config
    for path in ("/v1/jobs/{job_id}/result", "/v1/jobs/{job_id}/segments"):
        expires = parameter(schema, path, "get", "expires_in")
        assert (expires["minimum"], expires["maximum"]) == (1, config.presign_max_s)
    for path in ("/v1/jobs", "/v1/batches"):
        key = parameter(schema, path, "post", "Idempotency-Key")
        assert (key["minLength"], key["maxLength"]) == (1, 255)
        limit = parameter(schema, path, "get", "limit")
        assert (limit["minimum"], limit["maximum"]) == (1, config.max_page_size)
        cursor = parameter(schema, path, "get", "cursor")
        assert cursor["maxLength"] <= 200 and cursor["pattern"] == "^[A-Za-z0-9_-]+$"
    status = parameter(schema, "/v1/jobs", "get", "status")["items"]
    status = schema["components"]["schemas"][status["$ref"].rsplit("/", 1)[1]]
    assert set(status["enum"]) == {s.value for s in JobStatus}
    for path in ("/v1/jobs/{job_id}/events", "/v1/webhooks/{webhook_id}/deliveries"):
        after = parameter(schema, path, "get", "after")
        assert (after["minimum"], after["maximum"]) == (0, 10**18 - 1)
    last = parameter(schema, "/v1/jobs/{job_id}/events", "get", "Last-Event-ID")
    assert last["pattern"] == "^[0-9]{1,18}$"
    url = schema["components"]["schemas"]["WebhookRequest"]["properties"]["url"]
    assert url["pattern"].startswith("^https?://") and url["maxLength"] == 2048
    assert parameter(schema, "/v1/webhooks/{webhook_id}", "get", "webhook_id")["pattern"]
    assert parameter(schema, "/v1/uploads/{upload_id}", "get", "upload_id")["pattern"]


def body_schema(schema: dict, name: str) -> dict:
    return {**schema["components"]["schemas"][name], "components": schema["components"]}


JOB = {"prompt": "A presenter", "image": "upl_" + "0" * 24, "audio": "upl_" + "1" * 24}


@pytest.mark.parametrize(
    "body,valid",
    [
        ({"jobs": [JOB]}, True),
        ({"defaults": {"prompt": "p"}, "jobs": [{k: v for k, v in JOB.items() if k != "prompt"}]},
         True),
        ({"jobs": [{k: v for k, v in JOB.items() if k != "prompt"}]}, False),
        ({"jobs": [{k: v for k, v in JOB.items() if k != "audio"}]}, False),
        ({"defaults": {"audio": JOB["audio"]}, "jobs": [{"prompt": "p", "image": JOB["image"]}]},
         True),
        ({"jobs": [{**JOB, "seed": True}]}, False),
        ({"jobs": [{**JOB, "priority": "5"}]}, False),
        ({"jobs": []}, False),
    ],
)  # fmt: skip
def test_the_batch_schema_and_the_server_agree(schema, api_client, body, valid):
    validator = jsonschema.Draft202012Validator(
        {"$ref": "#/components/schemas/BatchRequest", "components": schema["components"]}
    )
    assert validator.is_valid(body) == valid, list(validator.iter_errors(body))
    r = api_client.post("/v1/batches", json=body)
    if valid:  # the uploads do not exist: the schema cannot know that
        assert r.json()["error"]["code"] == "input_not_found", r.text
    else:
        assert r.status_code in (400, 422) and r.json()["error"]["code"] != "input_not_found"


@pytest.mark.parametrize(
    "body,valid",
    [
        (JOB, True),
        ({**JOB, "prompt": "   "}, False),
        ({**JOB, "num_clips": None}, True),
        ({**JOB, "num_clips": 0}, False),
        ({**JOB, "num_clips": "audio"}, False),  # words are for form fields
        ({**JOB, "seed": 2**63}, False),
        ({**JOB, "infer_frames": 50}, False),
        ({**JOB, "size": "999*999"}, False),
        ({**JOB, "webhook_url": "ftp://example.com/"}, False),
        ({**JOB, "webhook_events": "started"}, False),
        ({**JOB, "priority": 1.5}, False),
        ({**JOB, "watermark": {"opacity": True}}, False),
    ],
)
def test_the_job_schema_and_the_server_agree(schema, api_client, body, valid):
    validator = jsonschema.Draft202012Validator(
        {"$ref": "#/components/schemas/JobRequest", "components": schema["components"]}
    )
    assert validator.is_valid(body) == valid, list(validator.iter_errors(body))
    r = api_client.post("/v1/jobs", json=body)
    if valid:
        assert r.json()["error"]["code"] == "input_not_found", r.text
    else:
        assert r.status_code in (400, 422) and r.json()["error"]["code"] != "input_not_found"
