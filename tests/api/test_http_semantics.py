"""HTTP as clients and tools read it: `Allow` on every 405, deleted resources that stay
deleted, page sizes refused with their range, and an OpenAPI document exactly as strict as
the server, so that a request the schema allows is one the server takes."""

from __future__ import annotations

import re
import uuid

import jsonschema
import pytest

from db.states import JobStatus
from tests.conftest import INPUT_BUCKET

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
        assert cursor["pattern"] == "^[0-9a-f]{46}$"
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
        ({**JOB, "image": f"s3://{INPUT_BUCKET}/faces/a.png"}, True),
        ({**JOB, "image": f"s3://{INPUT_BUCKET}/faces/../a.png"}, False),
        ({**JOB, "image": f"s3://{INPUT_BUCKET}/faces//a.png"}, False),
        ({**JOB, "image": "s3://someone-elses-bucket/a.png"}, False),
        ({**JOB, "image": "upl_123"}, False),
        # a script instead of audio: not both, no control characters, a language on offer
        ({**JOB, "audio": None, "script": "Hi there", "language": "en-us"}, True),
        ({**JOB, "script": "Hi there", "language": "en-us"}, False),
        ({**JOB, "audio": None, "script": "Hi\x07", "language": "en-us"}, False),
        ({**JOB, "audio": None, "script": " \n ", "language": "en-us"}, False),
        ({**JOB, "audio": None, "script": "Hi", "language": "tlh"}, False),
        ({**JOB, "audio": None, "script": "Hi", "language": "en-us", "voice": "nobody"}, False),
    ],
)
def test_the_job_schema_and_the_server_agree(schema, api_client, body, valid):
    validator = jsonschema.Draft202012Validator(
        {"$ref": "#/components/schemas/JobRequest", "components": schema["components"]}
    )
    assert validator.is_valid(body) == valid, list(validator.iter_errors(body))
    r = api_client.post("/v1/jobs", json=body)
    if valid:  # the inputs do not exist: the schema cannot know that
        assert r.json()["error"]["code"] == "input_not_found", r.text
    else:
        assert r.status_code in (400, 422) and r.json()["error"]["code"] != "input_not_found"


PRESENTER_JOB = {"presenter": "anna", "audio": JOB["audio"]}
SCRIPT = {"script": "Hi there", "language": "en-us"}


@pytest.mark.parametrize(
    "body,valid",
    [
        (PRESENTER_JOB, True),
        ({"presenter": "anna", **SCRIPT}, True),  # a presenter and a script: nothing else
        ({**PRESENTER_JOB, "audio": None, **SCRIPT}, True),
        ({**JOB, "presenter": None}, True),
        ({"presenter": "anna"}, False),  # no speech
        ({**PRESENTER_JOB, **SCRIPT}, False),  # two
        ({**PRESENTER_JOB, "prompt": "p"}, False),  # the presenter's own fields
        ({**PRESENTER_JOB, "size": "720*400"}, False),
        ({**PRESENTER_JOB, "image": JOB["image"]}, False),
        ({"prompt": "p", **SCRIPT}, False),  # no portrait
        ({"image": JOB["image"], **SCRIPT}, False),  # no prompt
        ({**JOB, "image": None}, False),
    ],
)
def test_the_job_schema_says_what_each_combination_requires(schema, api_client, body, valid):
    """image and prompt, or a presenter; audio, or a script."""
    validator = jsonschema.Draft202012Validator(
        {"$ref": "#/components/schemas/JobRequest", "components": schema["components"]}
    )
    assert validator.is_valid(body) == valid, list(validator.iter_errors(body))
    r = api_client.post("/v1/jobs", json=body)
    assert r.status_code in (400, 422), r.text
    # no such presenter or inputs: the schema cannot know that
    unknowable = r.json()["error"]["code"] in ("presenter_not_found", "input_not_found")
    assert unknowable == valid, r.text


def test_every_cursor_of_the_published_form_is_one_the_server_takes(api_client, create_job):
    from api.routes.jobs import encode_cursor

    job = create_job(api_client.app.state.services.database)
    for cursor in ("0" * 46, "f" * 46, encode_cursor(job.created_at, job.id)):
        for path in ("/v1/jobs", "/v1/batches"):
            assert api_client.get(path, params={"cursor": cursor}).status_code == 200, cursor
    for cursor in ("", "0" * 45, "0" * 47, "g" * 46, "F" * 46, "garbage!"):
        r = api_client.get("/v1/jobs", params={"cursor": cursor})
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_cursor"), cursor


@pytest.mark.parametrize(
    "fields,ok",
    [
        ({"num_clips": "1"}, True),
        ({"num_clips": "audio"}, True),
        ({"num_clips": ""}, True),
        ({"num_clips": "AUDIO"}, False),
        ({"num_clips": " 1"}, False),
        ({"num_clips": "1.0"}, False),
        ({"seed": "12"}, True),
        ({"seed": "+12"}, False),
        ({"webhook_events": "started, failed", "webhook_url": "http://93.184.216.34/"}, True),
        ({"webhook_events": "started,,failed", "webhook_url": "http://93.184.216.34/"}, False),
        ({"watermark": '{"corner": "top-left"}'}, True),
        ({"watermark": '{"opacity": true}'}, False),
        ({"colour": "red"}, False),
    ],
)
def test_the_form_schema_and_the_server_agree(schema, api_client, fields, ok):
    from tests import media

    form = schema["components"]["schemas"]["JobForm"]
    assert form["additionalProperties"] is False and "required" not in form
    assert form["oneOf"] == [{"required": ["audio"]}, {"required": ["script"]}]
    # image and prompt, or a presenter instead of image, prompt and size (said in words)
    assert "image and prompt are required unless presenter is given" in form["description"]
    pattern = form["properties"]["webhook_events"]["pattern"]
    if "webhook_events" in fields:
        assert bool(re.match(pattern, fields["webhook_events"])) == ok
    if "num_clips" in fields:
        words = form["properties"]["num_clips"]["anyOf"][1]["enum"]
        assert (fields["num_clips"] in words or fields["num_clips"].isdigit()) == ok
    files = {"image": ("a.png", media.png()), "audio": ("a.wav", media.wav(1.0))}
    r = api_client.post("/v1/jobs", files=files, data={"prompt": "p", **fields})
    assert r.status_code == (201 if ok else 422), r.text


def test_uploads_take_only_their_two_fields(api_client):
    from tests import media

    r = api_client.post(
        "/v1/uploads", files={"file": ("a.png", media.png())}, data={"kind": "image", "x": "1"}
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "x"
