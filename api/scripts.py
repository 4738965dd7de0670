"""A job's script: which engine, language and voice speak it (checked against what the
server's engines offer), and its synthesis into the WAV file that becomes the job's audio
input, stored like an uploaded one. The text itself is checked by `api.schemas.check_script`.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from api.errors import ApiError
from api.references import LocalInput
from api.schemas import JobRequest
from db.params import ScriptParams
from pipeline import params as P
from speech import SpeechEngines, SpeechError

log = logging.getLogger(__name__)

VOICES_ENDPOINT = "GET /v1/voices"
_LISTED = 40
"""At most this many languages or voices are named in a message; the endpoint lists all."""


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    more = len(names) - _LISTED
    return shown + (f" and {more} more ({VOICES_ENDPOINT} lists them all)" if more > 0 else "")


def unavailable(e: SpeechError) -> ApiError:
    log.error("speech synthesis failed: %s", e)
    return ApiError(
        503, "speech_unavailable", "speech synthesis is not available on this server right now; "
        "retry later, or send audio instead of a script",
    )  # fmt: skip


def resolve_script(engines: SpeechEngines, req: JobRequest, field: str = "") -> ScriptParams | None:
    """The script of a request with its engine, language and voice, each one the engines
    offer (a 422 naming what is offered otherwise); None for a request without a script.
    `field` is the request's place in a batch (`jobs[3].`)."""
    if req.script is None:
        given = [n for n in ("language", "voice", "speech_engine") if getattr(req, n) is not None]
        if given:
            raise ApiError(
                422, "invalid_parameter", f"{field}{given[0]}: belongs to a script, and there "
                "is none; send a script, or leave out language, voice and speech_engine",
                f"{field}{given[0]}",
            )  # fmt: skip
        return None
    engine = engines.get(req.speech_engine)
    if engine is None:
        raise ApiError(
            422, "unknown_speech_engine", f"{field}speech_engine: {req.speech_engine!r} is not "
            f"an engine of this server; use one of: {', '.join(engines.names())}",
            f"{field}speech_engine",
        )  # fmt: skip
    try:
        languages = list(engine.languages())
        voices = list(engine.voices())
    except SpeechError as e:
        raise unavailable(e) from None
    if req.language is None:
        raise ApiError(
            422, "missing_language", f"{field}language is required with a script: one of "
            f"{_some(languages)}", f"{field}language",
        )  # fmt: skip
    if req.language not in languages:
        raise ApiError(
            422, "unknown_language", f"{field}language: {engine.name} does not speak "
            f"{req.language!r}; use one of: {_some(languages)}", f"{field}language",
        )  # fmt: skip
    voice = req.voice if req.voice is not None else engine.default_voice
    speaking = [v.id for v in voices if v.speaks(req.language)]
    if voice not in speaking:
        raise ApiError(
            422, "unknown_voice", f"{field}voice: {engine.name} has no voice {voice!r} for "
            f"{req.language}; use one of: {_some(speaking)}", f"{field}voice",
        )  # fmt: skip
    return ScriptParams(text=req.script, language=req.language, voice=voice, engine=engine.name)


def script_identity(script: ScriptParams) -> str:
    """What identifies a script's speech: its text, engine, language and voice."""
    canonical = "\0".join((script.engine, script.language, script.voice, script.text))
    return "script:" + hashlib.sha256(canonical.encode()).hexdigest()


def synthesise(
    engines: SpeechEngines, script: ScriptParams, dest: Path, field: str = ""
) -> LocalInput:
    """The script spoken, written to `dest` as a 16-bit mono WAV file (checked afterwards
    like any audio: api.inputs.inspect_audio). A script of no words (".") speaks as less
    than a video frame: a 422 that says so."""
    engine = engines.get(script.engine)
    assert engine is not None  # resolve_script chose it
    try:
        speech = engine.synthesise(script.text, script.language, script.voice)
    except SpeechError as e:
        raise unavailable(e) from None
    if speech.duration_s < 1 / P.FPS:
        raise ApiError(
            422, "invalid_parameter", f"{field}script: it speaks as {speech.duration_s:.3f} s of "
            f"sound, less than one video frame; write words for the voice to say",
            f"{field}script",
        )  # fmt: skip
    data = speech.wav_bytes()
    dest.write_bytes(data)
    return LocalInput(dest, hashlib.sha256(data).hexdigest())
