"""Bad input is the client's error, never the server's: integers past 64 bits, NUL characters
and unencodable text anywhere a request carries them get a 4xx that names the input, and a
job refused inside its transaction leaves the process as it found it."""

from __future__ import annotations

import itertools
import json
import uuid

import httpx
import pytest

from tests import media
from tests.api.test_event_stream import read_events

TOO_BIG = 2**63  # one past the largest bigint
TOO_BIG_TEXT = str(TOO_BIG)
LARGEST = 10**18 - 1  # the largest id a request may name (18 digits)


def operations(client) -> list[tuple[str, str, dict]]:
    """(method, path, parameter) for every documented query, path and header parameter."""
    schema = client.get("/openapi.json").json()
    return [
        (method, path, parameter)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        for parameter in operation.get("parameters", [])
    ]


def _schema_of(parameter: dict) -> dict:
    schema = parameter["schema"]
    if "items" in schema:
        return schema["items"]
    for option in schema.get("anyOf", []):
        if option.get("type") != "null":
            return option
    return schema


def fill(path: str, ids: dict[str, str], override: tuple[str, str] | None = None) -> str:
    if override is not None:
        path = path.replace("{" + override[0] + "}", override[1])
    for name, value in ids.items():
        path = path.replace("{" + name + "}", value)
    return path


@pytest.fixture
def ids(api_client, api_services, create_job) -> dict[str, str]:
    """Ids that exist, so that a request reaches its parameters' use, not a 404."""
    from dataclasses import replace

    api_services.config = replace(api_services.config, webhook_allowed_hosts=("127.0.0.1",))
    job = create_job(api_services.database)
    upload = api_client.post(
        "/v1/uploads", files={"file": ("a.png", media.png())}, data={"kind": "image"}
    ).json()
    hook = api_client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"}).json()
    return {
        "job_id": str(job.id),
        "batch_id": str(uuid.uuid4()),
        "upload_id": upload["id"],
        "webhook_id": hook["id"],
        "key": f"jobs/{job.id}/output.mp4",
    }


def send(client, method: str, path: str, parameter: dict, value: str):
    where = parameter["in"]
    params = {"expires": "1", "signature": "0"} if path.startswith("/v1/files/") else {}
    headers = {}
    if where == "query":
        params[parameter["name"]] = value
    elif where == "header":
        headers[parameter["name"]] = value
    return client.request(method.upper(), path, params=params, headers=headers)


def test_every_integer_parameter_refuses_values_past_64_bits(api_client, ids):
    checked = []
    for method, path, parameter in operations(api_client):
        if _schema_of(parameter).get("type") != "integer":
            continue
        override = (parameter["name"], TOO_BIG_TEXT) if parameter["in"] == "path" else None
        r = send(api_client, method, fill(path, ids, override), parameter, TOO_BIG_TEXT)
        assert 400 <= r.status_code < 500, (method, path, parameter["name"], r.text)
        assert parameter["name"] in r.json()["error"]["message"], r.text
        checked.append(parameter["name"])
    assert {"after", "limit", "expires_in"} <= set(checked)


def test_every_text_parameter_refuses_nul(api_client, ids):
    checked = []
    for method, path, parameter in operations(api_client):
        if _schema_of(parameter).get("type") != "string" or parameter["name"] == "Authorization":
            continue
        if parameter["in"] == "header":
            continue  # HTTP itself carries no NUL in a header
        override = (parameter["name"], "a%00b") if parameter["in"] == "path" else None
        r = send(api_client, method, fill(path, ids, override), parameter, "a\x00b")
        assert 400 <= r.status_code < 500, (method, path, parameter["name"], r.text)
        checked.append(f"{method} {path} {parameter['name']}")
    assert len(checked) >= 8, checked


def test_event_ids_past_64_bits(api_client, api_services, create_job):
    job = create_job(api_services.database)
    events = f"/v1/jobs/{job.id}/events"
    r = api_client.get(events, params={"after": TOO_BIG})
    assert r.status_code == 422 and r.json()["error"]["field"] == "after"
    r = api_client.get(events, params={"after": LARGEST})
    assert r.status_code == 200 and r.json() == {"events": []}
    assert api_client.get(events, params={"after": LARGEST + 1}).status_code == 422
    for accept, last in itertools.product(
        ("application/json", "text/event-stream"), (TOO_BIG_TEXT, str(LARGEST + 1), "x", "")
    ):
        r = api_client.get(events, headers={"Last-Event-ID": last, "Accept": accept})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_last_event_id"


def test_a_stream_resumed_at_the_largest_id_stays_open(live_api, api_key, api_services, create_job):
    """The stream answers and keeps going (no abort mid-response) at the edge of the range."""
    from db import job_store

    job = create_job(api_services.database)
    headers = {
        "Authorization": f"Bearer {api_key}",
        "Accept": "text/event-stream",
        "Last-Event-ID": str(LARGEST),
    }
    with httpx.stream(
        "GET", f"{live_api.url}/v1/jobs/{job.id}/events", headers=headers, timeout=30
    ) as r:
        assert r.status_code == 200
        with api_services.database.transaction() as s:
            job_store.request_cancel(s, job.id)
        events = read_events(
            r, until=lambda e: e[-1].get("event") == "job" and e[-1]["data"]["status"] == "canceled"
        )
    assert events[-1]["data"]["status"] == "canceled"


def test_webhook_delivery_log_after_past_64_bits(api_client, ids):
    r = api_client.get(f"/v1/webhooks/{ids['webhook_id']}/deliveries", params={"after": TOO_BIG})
    assert r.status_code == 422 and r.json()["error"]["field"] == "after"


# --------------------------------------------------------------------------- text in bodies

NUL = "a\x00b"
SURROGATE = "a\ud800b"  # valid JSON (an escape), but no UTF-8 exists for it


def good_job(uploads: dict[str, str]) -> dict:
    return {"prompt": "A presenter", "image": uploads["image"], "audio": uploads["audio"]}


@pytest.fixture
def uploads(api_client) -> dict[str, str]:
    image = api_client.post(
        "/v1/uploads", files={"file": ("a.png", media.png())}, data={"kind": "image"}
    )
    audio = api_client.post(
        "/v1/uploads", files={"file": ("a.wav", media.wav(2.0))}, data={"kind": "audio"}
    )
    return {"image": image.json()["id"], "audio": audio.json()["id"]}


@pytest.mark.parametrize("bad", [NUL, SURROGATE], ids=["nul", "surrogate"])
@pytest.mark.parametrize(
    "route,body,field",
    [
        ("/v1/jobs", lambda u, bad: {**good_job(u), "prompt": bad}, "prompt"),
        ("/v1/jobs", lambda u, bad: {**good_job(u), "image": "upl_" + bad}, "image"),
        ("/v1/jobs", lambda u, bad: {**good_job(u), "watermark": {"text": bad}}, "watermark.text"),
        ("/v1/jobs", lambda u, bad: {**good_job(u), "webhook_url": f"http://{bad}/"},
         "webhook_url"),
        ("/v1/jobs", lambda u, bad: {**good_job(u), "webhook_secret": bad * 8},
         "webhook_secret"),
        ("/v1/batches", lambda u, bad: {"name": bad, "jobs": [good_job(u)]}, "name"),
        ("/v1/batches", lambda u, bad: {"jobs": [{**good_job(u), "prompt": bad}]},
         "jobs[0].prompt"),
        ("/v1/batches", lambda u, bad: {"inputs": {"face": "upl_" + bad}, "jobs": [good_job(u)]},
         "inputs.face"),
        ("/v1/batches", lambda u, bad: {"defaults": {"prompt": bad}, "jobs": [good_job(u)]},
         "defaults.prompt"),
        ("/v1/webhooks", lambda u, bad: {"url": f"http://127.0.0.1/{bad}"}, "url"),
        ("/v1/webhooks", lambda u, bad: {"url": "http://127.0.0.1/", "secret": bad * 8}, "secret"),
        ("/v1/webhooks", lambda u, bad: {"url": "http://127.0.0.1/", "events": [bad]}, "events[0]"),
    ],
)  # fmt: skip
def test_text_that_cannot_be_stored_is_refused_in_every_json_field(
    api_client, api_services, uploads, route, body, field, bad
):
    from dataclasses import replace

    from tests.api.test_bad_inputs import leftovers

    api_services.config = replace(api_services.config, webhook_allowed_hosts=("127.0.0.1",))
    before = leftovers(api_services)
    # json.dumps writes \u0000 and \ud800 as escapes: valid JSON, as a client would send it
    content = json.dumps(body(uploads, bad))
    r = api_client.post(route, content=content, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == field
    assert "NUL" in error["message"] or "UTF-8" in error["message"]
    assert leftovers(api_services) == before


def test_nul_in_a_multipart_field(api_client, api_services):
    files = {"image": ("a.png", media.png()), "audio": ("a.wav", media.wav(1.0))}
    for name, value in (
        ("prompt", NUL),
        ("size", "720*400\x00"),
        ("params", '{"prompt": "a\\u0000"}'),
    ):
        r = api_client.post("/v1/jobs", files=files, data={"prompt": "p", name: value})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == ("prompt" if name == "params" else name)
    r = api_client.post(
        "/v1/uploads", files={"file": ("a.png", media.png())}, data={"kind": "image\x00"}
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "kind"


# --------------------------------------------------------------------------- upload cache


@pytest.mark.parametrize(
    "rejected,code",
    [
        (lambda u: {**good_job(u), "num_clips": 5}, "num_clips_exceeds_audio"),
        (lambda u: {**good_job(u), "image": u["audio"], "audio": u["image"]}, "invalid_reference"),
        (lambda u: {**good_job(u), "prompt": NUL}, "invalid_parameter"),
        (lambda u: {**good_job(u), "watermark": {"text": "x" * 64, "scale": 0.5}},
         "watermark_does_not_fit"),
    ],
    ids=["clips-beyond-audio", "kinds-swapped", "nul-prompt", "watermark-too-wide"],
)  # fmt: skip
def test_a_job_refused_in_its_transaction_leaves_the_upload_cache_usable(
    api_client, api_services, uploads, rejected, code
):
    r = api_client.post("/v1/jobs", json=rejected(uploads))
    assert r.status_code == 422 and r.json()["error"]["code"] == code, r.text
    for _ in range(2):  # from the database, then from the cache
        r = api_client.post("/v1/jobs", json=good_job(uploads))
        assert r.status_code == 201, r.text


def test_the_upload_cache_holds_plain_immutable_records(api_client, api_services, uploads):
    import dataclasses

    assert api_client.post("/v1/jobs", json=good_job(uploads)).status_code == 201
    cache = api_services.upload_cache
    record = cache.get("default", uploads["audio"])
    assert record is not None and dataclasses.is_dataclass(record)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.key = "elsewhere"  # type: ignore[misc]
    with pytest.raises(TypeError):
        record.info["duration_s"] = 1e9  # type: ignore[index]
