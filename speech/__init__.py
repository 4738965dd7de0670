"""Speech from text: engines behind one small interface (`SpeechEngine`), the embedded
default (espeak-ng, run as a subprocess) and the set of engines a deployment offers.

Depends on numpy only: the API synthesises a job's script at submit; nothing here knows of
jobs, databases or storage.
"""

from speech.engine import Speech, SpeechEngine, SpeechError, Voice
from speech.espeak import EspeakEngine
from speech.registry import SpeechEngines, load_engine

__all__ = [
    "EspeakEngine",
    "Speech",
    "SpeechEngine",
    "SpeechEngines",
    "SpeechError",
    "Voice",
    "load_engine",
]
