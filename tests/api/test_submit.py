"""POST /v1/jobs: the accepted forms of a submission and what they store."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest

from db import job_store, outbox
from db.params import presenter_key
from tests import media
from tests.conftest import INPUT_BUCKET, count_rows


def submit(client, image=None, audio=None, **fields):
    files = {
        "image": ("portrait.png", image or media.png(), "image/png"),
        "audio": ("speech.wav", audio or media.wav(2.0), "audio/wav"),
    }
    return client.post("/v1/jobs", files=files, data=fields)


def test_multipart_submission_stores_inputs_and_queues_the_job(api_client, api_services):
    image, audio = media.png(), media.wav(3.0)
    r = submit(api_client, image, audio, prompt="A teacher explains fractions", size="720*400",
               seed="7", priority="3")  # fmt: skip
    assert r.status_code == 201, r.text
    body = r.json()
    job_id = uuid.UUID(body["id"])
    assert r.headers["location"] == f"/v1/jobs/{job_id}"
    assert body["status"] == "queued"
    assert body["priority"] == 3
    assert body["params"]["prompt"] == "A teacher explains fractions"
    assert body["params"]["seed"] == 7
    assert (body["params"]["width"], body["params"]["height"]) == (384, 576)  # 2:3 portrait
    assert body["params"]["checkpoint_every"] == api_services.config.checkpoint_every
    assert body["params"]["audio_duration_s"] == pytest.approx(3.0)
    # 3 s at 25 fps = 75 frames: 2 clips of 48, the video ends with the speech
    assert body["progress"] == {
        "clips_done": 0, "clips_total": 2, "frames_done": 0, "frames_total": 75,
        "fps": None, "eta_s": None, "last_checkpoint_clip": None,
    }  # fmt: skip
    assert body["links"]["result"] == f"/v1/jobs/{job_id}/result"

    storage = api_services.storage
    assert body["inputs"] == {
        "image": f"jobs/{job_id}/inputs/image.png",
        "audio": f"jobs/{job_id}/inputs/audio.wav",
    }
    assert storage.get_bytes(body["inputs"]["image"]) == image
    assert storage.get_bytes(body["inputs"]["audio"]) == audio
    assert storage.list() == sorted(body["inputs"].values())

    db = api_services.database
    assert count_rows(db) == {"jobs": 1, "outbox": 1, "job_events": 1, "job_segments": 0}
    with db.transaction() as s:
        (message,) = outbox.lock_unsent(s)
        assert (message.job_id, message.reason) == (job_id, "created")
        assert job_store.get_job(s, job_id).tenant == "default"


def test_parameters_as_one_json_field(api_client):
    params = {"prompt": "p", "num_clips": 1, "sample_steps": 2, "infer_frames": 24}
    r = submit(api_client, params=json.dumps(params))
    assert r.status_code == 201, r.text
    got = r.json()["params"]
    assert (got["num_clips"], got["sample_steps"], got["infer_frames"]) == (1, 2, 24)
    assert r.json()["progress"]["clips_total"] == 1
    assert isinstance(got["seed"], int)  # chosen and stored, so a resume renders the same


@pytest.mark.parametrize("value", ["", "audio", "to_end_of_audio"])
def test_num_clips_to_end_of_audio(api_client, value):
    r = submit(api_client, audio=media.wav(5.0), prompt="p", num_clips=value)
    assert r.status_code == 201, r.text
    assert r.json()["params"]["num_clips"] is None
    assert r.json()["progress"]["clips_total"] == 3  # 125 frames / 48


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")])
def test_image_formats(api_client, fmt, ext):
    r = submit(api_client, image=media.image_bytes(fmt), prompt="p")
    assert r.status_code == 201, r.text
    assert r.json()["inputs"]["image"].endswith(f"/inputs/image.{ext}")


@pytest.mark.parametrize("fmt", ["mp3", "m4a", "flac"])
def test_audio_formats(api_client, fmt):
    r = submit(api_client, audio=media.encoded_audio(fmt, 2.0), prompt="p")
    assert r.status_code == 201, r.text
    assert r.json()["inputs"]["audio"].endswith(f"/inputs/audio.{fmt}")
    # the duration of the samples decoded, as the worker decodes them: an AAC track decodes
    # with its encoder's priming and last-frame padding (up to 2 x 1024 samples)
    assert r.json()["params"]["audio_duration_s"] == pytest.approx(2.0, abs=0.13)


def test_json_submission_with_s3_references(api_client, api_services, s3_client):
    prefix = f"refs-{uuid.uuid4().hex}"
    image, audio = media.png(), media.encoded_audio("flac", 1.5)
    s3_client.put_object(Bucket=INPUT_BUCKET, Key=f"{prefix}/face.png", Body=image)
    s3_client.put_object(Bucket=INPUT_BUCKET, Key=f"{prefix}/voice.flac", Body=audio)
    r = api_client.post(
        "/v1/jobs",
        json={
            "prompt": "A narrator",
            "image": f"s3://{INPUT_BUCKET}/{prefix}/face.png",
            "audio": f"s3://{INPUT_BUCKET}/{prefix}/voice.flac",
            "num_clips": None,
            "size": "480*832",
        },
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert api_services.storage.get_bytes(body["inputs"]["image"]) == image
    assert api_services.storage.get_bytes(body["inputs"]["audio"]) == audio
    assert body["params"]["size"] == "480*832"


def test_idempotency_key_returns_the_first_job(api_client, api_services):
    headers = {"Idempotency-Key": "batch-7-video-3"}
    files = {"image": ("a.png", media.png()), "audio": ("a.wav", media.wav(1.0))}
    first = api_client.post("/v1/jobs", files=files, data={"prompt": "p"}, headers=headers)
    second = api_client.post("/v1/jobs", files=files, data={"prompt": "p"}, headers=headers)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert count_rows(api_services.database)["jobs"] == 1
    assert len(api_services.storage.list()) == 2


def test_wake_up_hook_runs_after_commit(api_services, api_client):
    seen = []

    def hook():
        seen.append(count_rows(api_services.database)["outbox"])

    api_services.on_job_queued = hook
    assert submit(api_client, prompt="p").status_code == 201
    assert seen == [1]  # the outbox row was visible when the hook ran


def test_a_job_chooses_its_precision_and_the_operator_sets_the_default(api_client, api_services):
    r = submit(api_client, prompt="p", precision="fp8")
    assert r.status_code == 201, r.text
    assert r.json()["precision"] == "fp8"
    with api_services.database.transaction() as s:
        assert job_store.get_job(s, uuid.UUID(r.json()["id"])).precision == "fp8"

    r = submit(api_client, prompt="p", precision="fp8-attention")
    assert r.status_code == 201 and r.json()["precision"] == "fp8-attention", r.text

    r = submit(api_client, prompt="p")
    assert r.status_code == 201 and r.json()["precision"] == "bf16"  # the operator's default

    r = submit(api_client, prompt="p", precision="fp16")
    assert r.status_code == 422
    assert "unknown precision 'fp16'" in r.text and "bf16, fp8, fp8-attention" in r.text


def test_a_job_names_its_presenter_however_its_portrait_arrives(api_client, api_services):
    """The presenter key: the tenant, the portrait's digest, prompt, size and precision (the
    worker's presenter cache keys the job's stream by the same function)."""
    image = media.png()
    by_file = submit(api_client, image, prompt="a teacher", size="720*400")
    up = api_client.post("/v1/uploads", files={"file": ("a.png", image)}, data={"kind": "image"})
    assert up.status_code in (200, 201), up.text
    audio = api_client.post(
        "/v1/uploads", files={"file": ("a.wav", media.wav(2.0))}, data={"kind": "audio"}
    ).json()["id"]
    by_upload = api_client.post(
        "/v1/jobs",
        json={"image": up.json()["id"], "audio": audio, "prompt": "a teacher", "size": "720*400"},
    )
    batch = api_client.post(
        "/v1/batches",
        json={"jobs": [{"image": up.json()["id"], "audio": audio, "prompt": p, "size": "720*400"}
                       for p in ("a teacher", "another style")]},
    )  # fmt: skip
    fp8 = submit(api_client, image, prompt="a teacher", size="720*400", precision="fp8")
    ids = [r.json()["id"] for r in (by_file, by_upload, fp8)] + batch.json()["job_ids"]
    with api_services.database.transaction() as s:
        jobs = [job_store.get_job(s, uuid.UUID(i)) for i in ids]
    digest = hashlib.sha256(image).hexdigest()
    want = presenter_key("default", digest, jobs[0].job_params, "bf16")
    assert [j.presenter_key for j in jobs] == [
        want,
        want,
        presenter_key("default", digest, jobs[0].job_params, "fp8"),
        want,
        presenter_key("default", digest, jobs[4].job_params, "bf16"),
    ]
    assert len({want, jobs[2].presenter_key, jobs[4].presenter_key}) == 3
