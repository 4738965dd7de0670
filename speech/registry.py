"""The engines a deployment offers, by name; the first is the default.

An engine is named in settings (`LONGTAKE_SPEECH_ENGINES`) either as `espeak-ng` (the
embedded default) or as `module:function`, a factory called with the operator's voice
directory (`LONGTAKE_SPEECH_VOICE_DIR`) that returns a `SpeechEngine` (docs/speech.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from speech.engine import SpeechEngine
from speech.espeak import EspeakEngine


def load_engine(
    spec: str, *, voice_dir: Path | None, espeak_path: str = "espeak-ng", timeout_s: float = 120
) -> SpeechEngine:
    """The engine `spec` names: `espeak-ng`, or `module:function` (called with `voice_dir`)."""
    if spec == EspeakEngine.name:
        return EspeakEngine(espeak_path, timeout_s=timeout_s)
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"speech engine {spec!r}: name espeak-ng or a factory as module:function")
    engine = getattr(importlib.import_module(module_name), attr)(voice_dir)
    if not isinstance(engine, SpeechEngine):
        raise ValueError(f"speech engine {spec!r} returned {engine!r}, not a SpeechEngine")
    return engine


class SpeechEngines:
    """Engines by name, in the order given; the first is the default."""

    def __init__(self, engines: Sequence[SpeechEngine]):
        if not engines:
            raise ValueError("at least one speech engine is needed")
        self._engines = {e.name: e for e in engines}
        if len(self._engines) != len(engines):
            raise ValueError("two speech engines have the same name")
        self.default = engines[0].name

    def __iter__(self) -> Iterator[SpeechEngine]:
        return iter(self._engines.values())

    def names(self) -> list[str]:
        return list(self._engines)

    def get(self, name: str | None) -> SpeechEngine | None:
        return self._engines.get(name or self.default)
