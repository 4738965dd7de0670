"""/v1/voices: the languages and voices a job's script may be spoken in, by engine."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.deps import CallerDep, ServicesDep
from api.errors import error_responses
from api.scripts import unavailable
from api.services import Services
from speech import SpeechError

router = APIRouter(prefix="/v1/voices", tags=["speech"], responses=error_responses())


class VoiceOut(BaseModel):
    id: str = Field(description="What a job's `voice` names.")
    name: str
    gender: str | None
    languages: list[str] = Field(description="The languages it speaks; empty: all of its engine's.")


class EngineOut(BaseModel):
    name: str = Field(description="What a job's `speech_engine` names.")
    default: bool = Field(description="Whether scripts that name no engine use this one.")
    default_voice: str = Field(description="The voice of a script that names none.")
    languages: list[str]
    voices: list[VoiceOut]


class VoiceList(BaseModel):
    engines: list[EngineOut]


def _list(services: Services) -> VoiceList:
    engines = []
    for engine in services.speech:
        try:
            languages, voices = list(engine.languages()), list(engine.voices())
        except SpeechError as e:
            raise unavailable(e) from None
        engines.append(
            EngineOut(
                name=engine.name,
                default=engine.name == services.speech.default,
                default_voice=engine.default_voice,
                languages=languages,
                voices=[
                    VoiceOut(id=v.id, name=v.name, gender=v.gender, languages=list(v.languages))
                    for v in voices
                ],
            )
        )
    return VoiceList(engines=engines)


@router.get("", response_model=VoiceList, responses=error_responses(503))
async def list_voices(services: ServicesDep, caller: CallerDep) -> VoiceList:
    """The speech engines, their languages and voices: what a script may be spoken in."""
    return await run_in_threadpool(_list, services)
