"""Every kind of bad submission gets a 4xx whose message says what to fix, and leaves nothing
behind: no job, outbox row or event, no upload, no webhook or delivery, no stored object."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from PIL import Image

from api.config import MiB
from tests import media
from tests.api import crafted
from tests.conftest import INPUT_BUCKET

ROWS = ("jobs", "outbox", "job_events", "job_segments", "uploads", "presenters", "webhooks",
        "webhook_deliveries", "batches")  # fmt: skip
NOTHING = {"rows": dict.fromkeys(ROWS, 0), "objects": []}


def leftovers(services) -> dict[str, Any]:
    """Every row a request may write, and every stored object."""
    import sqlalchemy as sa

    with services.database.transaction() as s:
        rows = {t: s.scalar(sa.text(f"SELECT count(*) FROM {t}")) for t in ROWS}
    return {"rows": rows, "objects": services.storage.list()}


def big_png(width: int, height: int) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("L", (width, height), 0).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Case:
    name: str
    status: int
    code: str
    message: str  # a fragment of the human message
    fields: dict[str, Any] = field(default_factory=lambda: {"prompt": "A presenter"})
    image: tuple[str, bytes] | None = None
    audio: tuple[str, bytes] | None = None
    json: dict[str, Any] | None = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    omit: tuple[str, ...] = ()


GOOD_IMAGE = ("portrait.png", media.png())
GOOD_AUDIO = ("speech.wav", media.wav(2.0))
M4A = media.encoded_audio("m4a", 2.0)
REF = f"s3://{INPUT_BUCKET}/never-uploaded"

CASES = [
    # images
    Case("image-not-an-image", 422, "invalid_image", "could not be read as an image",
         image=("a.png", b"this is a text file, not a picture")),
    Case("image-gif", 422, "unsupported_image_format", "send a PNG, JPEG or WebP",
         image=("a.gif", media.image_bytes("GIF"))),
    Case("image-truncated", 422, "invalid_image", "truncated or corrupt",
         image=("a.png", media.png()[: len(media.png()) // 2])),
    Case("image-empty", 422, "invalid_image", "empty", image=("a.png", b"")),
    Case("image-too-small", 422, "invalid_image", "at least 64 pixels",
         image=("a.png", media.image_bytes("PNG", 32, 32))),
    Case("image-over-byte-limit", 413, "image_too_large", "limit",
         image=("a.png", b"\x89PNG" + b"0" * (2 * MiB))),
    Case("image-over-pixel-limit", 413, "image_too_large", "resize it",
         image=("a.png", big_png(2500, 2000))),
    Case("image-header-claims-10-gigapixels", 413, "image_too_large", "100000x100000 pixels",
         image=("a.png", crafted.png_claiming(100_000, 100_000))),
    Case("image-filename-traversal", 422, "invalid_filename", "without directories",
         image=("../../etc/passwd.png", media.png())),
    Case("image-missing", 422, "missing_input", "image is required", omit=("image",)),
    # audio
    Case("audio-not-audio", 422, "unsupported_audio_format", "WAV, MP3, M4A (AAC) or FLAC",
         audio=("a.wav", media.png())),
    Case("audio-empty-file", 422, "invalid_audio", "empty", audio=("a.wav", b"")),
    Case("audio-zero-length-wav", 422, "invalid_audio", "zero duration",
         audio=("a.wav", media.wav(0))),
    Case("audio-zero-channels", 422, "invalid_audio", "no channels",
         audio=("a.wav", crafted.wav_zero_channels())),
    Case("audio-corrupt-flac", 422, "invalid_audio", "could not be decoded",
         audio=("a.flac", crafted.flac_corrupt())),
    Case("audio-1-hz", 422, "invalid_audio", "8000 to 192000 Hz",
         audio=("a.wav", crafted.wav_at_rate(1, seconds=8))),
    Case("audio-400-khz", 422, "invalid_audio", "8000 to 192000 Hz",
         audio=("a.wav", crafted.wav_at_rate(400_000, seconds=0.5))),
    Case("audio-nan-sample", 422, "invalid_audio", "NaN",
         audio=("a.wav", crafted.wav_with_nan())),
    Case("audio-inf-sample", 422, "invalid_audio", "NaN",
         audio=("a.wav", crafted.wav_with_inf())),
    Case("audio-32-channels", 422, "invalid_audio", "at most 8",
         audio=("a.wav", crafted.wav_channels(32))),
    Case("audio-truncated-to-less-than-a-frame", 422, "invalid_audio",
         "less than one video frame", audio=("a.wav", crafted.wav_truncated(50))),
    Case("audio-truncated-header", 422, "unsupported_audio_format", "could not be read",
         audio=("a.wav", media.wav(1.0)[:20])),
    Case("audio-truncated-m4a", 422, "unsupported_audio_format", "could not be read",
         audio=("a.m4a", M4A[: len(M4A) // 2])),
    Case("audio-too-long", 422, "audio_too_long", "split it into several jobs",
         audio=("a.wav", media.wav_bytes_silence(61))),
    Case("audio-over-byte-limit", 413, "audio_too_large", "limit",
         audio=("a.wav", b"RIFF" + b"0" * (4 * MiB))),
    Case("audio-filename-traversal", 422, "invalid_filename", "without directories",
         audio=("..\\..\\speech.wav", media.wav(1.0))),
    Case("audio-missing", 422, "missing_input", "audio is required", omit=("audio",)),
    # parameters
    Case("unknown-size-key", 422, "invalid_parameter", "unknown size key '999*999'",
         fields={"prompt": "p", "size": "999*999"}),
    Case("num-clips-zero", 422, "invalid_parameter", "num_clips must be between 1",
         fields={"prompt": "p", "num_clips": "0"}),
    Case("num-clips-huge", 422, "invalid_parameter", "num_clips must be between 1",
         fields={"prompt": "p", "num_clips": "100001"}),
    Case("num-clips-beyond-audio", 422, "num_clips_exceeds_audio", "omit it to render",
         fields={"prompt": "p", "num_clips": "5"}),
    Case("num-clips-not-a-number", 422, "invalid_parameter", "num_clips",
         fields={"prompt": "p", "num_clips": "many"}),
    Case("sample-steps-zero", 422, "invalid_parameter", "sample_steps must be between 1 and 8",
         fields={"prompt": "p", "sample_steps": "0"}),
    Case("sample-steps-too-many", 422, "invalid_parameter", "sample_steps must be between 1 and 8",
         fields={"prompt": "p", "sample_steps": "50"}),
    Case("infer-frames-not-a-block-multiple", 422, "invalid_parameter", "multiple of 12",
         fields={"prompt": "p", "infer_frames": "50"}),
    Case("prompt-huge", 422, "invalid_parameter", "at most 2000 are allowed",
         fields={"prompt": "x" * 2001}),
    Case("prompt-empty", 422, "invalid_parameter", "the prompt is empty", fields={"prompt": "  "}),
    Case("prompt-missing", 422, "invalid_parameter", "prompt", fields={}),
    Case("seed-negative", 422, "invalid_parameter", "seed must be between", fields={"prompt": "p", "seed": "-1"}),
    Case("priority-out-of-range", 422, "invalid_parameter", "priority",
         fields={"prompt": "p", "priority": "1000"}),
    Case("checkpoint-every-zero", 422, "invalid_parameter", "checkpoint_every",
         fields={"prompt": "p", "checkpoint_every": "0"}),
    Case("unknown-field", 422, "invalid_parameter", "unknown field",
         fields={"prompt": "p", "promt": "typo"}),
    Case("params-field-not-json", 400, "malformed_json", "params field is not valid JSON",
         fields={"params": "{prompt: p"}),
    Case("prompt-huge-in-multipart", 422, "invalid_parameter", "at most 2000 characters",
         fields={"prompt": "x" * 1_000_000}),
    Case("prompt-not-utf8", 422, "invalid_parameter", "UTF-8",
         content=crafted.multipart([("prompt", "café".encode("latin-1"))],
            [("image", "a.png", media.png()), ("audio", "a.wav", media.wav(1.0))])[0],
         headers=crafted.multipart([], [])[1]),
    Case("field-twice", 422, "duplicate_field", "size is given more than once",
         content=crafted.multipart([("prompt", b"p"), ("size", b"720*400"), ("size", b"64*64")],
            [("image", "a.png", media.png()), ("audio", "a.wav", media.wav(1.0))])[0],
         headers=crafted.multipart([], [])[1]),
    Case("field-in-params-and-on-its-own", 422, "duplicate_field",
         "size is given more than once",
         fields={"params": '{"prompt": "p", "size": "720*400"}', "size": "64*64"}),
    Case("file-twice", 422, "duplicate_field", "image is given more than once",
         content=crafted.multipart([("prompt", b"p")],
            [("image", "a.png", media.png()), ("image", "b.png", media.png()),
             ("audio", "a.wav", media.wav(1.0))])[0],
         headers=crafted.multipart([], [])[1]),
    Case("json-key-twice", 400, "malformed_json", "'prompt' more than once",
         content=b'{"prompt": "p", "prompt": "q", "image": "upl_0", "audio": "upl_1"}',
         headers={"content-type": "application/json"}),
    Case("watermark-wider-than-the-frame", 422, "watermark_does_not_fit", "does not fit",
         fields={"prompt": "p", "size": "64*64", "watermark": '{"text": "%s"}' % ("W" * 40)}),
    Case("webhook-to-loopback", 422, "invalid_parameter", "not a public address",
         fields={"prompt": "p", "webhook_url": "http://127.0.0.1:8000/hook"}),
    Case("webhook-and-clips-beyond-audio", 422, "num_clips_exceeds_audio", "omit it",
         fields={"prompt": "p", "num_clips": "5", "webhook_url": "http://8.8.8.8/hook"}),
    # request shape
    Case("wrong-content-type", 415, "unsupported_media_type", "multipart/form-data",
         content=b"prompt=p", headers={"content-type": "text/plain"}),
    Case("json-not-json", 400, "malformed_json", "not valid JSON",
         content=b"{not json", headers={"content-type": "application/json"}),
    Case("json-not-an-object", 400, "malformed_json", "JSON object", json=[1, 2]),  # type: ignore[arg-type]
    Case("bad-idempotency-key", 400, "invalid_idempotency_key", "1 to 255 characters",
         headers={"Idempotency-Key": "k" * 300}),
    # s3:// references
    Case("s3-bucket-not-allowed", 422, "bucket_not_allowed", f"use one of: {INPUT_BUCKET}",
         json={"prompt": "p", "image": "s3://someone-elses-bucket/face.png", "audio": REF}),
    Case("s3-object-missing", 422, "input_not_found", "does not exist",
         json={"prompt": "p", "image": REF, "audio": REF}),
    Case("s3-not-an-s3-uri", 422, "invalid_reference", "neither an s3:// URI nor an upload id",
         json={"prompt": "p", "image": "https://example.com/a.png", "audio": REF}),
    Case("s3-key-traversal", 422, "invalid_reference", "'..'",
         json={"prompt": "p", "image": f"s3://{INPUT_BUCKET}/a/../../b.png", "audio": REF}),
    Case("s3-no-key", 422, "invalid_reference", "s3://bucket/path/to/object",
         json={"prompt": "p", "image": f"s3://{INPUT_BUCKET}", "audio": REF}),
]  # fmt: skip


def send(client, case: Case):
    if case.content is not None:
        return client.post("/v1/jobs", content=case.content, headers=case.headers)
    if case.json is not None:
        return client.post("/v1/jobs", json=case.json, headers=case.headers)
    files = {"image": case.image or GOOD_IMAGE, "audio": case.audio or GOOD_AUDIO}
    for name in case.omit:
        files.pop(name)
    return client.post("/v1/jobs", files=files, data=case.fields, headers=case.headers)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_submission_is_rejected_and_leaves_nothing(api_client, api_services, case):
    r = send(api_client, case)
    assert r.status_code == case.status, r.text
    error = r.json()["error"]
    assert error["code"] == case.code
    assert case.message in error["message"], error["message"]
    assert leftovers(api_services) == NOTHING


def test_references_disabled_without_allowed_buckets(api_client, api_services):
    from dataclasses import replace

    api_services.config = replace(api_services.config, allowed_input_buckets=())
    r = api_client.post("/v1/jobs", json={"prompt": "p", "image": REF, "audio": REF})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "references_disabled"


def test_inputs_are_removed_when_the_job_cannot_be_written(api_client, api_services, monkeypatch):
    """Inputs are stored before the job row; if the row cannot be written they are deleted."""
    import sqlalchemy as sa

    from db import job_store

    def broken(*args, **kwargs):
        raise sa.exc.OperationalError("INSERT", {}, Exception("connection lost"))

    monkeypatch.setattr(job_store, "create_job", broken)
    r = send(api_client, Case("db-down", 503, "", ""))
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "database_unavailable"
    assert leftovers(api_services) == NOTHING
