"""Request and response bodies of the /v1 API."""

from __future__ import annotations

import re
import secrets
import uuid
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Header, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from api import text
from api.config import InputLimits
from api.errors import ApiError
from db.failures import FailureKind
from db.models import Job, JobEvent
from db.params import InferFrames, PrecisionName, SampleSteps, SizeKey, WatermarkParams
from db.presenters import PRESENTER_NAME_PATTERN, PresenterRecord, is_presenter_name
from db.states import JobStatus
from db.uploads import UPLOAD_ID_PATTERN
from db.webhooks import WEBHOOK_EVENTS
from pipeline import params as P

TO_END_OF_AUDIO = ("", "audio", "to_end_of_audio", "null", "none")
"""What a form's num_clips may say instead of a number to render to the end of the audio."""
_FORM_INTEGER = re.compile("-?[0-9]{1,20}")
WEBHOOK_URL_MAX = 2048
WEBHOOK_URL_PATTERN = "^https?://[^/?#@]+"
"""An absolute http(s) URL with a host (what `check_webhook_url` accepts)."""
BLANK = " \t\n\r\f\v"
"""What a prompt may not consist of only (and is trimmed of)."""
SCRIPT_CONTROL = "\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f"
"""The control characters a script may not hold (every one but tab, newline and carriage
return), as a regular expression's class."""
_SCRIPT_CONTROL = re.compile(f"[{SCRIPT_CONTROL}]")
SCRIPT_PATTERN = f"^[^{SCRIPT_CONTROL}]*[^{SCRIPT_CONTROL}\\t\\n\\r\\x20][^{SCRIPT_CONTROL}]*$"
"""A script: no control characters but tab and line breaks, something other than spaces."""
REFERENCE_PATTERN = UPLOAD_ID_PATTERN
"""An input by reference: an upload id, or (where the server has input buckets; the schema
it publishes says which: api.references.reference_pattern) an s3:// URI."""
LIMITS = InputLimits()
"""The limits the published schema states: every tenant has these (tenants set only byte and
duration limits of their own)."""


ID_MAX = 10**18 - 1
"""The largest event or delivery id a request may name: 18 digits, within a signed 64-bit
integer (the database's ids) and the same bound in a query (`after`) and in a header
(`Last-Event-ID`)."""
IDEMPOTENCY_KEY_MAX = 255
LAST_EVENT_ID_PATTERN = "^[0-9]{1,18}$"
CURSOR_PATTERN = "^[0-9a-f]{46}$"
"""A page's position (api.routes.jobs.encode_cursor): opaque to clients."""
WEBHOOK_ID_PATTERN = "^wh_[0-9a-f]{24}$"

# Query and header parameters several routes share. Bounds that depend on the server's
# configuration (page size, URL lifetime) are checked in the routes and written into the
# published schema when the app is built (api.app).
PageSize = Annotated[
    int,
    Query(description="Items per page (at most the server's maximum, 200 by default).",
          json_schema_extra={"minimum": 1}),
]  # fmt: skip
Cursor = Annotated[
    str | None,
    Query(
        description="Opaque: the `next_cursor` of the previous page.",
        json_schema_extra={"pattern": CURSOR_PATTERN},
    ),
]
After = Annotated[int | None, Query(ge=0, le=ID_MAX, description="Only the items after this id.")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Retrying with the same key returns the first result instead of a second one.",
        json_schema_extra={"minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX},
    ),
]


def id_links(parameter: str, **targets: tuple[str, str]) -> dict[str, Any]:
    """OpenAPI links from an answer carrying a resource's `id` to the operations that take it
    as `parameter`: name=(method, path)."""
    return {
        name: {
            "operationRef": "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method,
            "parameters": {parameter: "$response.body#/id"},
        }
        for name, (method, path) in targets.items()
    }


def check_webhook_url(url: str) -> str:
    parsed = urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError("a webhook URL must be an absolute http:// or https:// URL")
    if len(url) > WEBHOOK_URL_MAX:
        raise ValueError(f"a webhook URL may have at most {WEBHOOK_URL_MAX} characters")
    try:
        parsed.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        raise ValueError("the webhook URL's port is not a number from 0 to 65535") from None
    if "@" in parsed.netloc:
        raise ValueError("a webhook URL may not carry a user name or password")
    return url


def check_webhook_events(events: list[str]) -> list[str]:
    unknown = [e for e in events if e not in WEBHOOK_EVENTS]
    if unknown or not events:
        raise ValueError(
            f"webhook events must be some of {', '.join(WEBHOOK_EVENTS)}"
            + (f"; {unknown[0]!r} is not one" if unknown else "")
        )
    return list(dict.fromkeys(events))


def check_webhook_secret(secret: str) -> str:
    if not 16 <= len(secret) <= 128:
        raise ValueError("a webhook secret must have 16 to 128 characters")
    return secret


def check_script(text: str, limit: int) -> str:
    """The script trimmed of surrounding whitespace, its line breaks line feeds; ValueError
    saying what to fix."""
    # browsers send a textarea's line breaks in a multipart form as CR LF: the script is kept
    # (and its length counted) as it was written
    text = text.replace("\r\n", "\n")
    if len(text) > limit:
        raise ValueError(
            f"the script has {len(text)} characters; at most {limit} are allowed, split it "
            "into several jobs"
        )
    if (bad := _SCRIPT_CONTROL.search(text)) is not None:
        line = text.count("\n", 0, bad.start()) + 1
        raise ValueError(
            f"the script holds the control character U+{ord(bad.group()):04X} (line {line}, "
            f"character {bad.start() + 1}); remove it: only tabs and line breaks are allowed"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"the script is not valid Unicode text (character {e.start + 1} is half of a "
            "surrogate pair); send it as UTF-8"
        ) from None
    text = text.strip()
    if not text:
        raise ValueError("the script is empty; write the words the presenter says")
    return text


def _from_form(info: ValidationInfo) -> bool:
    return bool((info.context or {}).get("form"))


WEBHOOK_URL_SCHEMA = {"pattern": WEBHOOK_URL_PATTERN, "maxLength": WEBHOOK_URL_MAX, "format": "uri"}
WEBHOOK_EVENTS_SCHEMA = {"items": {"enum": list(WEBHOOK_EVENTS)}, "minItems": 1}
WEBHOOK_SECRET_SCHEMA = {"minLength": 16, "maxLength": 128}


class JobRequest(BaseModel):
    """Render parameters. Validate with `context={"limits": InputLimits}`, plus `"form": True`
    for the fields of a multipart form (text, to be read as numbers, lists and objects).

    JSON is taken as typed (strict): `"seed": "7"` or `"priority": true` is refused, as the
    published schema says. The bounds checked below are published too (`json_schema_extra`),
    with the messages written here.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str | None = Field(
        None,
        description="What the video shows, in a sentence or a paragraph (trimmed). Required "
        "unless `presenter` is given.",
        json_schema_extra={"maxLength": LIMITS.max_prompt_chars, "pattern": f"[^{BLANK}]"},
    )
    size: SizeKey = Field(
        P.SIZE_DEFAULT,
        description="An area key such as 720*400.",
        json_schema_extra={"enum": list(P.SIZES)},
    )
    num_clips: int | None = Field(
        None,
        description="Clips to render; null (or omitted) renders to the end of the audio.",
        json_schema_extra={"minimum": 1, "maximum": LIMITS.max_num_clips},
    )
    infer_frames: InferFrames = Field(
        P.INFER_FRAMES_DEFAULT,
        description="Video frames per clip.",
        json_schema_extra={
            "minimum": P.INFER_FRAMES_MIN,
            "maximum": P.INFER_FRAMES_MAX,
            "multipleOf": P.FRAMES_PER_BLOCK_VIDEO,
        },
    )
    sample_steps: SampleSteps = Field(
        P.SAMPLE_STEPS_DEFAULT,
        description="Denoising steps per block.",
        json_schema_extra={"minimum": P.SAMPLE_STEPS_MIN, "maximum": P.SAMPLE_STEPS_MAX},
    )
    seed: int | None = Field(
        None,
        description="Fixes the output; a random one when omitted.",
        json_schema_extra={"minimum": 0, "maximum": P.SEED_MAX},
    )
    checkpoint_every: int | None = Field(
        None,
        description="Clips between checkpoints.",
        json_schema_extra={"minimum": 1, "maximum": LIMITS.max_checkpoint_every},
    )
    priority: int = Field(0, ge=-100, le=100, description="Higher runs first.")
    image: str | None = Field(
        None,
        description="The portrait by reference (JSON): s3://bucket/key or an upload id.",
        json_schema_extra={"pattern": REFERENCE_PATTERN},
    )
    audio: str | None = Field(
        None,
        description="The speech by reference (JSON): s3://bucket/key or an upload id. "
        "Or send a script instead.",
        json_schema_extra={"pattern": REFERENCE_PATTERN},
    )
    script: str | None = Field(
        None,
        description="The speech as text, instead of audio: synthesised at submit with "
        "`speech_engine`, `language` and `voice` (GET /v1/voices lists them) and stored as the "
        "job's audio. Tabs and line breaks are allowed, other control characters are not.",
        json_schema_extra={"maxLength": LIMITS.max_script_chars, "pattern": SCRIPT_PATTERN},
    )
    language: str | None = Field(
        None, description="The script's language (required with a script): GET /v1/voices."
    )
    voice: str | None = Field(
        None, description="The voice that speaks the script; the engine's default when omitted."
    )
    speech_engine: str | None = Field(
        None, description="The engine that synthesises the script; the server's default when "
        "omitted.",
    )  # fmt: skip
    presenter: str | None = Field(
        None,
        description="The name of one of your presenters (POST /v1/presenters): its portrait, "
        "prompt and size, instead of sending image, prompt and size.",
        json_schema_extra={"pattern": PRESENTER_NAME_PATTERN, "maxLength": 64},
    )
    webhook_url: str | None = Field(
        None,
        description="POST this job's events to this http(s) URL, signed (see docs/api.md). "
        "Its host must resolve to public addresses only (or be allowed by the operator).",
        json_schema_extra=WEBHOOK_URL_SCHEMA,
    )
    webhook_events: list[str] | None = Field(
        None,
        description="Which events the webhook receives (in a multipart form, comma-separated): "
        "any of " + ", ".join(WEBHOOK_EVENTS) + "; all when omitted.",
        json_schema_extra=WEBHOOK_EVENTS_SCHEMA,
    )
    webhook_secret: str | None = Field(
        None, description="Signs this job's deliveries (16 to 128 characters); the tenant's "
        "webhook secret (GET /v1/webhooks/secret) when omitted.",
        json_schema_extra=WEBHOOK_SECRET_SCHEMA,
    )  # fmt: skip
    precision: PrecisionName | None = Field(
        None,
        description="The model's precision: " + " or ".join(P.PRECISIONS) + "; the server's "
        "default when omitted. fp8 renders faster with a small loss of fidelity; "
        "fp8-attention faster still (self-attention in FP8 too; needs Hopper GPUs).",
    )
    watermark: WatermarkParams | None = Field(
        None,
        description="Changes to the operator's visible mark for this job: text, corner, "
        "opacity, scale, margin (a JSON object; in a multipart form, its JSON text). It must "
        "fit the frame at the job's output size.",
    )

    @staticmethod
    def _limits(info: ValidationInfo) -> InputLimits:
        return (info.context or {}).get("limits") or InputLimits()

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:  # a presenter's job, or refused by `check_presenter_choice`
            return None
        limit = cls._limits(info).max_prompt_chars
        if len(v) > limit:
            raise ValueError(f"the prompt has {len(v)} characters; at most {limit} are allowed")
        v = v.strip(BLANK)
        if not v:
            raise ValueError("the prompt is empty; describe the speaker and the scene")
        return v

    @field_validator("script")
    @classmethod
    def _script(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else check_script(v, cls._limits(info).max_script_chars)

    @field_validator(
        "num_clips", "infer_frames", "sample_steps", "seed", "checkpoint_every", "priority",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _form_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        """A form field is text: read it as a whole number (num_clips also as words)."""
        if not (_from_form(info) and isinstance(v, str)):
            return v
        if info.field_name == "num_clips" and v in TO_END_OF_AUDIO:
            return None
        return int(v) if _FORM_INTEGER.fullmatch(v) else v  # else refused: not an integer

    @field_validator("num_clips")
    @classmethod
    def _num_clips(cls, v: int | None, info: ValidationInfo) -> int | None:
        limit = cls._limits(info).max_num_clips
        if v is not None and not 1 <= v <= limit:
            raise ValueError(
                f"num_clips must be between 1 and {limit}, or null to render to the end of the audio"
            )
        return v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int | None) -> int | None:
        if v is not None and not 0 <= v <= P.SEED_MAX:
            raise ValueError(f"seed must be between 0 and {P.SEED_MAX}")
        return v

    @field_validator("checkpoint_every")
    @classmethod
    def _checkpoint_every(cls, v: int | None, info: ValidationInfo) -> int | None:
        limit = cls._limits(info).max_checkpoint_every
        if v is not None and not 1 <= v <= limit:
            raise ValueError(f"checkpoint_every must be between 1 and {limit} clips")
        return v

    @field_validator("presenter")
    @classmethod
    def _presenter(cls, v: str | None) -> str | None:
        if v is not None and not is_presenter_name(v):
            raise ValueError(
                f"{v[:80]!r} is not a presenter name (1 to 64 letters, digits, '.', '_' or '-')"
            )
        return v

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, v: str | None) -> str | None:
        return None if v is None else check_webhook_url(v)

    @field_validator("webhook_events", mode="before")
    @classmethod
    def _webhook_events_words(cls, v: Any, info: ValidationInfo) -> Any:
        if _from_form(info) and isinstance(v, str):  # an empty item stays, to be refused
            return [e.strip() for e in v.split(",")]
        return v

    @field_validator("webhook_events")
    @classmethod
    def _webhook_events(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else check_webhook_events(v)

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, v: str | None) -> str | None:
        return None if v is None else check_webhook_secret(v)

    @field_validator("watermark", mode="before")
    @classmethod
    def _watermark_json(cls, v: Any, info: ValidationInfo) -> Any:
        if _from_form(info) and isinstance(v, str):  # a form field carries the object as JSON
            try:
                return text.loads(v)
            except text.JsonError as e:
                if e.field is not None:
                    raise ValueError(f"{e.field}: {e.message}") from None
                raise ValueError(
                    f"watermark must be a JSON object of watermark settings; it {e.message}"
                ) from None
        return v

    def check_presenter_choice(self, field: str = "", image_file: bool = False) -> None:
        """422 unless the job has its portrait, prompt and size from exactly one place: a
        presenter, or the request. `field` is the job's place in a batch (`jobs[3].`);
        `image_file`, whether the image came as a file."""
        if self.presenter is None:
            if self.prompt is None:
                raise ApiError(
                    422, "invalid_parameter", f"{field}prompt: required; describe the speaker "
                    "and the scene, or name a presenter", f"{field}prompt",
                )  # fmt: skip
            return
        given = [
            name
            for name, sent in (
                ("image", image_file or "image" in self.model_fields_set),
                ("prompt", "prompt" in self.model_fields_set),
                ("size", "size" in self.model_fields_set),
            )
            if sent
        ]
        if given:
            raise ApiError(
                422, "presenter_conflict",
                f"{field}presenter {self.presenter!r} brings its own portrait, prompt and size: "
                f"drop {' and '.join(given)}, or drop presenter to send them yourself",
                f"{field}{given[0]}",
            )  # fmt: skip

    def with_presenter(self, presenter: PresenterRecord) -> JobRequest:
        """The request with the presenter's portrait (its upload id), prompt and size, as if
        they had been sent: the job then holds its own copy of them."""
        return self.model_copy(
            update={"image": presenter.portrait.id, "prompt": presenter.prompt,
                    "size": presenter.size}
        )  # fmt: skip

    def resolved_seed(self) -> int:
        return self.seed if self.seed is not None else secrets.randbelow(2**31)


def _given(*names: str) -> dict[str, Any]:
    """Each of `names` is given: present and not null (null is leaving a field out)."""
    return {"required": list(names), "properties": {n: {"type": "string"} for n in names}}


PORTRAIT_CHOICE: dict[str, Any] = {
    "oneOf": [_given("image", "prompt"), _given("presenter")],
    "not": {"anyOf": [{"allOf": [_given("presenter"), _given(name)]}
                      for name in ("image", "prompt", "size")]},
}  # fmt: skip
"""A job's portrait and prompt: its own image and prompt, or a presenter's (then none of
image, prompt and size may be given)."""

SPEECH_CHOICE: dict[str, Any] = {"oneOf": [_given("audio"), _given("script")]}
"""A job's speech: an audio track or a script, one of the two."""


def job_schema(ref_template: str) -> dict[str, Any]:
    """JobRequest's published schema: a prompt is text (no null); image and prompt are required
    unless the job names a presenter, and audio unless it gives a script."""
    job = JobRequest.model_json_schema(ref_template=ref_template)
    prompt = job["properties"]["prompt"]
    rest = {k: v for k, v in prompt.items() if k not in ("anyOf", "default")}
    job["properties"]["prompt"] = {**rest, "type": "string"}
    job.pop("required", None)
    job["allOf"] = [PORTRAIT_CHOICE, SPEECH_CHOICE]
    return job


def form_schema(job: dict[str, Any]) -> dict[str, Any]:
    """The multipart form of a job: JobRequest's fields as text fields (numbers as their
    digits, num_clips also as words, webhook_events comma-separated, watermark as JSON text)
    beside the files image and audio (or a script instead of audio). An omitted field takes
    its default; there is no null. image and prompt are required unless presenter is given
    (the server says which to drop when both are); the form's description says so."""
    properties: dict[str, Any] = {}
    for name, prop in job["properties"].items():
        if name in ("image", "audio"):
            continue
        options = [o for o in prop.get("anyOf", []) if o.get("type") != "null"]
        merged = {k: v for k, v in prop.items() if k not in ("anyOf", "default")}
        properties[name] = {**merged, **(options[0] if options else {})}
    properties["num_clips"] = {
        "description": properties["num_clips"]["description"],
        "anyOf": [
            {"type": "integer", "minimum": 1, "maximum": LIMITS.max_num_clips},
            {"type": "string", "enum": list(TO_END_OF_AUDIO)},
        ],
    }
    event = "(" + "|".join(WEBHOOK_EVENTS) + ")"
    properties["webhook_events"] = {
        "type": "string",
        "description": properties["webhook_events"]["description"],
        "pattern": rf"^\s*{event}\s*(,\s*{event}\s*)*$",
    }
    for kind in ("image", "audio"):
        properties[kind] = {"type": "string", "format": "binary"}
    return {
        "type": "object",
        "description": "The files image and audio and the parameters as text fields. The "
        "speech is the file audio or a script (with its language), one of the two; image and "
        "prompt are required unless presenter is given, and then neither they nor size may be.",
        # the speech: a file, or a script to synthesise
        "oneOf": [{"required": ["audio"]}, {"required": ["script"]}],
        # image and prompt, or presenter: not stated as a combinator, which fuzzers cannot
        # evaluate over binary parts; the server answers a 422 naming what is missing or extra
        "properties": properties,
        "additionalProperties": False,
    }


class Progress(BaseModel):
    clips_done: int
    clips_total: int
    frames_done: int
    frames_total: int
    fps: float | None
    eta_s: float | None
    last_checkpoint_clip: int | None


class JobOut(BaseModel):
    id: uuid.UUID
    status: str
    priority: int
    precision: str
    batch_id: uuid.UUID | None
    params: dict[str, Any]
    inputs: dict[str, str]
    progress: Progress
    attempt: int
    max_attempts: int
    cancel_requested: bool
    failed_attempts: int = Field(description="Attempts that failed or lost their worker.")
    error: str | None = Field(description="What went wrong and what to do (failed jobs).")
    error_kind: FailureKind | None = Field(
        description="input: the job cannot render as submitted (a retry fails the same way; "
        "submit it again with other inputs); render or infrastructure: a retry may succeed."
    )
    can_retry: bool = Field(description="Whether POST .../retry is accepted and may help.")
    presenter: str | None = Field(
        description="The presenter the job was submitted with; params and inputs hold what "
        "it took from it."
    )
    output_key: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: dict[str, str]

    @classmethod
    def of(cls, job: Job) -> JobOut:
        base = f"/v1/jobs/{job.id}"
        return cls(
            id=job.id,
            status=job.status,
            priority=job.priority,
            precision=job.precision,
            batch_id=job.batch_id,
            params=job.params,
            inputs={"image": job.image_key, "audio": job.audio_key},
            progress=Progress(
                clips_done=job.clips_done,
                clips_total=job.clips_total,
                frames_done=job.frames_done,
                frames_total=job.frames_total,
                fps=job.fps,
                eta_s=job.eta_s,
                last_checkpoint_clip=job.last_checkpoint_clip,
            ),
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            cancel_requested=job.cancel_requested,
            failed_attempts=job.failed_attempts,
            error=job.error,
            error_kind=job.failure_kind,
            can_retry=job.job_status in (JobStatus.FAILED, JobStatus.CANCELED)
            and job.error_kind != "input",
            presenter=job.presenter,
            output_key=job.output_key,
            created_at=job.created_at,
            updated_at=job.updated_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            links={
                "self": base,
                "events": f"{base}/events",
                "cancel": f"{base}/cancel",
                "retry": f"{base}/retry",
                "result": f"{base}/result",
                "segments": f"{base}/segments",
            },
        )


class JobList(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page.")


class EventOut(BaseModel):
    id: int = Field(description="Increases with every event of a job; the SSE event id.")
    at: datetime
    event: str
    from_status: str | None
    to_status: str | None
    reason: str
    worker_id: str | None
    attempt: int | None
    data: dict[str, Any] | None = Field(
        description="Facts of the event: progress, the checkpoint's clip, a segment's size..."
    )

    @classmethod
    def of(cls, e: JobEvent) -> EventOut:
        return cls(
            id=e.id,
            at=e.at,
            event=e.event,
            from_status=e.from_status,
            to_status=e.to_status,
            reason=e.reason,
            worker_id=e.worker_id,
            attempt=e.attempt,
            data=e.data,
        )


class EventList(BaseModel):
    events: list[EventOut]


class OutputMeta(BaseModel):
    bytes: int
    sha256: str
    frames: int | None
    duration_s: float | None


class ResultOut(BaseModel):
    url: str
    expires_in_s: int
    output_key: str
    output: OutputMeta


class SegmentOut(BaseModel):
    index: int
    first_clip: int
    clips: int
    frames: int
    bytes: int
    sha256: str
    url: str
    created_at: datetime


class SegmentList(BaseModel):
    job_id: uuid.UUID
    status: str
    clips_total: int
    expires_in_s: int
    segments: list[SegmentOut] = Field(description="Finished segments in order, with URLs.")
