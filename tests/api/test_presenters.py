"""/v1/presenters, and jobs that name a presenter instead of sending a portrait and a prompt."""

from __future__ import annotations

import hashlib
import uuid

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api import create_app
from api.quota import QuotaCounter
from db import job_store, tenants
from db.params import presenter_key
from speech import EspeakEngine
from tests import media
from tests.api import crafted
from tests.api.test_scripts import wav_samples
from tests.conftest import INPUT_BUCKET, make_api_key

PROMPT = "A teacher at a whiteboard, warm light"


def create(client, name="anna", image=None, prompt=PROMPT, size="720*400", ref=None, **fields):
    """A presenter by form: the portrait as a file (default: a PNG; b"": none) or `ref`."""
    data = {"name": name, "prompt": prompt, "size": size, "image": ref, **fields}
    fields = [(k, str(v).encode()) for k, v in data.items() if v is not None]
    files = [("image", "anna.png", image or media.png())] if image != b"" else []
    body, headers = crafted.multipart(fields, files)
    return client.post("/v1/presenters", content=body, headers=headers)


def submit(client, audio=None, headers=None, **fields):
    files = {"audio": ("speech.wav", audio or media.wav(2.0), "audio/wav")}
    return client.post("/v1/jobs", files=files, data=fields, headers=headers or {})


def rows(services, table: str) -> int:
    with services.database.transaction() as s:
        return s.scalar(sa.text(f"SELECT count(*) FROM {table}"))


@pytest.fixture
def other_client(api_services):
    """The same app, authenticated as tenant `other`."""
    key = make_api_key(api_services.database, "other")
    with TestClient(create_app(api_services), headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


def test_create_get_list_and_delete(api_client, api_services):
    image = media.png(256, 384)
    r = create(api_client, image=image)
    assert r.status_code == 201, r.text
    body = r.json()
    assert r.headers["location"] == "/v1/presenters/anna"
    assert (body["name"], body["prompt"], body["size"]) == ("anna", PROMPT, "720*400")
    assert (body["image_width"], body["image_height"], body["image_format"]) == (256, 384, "PNG")
    assert (body["width"], body["height"]) == (384, 576)  # the portrait's 2:3 within 720*400
    # the portrait is stored once, as an upload, under the documented layout
    upload = api_client.get(f"/v1/uploads/{body['image']}").json()
    assert upload["kind"] == "image" and upload["bytes"] == len(image)
    (key,) = api_services.storage.list()
    assert (
        key.startswith(f"uploads/{body['image']}.") and api_services.storage.get_bytes(key) == image
    )

    assert api_client.get("/v1/presenters/anna").json() == body
    assert create(api_client, name="bob", prompt="A narrator").status_code == 201
    listed = api_client.get("/v1/presenters").json()
    assert [p["name"] for p in listed["presenters"]] == ["anna", "bob"]
    page = api_client.get("/v1/presenters", params={"limit": 1}).json()
    assert [p["name"] for p in page["presenters"]] == ["anna"]
    rest = api_client.get("/v1/presenters", params={"cursor": page["next_cursor"]}).json()
    assert [p["name"] for p in rest["presenters"]] == ["bob"] and rest["next_cursor"] is None

    assert api_client.delete("/v1/presenters/anna").status_code == 204
    r = api_client.get("/v1/presenters/anna")
    assert r.status_code == 404 and r.json()["error"]["code"] == "presenter_not_found"
    assert api_client.delete("/v1/presenters/anna").status_code == 404
    assert [p["name"] for p in api_client.get("/v1/presenters").json()["presenters"]] == ["bob"]


def test_a_duplicate_name_is_a_conflict_that_stores_nothing(api_client, api_services):
    assert create(api_client, image=media.png(256, 256)).status_code == 201
    objects = api_services.storage.list()
    r = create(api_client, image=media.png(320, 320), prompt="someone else")
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "presenter_exists"
    assert "'anna'" in r.json()["error"]["message"]
    assert api_services.storage.list() == objects
    assert (rows(api_services, "presenters"), rows(api_services, "uploads")) == (1, 1)
    assert api_client.get("/v1/presenters/anna").json()["image_width"] == 256


def test_the_portrait_by_upload_id_and_by_s3_reference(api_client, api_services, s3_client):
    image = media.png(300, 300)
    upload = api_client.post(
        "/v1/uploads", data={"kind": "image"}, files={"file": ("p.png", image, "image/png")}
    ).json()
    r = api_client.post(
        "/v1/presenters", json={"name": "by-id", "prompt": PROMPT, "image": upload["id"]}
    )
    assert r.status_code == 201, r.text
    assert r.json()["image"] == upload["id"] and r.json()["size"] == "720*400"  # the default

    key = f"refs-{uuid.uuid4().hex}/face.png"
    s3_client.put_object(Bucket=INPUT_BUCKET, Key=key, Body=image)
    r = create(api_client, name="by-s3", image=b"", ref=f"s3://{INPUT_BUCKET}/{key}")
    assert r.status_code == 201, r.text
    assert r.json()["image"] == upload["id"]  # the same bytes: the same upload
    assert rows(api_services, "uploads") == 1


def test_name_unique_per_tenant_and_tenants_see_only_their_own(
    api_client, other_client, api_services
):
    assert create(api_client, prompt="default's anna").status_code == 201
    assert other_client.get("/v1/presenters").json()["presenters"] == []
    assert other_client.get("/v1/presenters/anna").status_code == 404
    assert other_client.delete("/v1/presenters/anna").status_code == 404
    r = submit(other_client, presenter="anna")
    assert r.status_code == 422 and r.json()["error"]["code"] == "presenter_not_found"
    assert "'anna'" in r.json()["error"]["message"]
    # the other tenant may use the name for a presenter of its own
    assert create(other_client, prompt="other's anna").status_code == 201
    assert other_client.get("/v1/presenters/anna").json()["prompt"] == "other's anna"
    assert api_client.get("/v1/presenters/anna").json()["prompt"] == "default's anna"
    job = submit(other_client, presenter="anna").json()
    assert job["params"]["prompt"] == "other's anna"
    assert api_client.get(f"/v1/jobs/{job['id']}").status_code == 404
    # nor can a tenant make a presenter of another tenant's upload
    upload = api_client.get("/v1/presenters/anna").json()["image"]
    r = other_client.post("/v1/presenters", json={"name": "x", "prompt": "p", "image": upload})
    assert r.status_code == 422 and r.json()["error"]["code"] == "input_not_found"


BAD = [
    # (what, form fields or None for defaults, image bytes, status, code, message fragment)
    ("name-missing", {"name": None}, None, 422, "invalid_parameter", "name: missing"),
    ("name-bad", {"name": "anna/../x"}, None, 422, "invalid_parameter", "is not valid"),
    ("name-long", {"name": "a" * 65}, None, 422, "invalid_parameter", "name"),
    ("prompt-missing", {"prompt": None}, None, 422, "invalid_parameter", "prompt: required"),
    ("prompt-empty", {"prompt": "   "}, None, 422, "invalid_parameter", "the prompt is empty"),
    ("prompt-long", {"prompt": "x" * 2001}, None, 422, "invalid_parameter", "at most 2000"),
    ("size-unknown", {"size": "999*999"}, None, 422, "invalid_parameter", "size"),
    ("field-unknown", {"seed": "3"}, None, 422, "invalid_parameter", "seed: unknown field"),
    ("image-missing", {}, b"", 422, "missing_input", "image is required"),
    ("image-corrupt", {}, b"\x89PNG\r\n\x1a\nnot really", 422, "invalid_image", "image"),
    ("image-gif", {}, media.image_bytes("GIF"), 422, "unsupported_image_format", "PNG, JPEG"),
    ("image-tiny", {}, media.image_bytes("PNG", 16, 16), 422, "invalid_image", "at least"),
    (
        "image-too-many-bytes",
        {},
        b"\x89PNG" + bytes(2 * 1024 * 1024),
        413,
        "image_too_large",
        "larger than the limit",
    ),
    ("image-upload-unknown", {"ref": "upl_" + "0" * 24}, b"", 422, "input_not_found", "upl_"),
    ("image-not-a-reference", {"ref": "face.png"}, b"", 422, "invalid_reference", "neither"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_refused_and_leaves_nothing_behind(api_client, api_services, case):
    _, fields, image, status, code, fragment = case
    r = create(api_client, image=image, **fields)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and fragment in error["message"], error
    assert (rows(api_services, "presenters"), rows(api_services, "uploads")) == (0, 0)
    assert api_services.storage.list() == []


def test_bad_json_and_media_types(api_client, api_services):
    r = api_client.post("/v1/presenters", json={"name": "a", "prompt": 3, "image": "upl_x"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "prompt"
    r = api_client.post("/v1/presenters", content=b"name=a", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    assert api_services.storage.list() == [] and rows(api_services, "presenters") == 0


# --------------------------------------------------------------------------- jobs


def test_a_job_by_presenter_holds_what_a_job_with_the_files_holds(api_client, api_services):
    image, audio = media.png(256, 384), media.wav(3.0)
    assert create(api_client, image=image, size="480*832").status_code == 201
    by_files = api_client.post(
        "/v1/jobs",
        files={"image": ("anna.png", image, "image/png"), "audio": ("s.wav", audio, "audio/wav")},
        data={"prompt": PROMPT, "size": "480*832", "seed": "11", "num_clips": "1"},
    ).json()
    r = submit(api_client, audio=audio, presenter="anna", seed="11", num_clips="1")
    assert r.status_code == 201, r.text
    by_presenter = r.json()
    assert by_presenter["params"] == by_files["params"]
    assert by_presenter["progress"] == by_files["progress"]
    assert (by_presenter["presenter"], by_files["presenter"]) == ("anna", None)
    storage = api_services.storage
    for kind in ("image", "audio"):
        assert storage.get_bytes(by_presenter["inputs"][kind]) == storage.get_bytes(
            by_files["inputs"][kind]
        )
    # the job refers to the presenter's stored portrait: nothing is copied per job
    assert by_presenter["inputs"]["image"].startswith("uploads/")

    # JSON, with the audio by reference, works the same way
    audio_id = api_client.post(
        "/v1/uploads", data={"kind": "audio"}, files={"file": ("s.wav", audio, "audio/wav")}
    ).json()["id"]
    r = api_client.post(
        "/v1/jobs", json={"presenter": "anna", "audio": audio_id, "seed": 11, "num_clips": 1}
    )
    assert r.status_code == 201, r.text
    assert r.json()["params"] == by_files["params"]


@pytest.mark.parametrize(
    "extra,dropped",
    [
        ({"prompt": "another"}, "prompt"),
        ({"size": "720*400"}, "size"),
        ({"prompt": "another", "size": "720*400"}, "prompt and size"),
    ],
)
def test_a_presenter_and_its_own_fields_together_are_refused(
    api_client, api_services, extra, dropped
):
    create(api_client)
    r = submit(api_client, presenter="anna", **extra)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "presenter_conflict"
    assert f"drop {dropped}, or drop presenter" in error["message"]
    assert rows(api_services, "jobs") == 0


def test_a_presenter_and_an_image_file_together_are_refused(api_client, api_services):
    create(api_client)
    objects = api_services.storage.list()
    r = api_client.post(
        "/v1/jobs",
        files={"image": ("p.png", media.png(), "image/png"),
               "audio": ("s.wav", media.wav(1.0), "audio/wav")},
        data={"presenter": "anna"},
    )  # fmt: skip
    assert r.status_code == 422 and r.json()["error"]["field"] == "image"
    assert "drop image" in r.json()["error"]["message"]
    assert rows(api_services, "jobs") == 0 and api_services.storage.list() == objects


def test_an_unknown_presenter_is_named_in_the_error(api_client, api_services):
    r = submit(api_client, presenter="nobody")
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert (error["code"], error["field"]) == ("presenter_not_found", "presenter")
    assert "'nobody'" in error["message"]
    assert rows(api_services, "jobs") == 0 and api_services.storage.list() == []
    r = submit(api_client, presenter="no/such")
    assert r.status_code == 422 and r.json()["error"]["field"] == "presenter"


def test_idempotency_as_for_any_job(api_client, api_services):
    create(api_client)
    headers = {"Idempotency-Key": "lesson-1"}
    audio = media.wav(1.0)
    first = submit(api_client, audio=audio, headers=headers, presenter="anna")
    again = submit(api_client, audio=audio, headers=headers, presenter="anna")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    other = submit(api_client, audio=media.wav(1.5), headers=headers, presenter="anna")
    assert other.status_code == 409
    # a retry still gets its job after the presenter is gone
    api_client.delete("/v1/presenters/anna")
    assert (
        submit(api_client, audio=audio, headers=headers, presenter="anna").json()["id"]
        == (first.json()["id"])
    )


def test_the_tenant_quota_counts_presenter_jobs(api_client, api_services):
    api_services.quota = QuotaCounter(ttl_s=0)  # counted at every submission here
    with api_services.database.transaction() as s:
        tenants.set_limits(s, "default", {"max_queued_jobs": 1})
    create(api_client)
    assert submit(api_client, presenter="anna").status_code == 201
    r = submit(api_client, presenter="anna")
    assert r.status_code == 429 and r.json()["error"]["code"] == "queued_job_limit"
    assert rows(api_services, "jobs") == 1


def test_deleting_a_presenter_leaves_accepted_jobs_as_they_were(api_client, api_services):
    image = media.png(256, 256)
    create(api_client, image=image)
    job = submit(api_client, presenter="anna").json()
    assert api_client.delete("/v1/presenters/anna").status_code == 204
    # a new presenter of the same name changes nothing about the job
    create(api_client, image=media.png(320, 192), prompt="someone else", size="64*64")
    after = api_client.get(f"/v1/jobs/{job['id']}").json()
    assert (after["params"], after["inputs"], after["presenter"]) == (
        job["params"], job["inputs"], "anna",
    )  # fmt: skip
    assert api_services.storage.get_bytes(job["inputs"]["image"]) == image


def stored_jobs(services, ids):
    with services.database.transaction() as s:
        return [job_store.get_job(s, uuid.UUID(i)) for i in ids]


def test_a_presenter_job_has_the_presenter_key_of_the_same_job_sent_with_the_files(
    api_client, api_services
):
    """The workers' presenter cache and claim affinity go by the key: a presenter's jobs share
    it with the same jobs sent with the portrait's file, from any route."""
    image, audio = media.png(256, 384), media.wav(2.0)
    anna = create(api_client, image=image, size="480*832").json()
    by_files = api_client.post(
        "/v1/jobs",
        files={"image": ("anna.png", image, "image/png"), "audio": ("s.wav", audio, "audio/wav")},
        data={"prompt": PROMPT, "size": "480*832", "seed": "5"},
    )
    by_presenter = submit(api_client, audio=audio, presenter="anna", seed="5")
    audio_id = api_client.post(
        "/v1/uploads", data={"kind": "audio"}, files={"file": ("s.wav", audio, "audio/wav")}
    ).json()["id"]
    batch = api_client.post(
        "/v1/batches", json={"jobs": [{"presenter": "anna", "audio": audio_id, "seed": 5}]}
    )
    fp8 = submit(api_client, audio=audio, presenter="anna", seed="5", precision="fp8")
    for r in (by_files, by_presenter, batch, fp8):
        assert r.status_code == 201, r.text
    ids = [r.json()["id"] for r in (by_files, by_presenter, fp8)] + batch.json()["job_ids"]
    files_job, presenter_job, fp8_job, batch_job = stored_jobs(api_services, ids)
    # the portrait is an upload: its sha256 is the file's
    upload = api_client.get(f"/v1/uploads/{anna['image']}").json()
    assert upload["sha256"] == hashlib.sha256(image).hexdigest()
    want = presenter_key("default", upload["sha256"], files_job.job_params, "bf16")
    assert files_job.presenter_key == presenter_job.presenter_key == batch_job.presenter_key
    assert files_job.presenter_key == want
    assert fp8_job.presenter_key == presenter_key(
        "default", upload["sha256"], files_job.job_params, "fp8"
    )
    assert fp8_job.presenter_key != want


SCRIPT = "Hello, and welcome to the course."
SPOKEN = {"text": SCRIPT, "language": "en-us", "voice": "f3", "engine": "espeak-ng"}


def test_a_presenter_job_may_give_a_script_instead_of_audio(api_client, api_services):
    """The presenter gives the portrait, prompt and size, the script the speech: by JSON, by a
    form with no file at all, and in a batch; the same job as one with the files."""
    image = media.png(256, 384)
    assert create(api_client, image=image, size="480*832").status_code == 201
    speech = {"script": SCRIPT, "language": "en-us", "voice": "f3"}
    by_files = api_client.post(
        "/v1/jobs",
        files={"image": ("anna.png", image, "image/png")},
        data={"prompt": PROMPT, "size": "480*832", "seed": "5", **speech},
    )
    by_json = api_client.post("/v1/jobs", json={"presenter": "anna", "seed": 5, **speech})
    fields = {"presenter": "anna", "seed": "5", **speech}
    body, headers = crafted.multipart([(k, v.encode()) for k, v in fields.items()], [])
    by_form = api_client.post("/v1/jobs", content=body, headers=headers)
    batch = api_client.post(
        "/v1/batches",
        json={"defaults": {"language": "en-us", "voice": "f3"},
              "jobs": [{"presenter": "anna", "script": SCRIPT, "seed": 5}]},
    )  # fmt: skip
    for r in (by_files, by_json, by_form, batch):
        assert r.status_code == 201, r.text
    jobs = [r.json() for r in (by_files, by_json, by_form)]
    jobs.append(api_client.get(f"/v1/jobs/{batch.json()['job_ids'][0]}").json())
    assert [j["presenter"] for j in jobs] == [None, "anna", "anna", "anna"]
    for job in jobs:
        assert job["params"] == jobs[0]["params"]
        assert job["params"]["script"] == SPOKEN
        assert (job["params"]["prompt"], job["params"]["size"]) == (PROMPT, "480*832")
    # each job's audio input is the engine's speech of the script
    spoken = EspeakEngine().synthesise(SCRIPT, "en-us", "f3")
    for job in jobs:
        samples, rate = wav_samples(api_services.storage.get_bytes(job["inputs"]["audio"]))
        assert rate == spoken.sample_rate and np.array_equal(samples, spoken.samples)
    keys = {j.presenter_key for j in stored_jobs(api_services, [j["id"] for j in jobs])}
    assert len(keys) == 1 and None not in keys


@pytest.mark.parametrize(
    "body,code,field",
    [
        ({"presenter": "anna"}, "missing_input", "audio"),
        ({"presenter": "anna", "script": SCRIPT, "language": "en-us", "audio": "upl_" + "1" * 24},
         "script_and_audio", "script"),
        ({"presenter": "anna", "script": SCRIPT, "language": "tlh"}, "unknown_language",
         "language"),
        ({"presenter": "anna", "script": SCRIPT, "language": "en-us", "prompt": "p"},
         "presenter_conflict", "prompt"),
        ({"presenter": "nobody", "script": SCRIPT, "language": "en-us"}, "presenter_not_found",
         "presenter"),
    ],
)  # fmt: skip
def test_bad_presenter_and_script_jobs_are_refused_and_leave_nothing(
    api_client, api_services, body, code, field
):
    create(api_client)
    objects = api_services.storage.list()
    r = api_client.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["field"]) == (code, field)
    assert rows(api_services, "jobs") == 0 and api_services.storage.list() == objects


# --------------------------------------------------------------------------- batches


def test_batch_jobs_may_name_presenters(api_client, api_services):
    create(api_client, image=media.png(256, 384), size="480*832")
    create(api_client, name="bob", image=media.png(320, 320), prompt="A narrator", size="64*64")
    up = {
        kind: api_client.post(
            "/v1/uploads", data={"kind": kind}, files={"file": ("f", data)}
        ).json()["id"]
        for kind, data in (("image", media.png(384, 256)), ("audio", media.wav(2.0)))
    }
    body = {
        # the defaults' presenter, size and image: each job takes what applies to it
        "defaults": {"presenter": "anna", "audio": up["audio"], "size": "384*256", "seed": 3},
        "jobs": [
            {},  # anna
            {"presenter": "bob"},  # bob, with his own size, not the defaults'
            {"prompt": "A guest", "image": up["image"]},  # its own portrait: no presenter
        ],
    }
    r = api_client.post("/v1/batches", json=body)
    assert r.status_code == 201, r.text
    jobs = [api_client.get(f"/v1/jobs/{i}").json() for i in r.json()["job_ids"]]
    assert [j["presenter"] for j in jobs] == ["anna", "bob", None]
    assert [j["params"]["prompt"] for j in jobs] == [PROMPT, "A narrator", "A guest"]
    assert [j["params"]["size"] for j in jobs] == ["480*832", "64*64", "384*256"]
    anna = api_client.get("/v1/presenters/anna").json()
    assert jobs[0]["inputs"]["image"].startswith(f"uploads/{anna['image']}.")
    # the same as a single job naming the presenter
    single = submit(api_client, audio=media.wav(2.0), presenter="anna", seed="3").json()
    assert single["params"] == jobs[0]["params"]


@pytest.mark.parametrize(
    "job,status,code,field",
    [
        ({"presenter": "nobody"}, 422, "presenter_not_found", "jobs[1].presenter"),
        ({"presenter": "anna", "prompt": "p"}, 422, "presenter_conflict", "jobs[1].prompt"),
        ({"presenter": "anna", "size": "64*64"}, 422, "presenter_conflict", "jobs[1].size"),
        ({"image": "upl_" + "0" * 24}, 422, "invalid_parameter", "jobs[1].prompt"),
    ],
)
def test_bad_presenter_jobs_refuse_the_whole_batch(
    api_client, api_services, job, status, code, field
):
    create(api_client)
    audio = api_client.post(
        "/v1/uploads", data={"kind": "audio"}, files={"file": ("f", media.wav(1.0))}
    ).json()["id"]
    body = {"defaults": {"audio": audio}, "jobs": [{"presenter": "anna"}, job]}
    r = api_client.post("/v1/batches", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["code"], error["field"]) == (code, field), error
    if code == "presenter_not_found":
        assert "'nobody'" in error["message"]
    assert rows(api_services, "jobs") == 0 and rows(api_services, "batches") == 0


@pytest.mark.slow
def test_a_presenter_job_renders_after_its_presenter_is_deleted_as_the_files_job_does(
    api_client, api_services, tmp_path
):
    """Both jobs render with the tiny model: the same frames, and the presenter's deletion
    between submit and render changes nothing."""
    from tests.worker.lifecycle_helpers import config, output_hashes
    from worker.lifecycle import Lifecycle, Outcome

    image, audio = media.png(128, 128), media.wav(0.9)
    params = {"seed": "5", "infer_frames": "12", "num_clips": "2"}
    create(api_client, image=image, size="64*64")
    by_presenter = submit(api_client, audio=audio, presenter="anna", **params).json()
    assert api_client.delete("/v1/presenters/anna").status_code == 204
    by_files = api_client.post(
        "/v1/jobs",
        files={"image": ("p.png", image, "image/png"), "audio": ("s.wav", audio, "audio/wav")},
        data={"prompt": PROMPT, "size": "64*64", **params},
    ).json()

    database, storage = api_services.database, api_services.storage
    worker = Lifecycle(config(tmp_path), database, storage)
    for job in (by_presenter, by_files):
        assert worker.run(uuid.UUID(job["id"])) is Outcome.SUCCEEDED
        assert api_client.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"
    frames = [
        output_hashes(storage, uuid.UUID(j["id"]), tmp_path) for j in (by_presenter, by_files)
    ]
    assert len(frames[0]) > 0 and frames[0] == frames[1]


def test_concurrent_creations_of_one_name_make_one_presenter(live_api, api_key, api_services):
    """Each request passes the name check before any has written: the unique (tenant, name)
    decides, and the losers' stored portraits are removed."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    import httpx

    barrier = Barrier(6)

    def send(n: int):
        with httpx.Client(base_url=live_api.url, timeout=60) as client:
            image = media.png(128 + 64 * n, 192)  # different bytes: each its own upload
            barrier.wait()
            return client.post(
                "/v1/presenters",
                files={"image": ("p.png", image, "image/png")},
                data={"name": "anna", "prompt": f"take {n}"},
                headers={"Authorization": f"Bearer {api_key}"},
            )

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(send, range(6)))
    assert sorted(r.status_code for r in answers) == [201] + [409] * 5
    (winner,) = [r.json() for r in answers if r.status_code == 201]
    assert (rows(api_services, "presenters"), rows(api_services, "uploads")) == (1, 1)
    (key,) = api_services.storage.list()
    assert key.startswith(f"uploads/{winner['image']}.")
