"""The speech engines: espeak-ng (the embedded default) as a subprocess, and engines of the
operator's own registered by settings."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from ops.settings import Settings
from speech import EspeakEngine, Speech, SpeechEngine, SpeechError
from tests.speech import tone_engine

TEXT = "Welcome to the second lesson. Today we talk about long videos."


@pytest.fixture(scope="module")
def espeak() -> EspeakEngine:
    return EspeakEngine()


def test_espeak_lists_the_languages_and_voices_of_espeak_ng_voices(espeak):
    assert isinstance(espeak, SpeechEngine)
    languages = espeak.languages()
    assert {"en-us", "en-gb", "de", "fr-fr", "es"} <= set(languages)
    assert len(languages) == len(set(languages)) > 50
    voices = {v.id: v for v in espeak.voices()}
    assert espeak.default_voice == "default" in voices
    # the variants: female3 is the file !v/f3, and every variant speaks every language
    assert voices["f3"].name == "female3" and voices["f3"].gender == "female"
    assert voices["m1"].gender == "male"
    assert all(v.speaks("de") for v in voices.values())


def test_espeak_speaks_mono_pcm_of_the_texts_length(espeak):
    speech = espeak.synthesise(TEXT, "en-us", "default")
    assert speech.samples.dtype == np.int16 and speech.samples.ndim == 1
    assert speech.sample_rate == 22_050
    assert 2.5 < speech.duration_s < 8  # eleven words at espeak-ng's 175 words per minute
    assert np.abs(speech.samples).max() > 1000  # sound, not silence
    longer = espeak.synthesise(TEXT + " " + TEXT, "en-us", "default")
    assert longer.duration_s == pytest.approx(2 * speech.duration_s, rel=0.15)


def test_espeak_is_deterministic_and_the_voice_and_language_change_the_sound(espeak):
    """The stored input is synthesised once; still, the same text and voice give the same
    samples, which the end-to-end test relies on to compare the job's audio."""
    a = espeak.synthesise(TEXT, "en-us", "f3")
    b = espeak.synthesise(TEXT, "en-us", "f3")
    assert np.array_equal(a.samples, b.samples)
    other_voice = espeak.synthesise(TEXT, "en-us", "m3")
    other_language = espeak.synthesise(TEXT, "de", "f3")
    for other in (other_voice, other_language):
        assert other.samples.shape != a.samples.shape or not np.array_equal(
            other.samples, a.samples
        )


def test_text_that_looks_like_an_option_is_spoken_not_obeyed(espeak):
    speech = espeak.synthesise("--version -v de", "en-us", "default")
    assert speech.duration_s > 0.5


def test_a_missing_program_is_a_speech_error_that_says_how_to_install_it():
    engine = EspeakEngine("/nonexistent/espeak-ng")
    with pytest.raises(SpeechError, match="apt-get install espeak-ng"):
        engine.languages()
    with pytest.raises(SpeechError, match="not installed"):
        engine.synthesise("hello", "en-us", "default")


def test_speech_writes_16_bit_mono_wav_from_int16_or_float_samples():
    for samples in (np.array([0, 1000, -1000], np.int16), np.array([0, 0.5, -2.0], np.float32)):
        data = Speech(samples, 8000).wav_bytes()
        with wave.open(io.BytesIO(data)) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (
                1, 2, 8000, 3,
            )  # fmt: skip
            pcm = np.frombuffer(w.readframes(3), "<i2")
    assert pcm.tolist() == [0, 16383, -32767]  # floats are clipped to [-1, 1]


def test_settings_register_espeak_and_an_operators_engine_with_its_voice_files(tmp_path):
    voices = tone_engine.write_voices(tmp_path / "voices", low=110.0, high=440.0)
    settings = Settings(
        speech_engines="espeak-ng, tests.speech.tone_engine:make", speech_voice_dir=voices
    )
    engines = settings.make_speech()
    assert engines.names() == ["espeak-ng", "tones"] and engines.default == "espeak-ng"
    tones = engines.get("tones")
    assert [v.id for v in tones.voices()] == ["high", "low"]
    assert tones.synthesise("one two", "xx-tone", "low").duration_s == pytest.approx(0.5)
    assert engines.get(None) is engines.get("espeak-ng")


def test_settings_refuse_an_engine_that_is_not_one():
    with pytest.raises(ValueError, match="module:function"):
        Settings(speech_engines="festival").make_speech()
    with pytest.raises(ValueError, match="not a SpeechEngine"):
        Settings(speech_engines="tests.speech.tone_engine:not_an_engine").make_speech()


def test_speech_stands_alone_on_numpy_and_the_standard_library():
    """No package of the project is imported by speech/ (the API imports it, not the reverse)."""
    import ast
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "speech"
    imported = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) == {"numpy", "speech"}


def test_a_program_that_cannot_run_is_a_speech_error(tmp_path):
    program = tmp_path / "espeak-ng"
    program.write_text("#!/bin/sh\n")  # not executable
    with pytest.raises(SpeechError, match="cannot run"):
        EspeakEngine(str(program)).languages()
