"""A job may carry a script instead of audio: the API speaks it at submit with a speech
engine and stores the speech as the job's audio input, exactly like an uploaded file. A bad
script is refused with a 4xx that says what to fix, and leaves nothing behind."""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from pipeline.params import frames_for_duration
from speech import EspeakEngine, SpeechEngines, SpeechError
from tests import media
from tests.api.test_bad_inputs import NOTHING, leftovers
from tests.speech import tone_engine

SCRIPT = "Hello, and welcome to the course. Today we look at long videos."
IMAGE = ("portrait.png", media.png())


def script_fields(**overrides: str) -> dict[str, str]:
    return {"prompt": "A presenter", "script": SCRIPT, "language": "en-us", "voice": "f3",
            **overrides}  # fmt: skip


def wav_samples(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), "<i2"), w.getframerate()


def test_a_script_is_spoken_and_stored_as_the_jobs_audio_input(api_client, api_services):
    r = api_client.post("/v1/jobs", files={"image": IMAGE}, data=script_fields())
    assert r.status_code == 201, r.text
    job = r.json()
    params = job["params"]
    assert params["script"] == {
        "text": SCRIPT, "language": "en-us", "voice": "f3", "engine": "espeak-ng",
    }  # fmt: skip
    # the stored input is the engine's speech of the text, as a WAV file like an upload
    audio_key = job["inputs"]["audio"]
    assert audio_key == f"jobs/{job['id']}/inputs/audio.wav"
    assert sorted(api_services.storage.list()) == sorted([audio_key, job["inputs"]["image"]])
    samples, rate = wav_samples(api_services.storage.get_bytes(audio_key))
    spoken = EspeakEngine().synthesise(SCRIPT, "en-us", "f3")
    assert rate == spoken.sample_rate and np.array_equal(samples, spoken.samples)
    # ... described and planned as any audio: the video ends with the speech
    assert params["audio"] == {"codec": "pcm_s16le", "sample_rate": 22050, "channels": 1}
    assert params["audio_duration_s"] == pytest.approx(spoken.duration_s, abs=1e-3)
    assert job["progress"]["frames_total"] == frames_for_duration(spoken.duration_s)
    # and the job view shows the script
    assert api_client.get(f"/v1/jobs/{job['id']}").json()["params"]["script"]["text"] == SCRIPT


def test_a_script_by_json_with_the_portrait_by_upload_id_and_the_default_voice(api_client):
    upload = api_client.post("/v1/uploads", files={"file": IMAGE}, data={"kind": "image"}).json()
    body = {"prompt": "A presenter", "image": upload["id"], "script": "  Guten Tag.\n",
            "language": "de"}  # fmt: skip
    r = api_client.post("/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["params"]["script"] == {
        "text": "Guten Tag.", "language": "de", "voice": "default", "engine": "espeak-ng",
    }  # fmt: skip


def test_a_scripts_cr_lf_line_breaks_are_kept_as_line_feeds(api_client):
    """Browsers send a textarea's line breaks in a multipart form as CR LF; the script is kept
    as it was written, and counted so against the limit."""
    r = api_client.post("/v1/jobs", files={"image": IMAGE},
                        data=script_fields(script="Welcome back.\r\nToday: fractions.\r\n"))  # fmt: skip
    assert r.status_code == 201, r.text
    assert r.json()["params"]["script"]["text"] == "Welcome back.\nToday: fractions."


def test_the_same_script_with_the_same_idempotency_key_returns_the_first_job(api_client):
    headers = {"Idempotency-Key": "lesson-1"}
    first = api_client.post("/v1/jobs", files={"image": IMAGE}, data=script_fields(),
                            headers=headers)  # fmt: skip
    again = api_client.post("/v1/jobs", files={"image": IMAGE}, data=script_fields(),
                            headers=headers)  # fmt: skip
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    other = api_client.post("/v1/jobs", files={"image": IMAGE},
                            data=script_fields(voice="m3"), headers=headers)  # fmt: skip
    assert other.status_code == 409


def test_the_voice_list_names_every_engine_language_and_voice(api_client, api_services):
    r = api_client.get("/v1/voices")
    assert r.status_code == 200
    (engine,) = r.json()["engines"]
    assert engine["name"] == "espeak-ng" and engine["default"] is True
    assert engine["default_voice"] == "default"
    assert {"en-us", "de", "fr-fr"} <= set(engine["languages"])
    voices = {v["id"]: v for v in engine["voices"]}
    assert voices["f3"] == {"id": "f3", "name": "female3", "gender": "female", "languages": []}
    assert api_client.get("/v1/voices", headers={"Authorization": ""}).status_code == 401
    # the published schema offers the same choices
    schema = api_client.get("/openapi.json").json()["components"]["schemas"]["JobRequest"]
    language = schema["properties"]["language"]["anyOf"][0]["enum"]
    assert language == sorted(engine["languages"])
    assert schema["properties"]["script"]["maxLength"] == 20_000


def test_an_engine_the_operator_registers_speaks_the_scripts_that_name_it(
    api_client, api_services, tmp_path
):
    voices = tone_engine.write_voices(tmp_path, low=110.0)
    api_services.speech = SpeechEngines([EspeakEngine(), tone_engine.make(voices)])
    listed = [e["name"] for e in api_client.get("/v1/voices").json()["engines"]]
    assert listed == ["espeak-ng", "tones"]
    fields = {"prompt": "p", "script": "one two three four five six seven eight",
              "language": "xx-tone", "speech_engine": "tones"}  # fmt: skip
    r = api_client.post("/v1/jobs", files={"image": IMAGE}, data=fields)
    assert r.status_code == 201, r.text
    params = r.json()["params"]
    assert params["script"]["voice"] == "low" and params["audio_duration_s"] == 2.0
    assert params["audio"]["sample_rate"] == tone_engine.RATE


class BrokenEngine:
    name = "espeak-ng"
    default_voice = "default"

    def languages(self) -> list[str]:
        return ["en-us"]

    def voices(self) -> list:
        return EspeakEngine().voices()

    def synthesise(self, text: str, language: str, voice: str):
        raise SpeechError("the engine crashed")


def test_an_engine_that_fails_is_a_503_and_leaves_nothing(api_client, api_services):
    api_services.speech = SpeechEngines([BrokenEngine()])
    r = api_client.post("/v1/jobs", files={"image": IMAGE}, data=script_fields())
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "speech_unavailable"
    assert "send audio instead" in r.json()["error"]["message"]
    assert "crashed" not in r.text  # the cause is for the operator's log
    assert leftovers(api_services) == NOTHING


# --------------------------------------------------------------------------- bad scripts


@dataclass
class Bad:
    name: str
    code: str
    message: str  # a fragment of the message
    fields: dict[str, str] = field(default_factory=script_fields)
    audio: bool = False
    json: dict[str, Any] | None = None
    status: int = 422


BAD = [
    Bad("empty", "invalid_parameter", "the script is empty", script_fields(script="")),
    Bad("whitespace-only", "invalid_parameter", "the script is empty",
        script_fields(script=" \n\t\r\n ")),
    Bad("too-long", "invalid_parameter", "has 20001 characters; at most 20000 are allowed",
        script_fields(script="a" * 20_001)),
    Bad("bell-character", "invalid_parameter", "control character U+0007 (line 2",
        script_fields(script="Hello.\nThere\x07 you are.")),
    Bad("nul-character", "invalid_parameter", "NUL character", script_fields(script="Hello\x00")),
    Bad("json-nul-character", "invalid_parameter", "NUL character",
        json={"prompt": "p", "image": "upl_000000000000000000000000", "script": "Hi\x00"}),
    Bad("escape-sequence", "invalid_parameter", "U+001B", script_fields(script="\x1b[31mred")),
    Bad("c1-control", "invalid_parameter", "U+0085", script_fields(script="one\x85two")),
    Bad("unknown-language", "unknown_language", "does not speak 'klingon'; use one of: af, am",
        script_fields(language="klingon")),
    Bad("no-language", "missing_language", "language is required with a script",
        {"prompt": "p", "script": SCRIPT}),
    Bad("unknown-voice", "unknown_voice", "no voice 'darth' for en-us; use one of: default",
        script_fields(voice="darth")),
    Bad("unknown-engine", "unknown_speech_engine", "use one of: espeak-ng",
        script_fields(speech_engine="festival")),
    Bad("script-and-audio", "script_and_audio", "either audio or a script, not both",
        audio=True),
    Bad("neither-audio-nor-script", "missing_input", "or send a script",
        {"prompt": "A presenter"}),
    Bad("voice-without-script", "invalid_parameter", "voice: belongs to a script",
        {"prompt": "p", "voice": "f3"}, audio=True),
    Bad("no-words", "invalid_parameter", "less than one video frame; write words",
        script_fields(script=".")),
    Bad("speech-longer-than-allowed", "audio_too_long",
        "script: the speech spoken from it is refused: the audio lasts",
        script_fields(script="Speak for a long time. " * 60)),
    Bad("json-script-and-audio-reference", "script_and_audio", "not both",
        json={"prompt": "p", "image": "upl_000000000000000000000000",
              "audio": "upl_000000000000000000000001", "script": SCRIPT, "language": "en-us"}),
    Bad("json-script-not-a-string", "invalid_parameter", "script",
        json={"prompt": "p", "image": "upl_000000000000000000000000", "script": 7}),
]  # fmt: skip


@pytest.mark.parametrize("bad", BAD, ids=[b.name for b in BAD])
def test_a_bad_script_is_refused_with_what_to_fix_and_leaves_nothing(api_client, api_services, bad):
    if bad.json is not None:
        r = api_client.post("/v1/jobs", json=bad.json)
    else:
        files = {"image": IMAGE} | ({"audio": ("a.wav", media.wav(1.0))} if bad.audio else {})
        r = api_client.post("/v1/jobs", files=files, data=bad.fields)
    assert r.status_code == bad.status, r.text
    error = r.json()["error"]
    assert error["code"] == bad.code
    assert bad.message in error["message"], error["message"]
    assert leftovers(api_services) == NOTHING


# --------------------------------------------------------------------------- batches


def test_a_batch_mixes_scripts_and_audio_and_speaks_each_distinct_script_once(
    api_client, api_services
):
    face = api_client.post("/v1/uploads", files={"file": IMAGE}, data={"kind": "image"}).json()
    talk = api_client.post(
        "/v1/uploads", files={"file": ("t.wav", media.wav(2.0))}, data={"kind": "audio"}
    ).json()
    body = {
        "inputs": {"face": face["id"]},
        "defaults": {"image": "face", "language": "en-us", "size": "384*256"},
        "jobs": [
            {"prompt": "lesson 1", "script": "Lesson one. Shapes."},
            {"prompt": "lesson 2", "script": "Lesson two. Colours.", "voice": "m3"},
            {"prompt": "lesson 1 again", "script": "Lesson one. Shapes.", "seed": 2},
            {"prompt": "recorded", "audio": talk["id"]},  # the default language is not its
        ],
    }
    r = api_client.post("/v1/batches", json=body)
    assert r.status_code == 201, r.text
    jobs = [api_client.get(f"/v1/jobs/{i}").json() for i in r.json()["job_ids"]]
    scripts = [j["params"]["script"] for j in jobs]
    assert [s and (s["text"], s["voice"]) for s in scripts] == [
        ("Lesson one. Shapes.", "default"), ("Lesson two. Colours.", "m3"),
        ("Lesson one. Shapes.", "default"), None,
    ]  # fmt: skip
    # the same script is spoken and stored once, as an upload, like a shared audio file
    keys = [j["inputs"]["audio"] for j in jobs]
    assert keys[0] == keys[2] != keys[1] and keys[3] == f"uploads/{talk['id']}.wav"
    for job, text, voice in ((jobs[0], "Lesson one. Shapes.", "default"),
                             (jobs[1], "Lesson two. Colours.", "m3")):  # fmt: skip
        samples, _ = wav_samples(api_services.storage.get_bytes(job["inputs"]["audio"]))
        assert np.array_equal(samples, EspeakEngine().synthesise(text, "en-us", voice).samples)
    assert len(api_services.storage.list()) == 4  # face, talk and two spoken scripts


def test_a_jobs_own_audio_or_script_sets_aside_the_defaults_other_one(api_client):
    face = api_client.post("/v1/uploads", files={"file": IMAGE}, data={"kind": "image"}).json()
    talk = api_client.post(
        "/v1/uploads", files={"file": ("t.wav", media.wav(2.0))}, data={"kind": "audio"}
    ).json()
    body = {
        "inputs": {"face": face["id"], "talk": talk["id"]},
        "defaults": {"image": "face", "prompt": "p", "audio": "talk", "language": "en-us",
                     "voice": "f3", "size": "384*256"},
        "jobs": [{"script": "Spoken, in the default voice."}, {}, {"script": "Hi", "voice": "m1"}],
    }  # fmt: skip
    r = api_client.post("/v1/batches", json=body)
    assert r.status_code == 201, r.text
    jobs = [api_client.get(f"/v1/jobs/{i}").json() for i in r.json()["job_ids"]]
    assert [j["params"]["script"] and j["params"]["script"]["voice"] for j in jobs] == [
        "f3", None, "m1",
    ]  # fmt: skip
    assert jobs[1]["inputs"]["audio"] == f"uploads/{talk['id']}.wav"


@pytest.mark.parametrize(
    ("job", "code", "message"),
    [
        ({"script": "", "language": "en-us"}, "invalid_parameter", "jobs[1].script: the script is empty"),
        ({"script": "Hi\x07", "language": "en-us"}, "invalid_parameter", "U+0007"),
        ({"script": ".", "language": "en-us"}, "invalid_parameter", "jobs[1].script: it speaks as"),
        ({"script": "Hi", "language": "xx"}, "unknown_language", "jobs[1].language: espeak-ng does not speak 'xx'"),
        ({"script": "Hi", "language": "en-us", "voice": "zz"}, "unknown_voice", "jobs[1].voice"),
        ({"script": "Hi", "language": "en-us", "audio": "talk"}, "script_and_audio", "jobs[1]: send either"),
        ({}, "missing_input", "jobs[1].audio is required: an input name, s3:// URI or upload id, or a script"),
        ({"script": "Speak for a long time. " * 60, "language": "en-us"}, "audio_too_long", "jobs[1].script: the speech"),
    ],
)  # fmt: skip
def test_a_batch_with_a_bad_script_is_refused_whole_and_leaves_nothing(
    api_client, api_services, job, code, message
):
    face = api_client.post("/v1/uploads", files={"file": IMAGE}, data={"kind": "image"}).json()
    talk = api_client.post(
        "/v1/uploads", files={"file": ("t.wav", media.wav(2.0))}, data={"kind": "audio"}
    ).json()
    before = leftovers(api_services)
    body = {
        "inputs": {"face": face["id"], "talk": talk["id"]},
        "defaults": {"image": "face", "prompt": "p"},
        "jobs": [{"script": "A good one.", "language": "en-us"}, job],
    }
    r = api_client.post("/v1/batches", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code
    assert message in r.json()["error"]["message"], r.json()["error"]["message"]
    assert leftovers(api_services) == before  # the good job's speech was not stored either
