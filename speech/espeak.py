"""The embedded default engine: espeak-ng (Debian's package `espeak-ng`), run as a subprocess.

Its languages are what `espeak-ng --voices` lists; its voices are the variants that
`espeak-ng --voices=variant` lists (each speaks every language), plus `default`, the
language's own voice. espeak-ng is a formant synthesiser: robotic, but small, fast (far faster
than real time on one core), offline, and the same text with the same voice gives the same
samples every time.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from speech.engine import Speech, SpeechError, Voice

DEFAULT_VOICE = "default"


def _rows(listing: str) -> list[list[str]]:
    """The rows of an `--voices` table (header dropped): Pty, Language, Age/Gender,
    VoiceName, File, other languages."""
    return [line.split() for line in listing.splitlines()[1:] if len(line.split()) >= 5]


class EspeakEngine:
    name = "espeak-ng"
    default_voice = DEFAULT_VOICE

    def __init__(self, executable: str = "espeak-ng", timeout_s: float = 120.0):
        self.executable = executable
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._languages: tuple[str, ...] | None = None
        self._voices: tuple[Voice, ...] | None = None

    def _run(self, args: list[str], text: str | None = None) -> str:
        """stdout of espeak-ng with `args` (and `text` on stdin)."""
        try:
            done = subprocess.run(
                [self.executable, *args],
                input=text.encode() if text is not None else None,
                capture_output=True,
                timeout=self.timeout_s,
                check=False,
            )
        except FileNotFoundError:
            raise SpeechError(
                f"{self.executable} is not installed (Debian/Ubuntu: apt-get install espeak-ng)"
            ) from None
        except OSError as e:  # not executable, too many processes...
            raise SpeechError(f"cannot run {self.executable}: {e}") from None
        except subprocess.TimeoutExpired:
            raise SpeechError(f"{self.executable} took longer than {self.timeout_s:g} s") from None
        # espeak-ng reports some errors on stdout with exit status 0 (when it synthesises, its
        # stdout is otherwise empty)
        errors = (done.stderr + (done.stdout if text is not None else b"")).decode(errors="replace")
        if done.returncode != 0 or "Error" in errors:
            raise SpeechError(
                f"{self.executable} {' '.join(args[:3])} failed ({done.returncode}): "
                f"{errors.strip()[:500]}"
            )
        return done.stdout.decode(errors="replace")

    def _load(self) -> None:
        with self._lock:
            if self._languages is not None:
                return
            languages = dict.fromkeys(row[1] for row in _rows(self._run(["--voices"])))
            variants = [
                Voice(
                    id=row[4].rpartition("/")[2],  # the file (!v/f3): what `-v lang+f3` names
                    name=row[3].replace("_", " "),
                    gender={"M": "male", "F": "female"}.get(row[2].rpartition("/")[2]),
                )
                for row in _rows(self._run(["--voices=variant"]))
                if row[4].startswith("!v/")
            ]
            if not languages:
                raise SpeechError(f"{self.executable} --voices lists no languages")
            self._voices = (Voice(DEFAULT_VOICE, "the language's own voice"), *variants)
            self._languages = tuple(languages)

    def languages(self) -> Sequence[str]:
        self._load()
        assert self._languages is not None
        return self._languages

    def voices(self) -> Sequence[Voice]:
        self._load()
        assert self._voices is not None
        return self._voices

    def synthesise(self, text: str, language: str, voice: str) -> Speech:
        spec = language if voice == DEFAULT_VOICE else f"{language}+{voice}"
        with tempfile.TemporaryDirectory(prefix="longtake-espeak-") as tmp:
            out = Path(tmp) / "speech.wav"
            # the text on stdin (UTF-8: -b 1), never as an argument: it may start with "-"
            self._run(["-v", spec, "-b", "1", "-w", str(out), "--stdin"], text=text)
            try:
                with wave.open(str(out), "rb") as w:
                    if w.getnchannels() != 1 or w.getsampwidth() != 2:
                        raise SpeechError(
                            f"{self.executable} wrote {w.getnchannels()} channels of "
                            f"{8 * w.getsampwidth()}-bit samples, not 16-bit mono"
                        )
                    rate = w.getframerate()
                    samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
            except (OSError, EOFError, wave.Error) as e:
                raise SpeechError(f"{self.executable} wrote no readable WAV file: {e}") from None
        return Speech(samples.astype(np.int16), rate)
