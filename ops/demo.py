"""`longtake demo`: make demo inputs, start the embedded service, submit a job and watch it.

The inputs are generated here (a portrait drawn with Pillow, a few seconds of speech-like audio
synthesised with numpy), so the demo needs no downloads.
"""

from __future__ import annotations

import io
import socket
import sys
import wave
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from ops.settings import Settings

SAMPLE_RATE = 16_000
# (F1, F2) formant frequencies in Hz of a few vowels
VOWELS = [(730, 1090), (530, 1840), (270, 2290), (570, 840), (300, 870)]


def draw_portrait(width: int = 512, height: int = 768) -> Image.Image:
    """A simple frontal head-and-shoulders portrait on a plain background."""
    image = Image.new("RGB", (width, height), (196, 214, 228))
    d = ImageDraw.Draw(image)
    cx, w, h = width / 2, width, height
    d.ellipse([cx - 0.42 * w, 0.72 * h, cx + 0.42 * w, 1.25 * h], fill=(52, 72, 120))  # shoulders
    d.rectangle([cx - 0.09 * w, 0.55 * h, cx + 0.09 * w, 0.76 * h], fill=(224, 180, 150))  # neck
    d.ellipse([cx - 0.24 * w, 0.14 * h, cx + 0.24 * w, 0.62 * h], fill=(236, 192, 162))  # face
    d.chord([cx - 0.26 * w, 0.10 * h, cx + 0.26 * w, 0.42 * h], 180, 360, fill=(70, 46, 30))  # hair
    for side in (-1, 1):
        ex = cx + side * 0.09 * w
        d.ellipse([ex - 0.035 * w, 0.34 * h, ex + 0.035 * w, 0.37 * h], fill=(255, 255, 255))
        d.ellipse([ex - 0.015 * w, 0.343 * h, ex + 0.015 * w, 0.367 * h], fill=(60, 40, 30))
        d.line([ex - 0.04 * w, 0.32 * h, ex + 0.04 * w, 0.315 * h], fill=(70, 46, 30), width=4)
    d.line(
        [cx, 0.38 * h, cx - 0.015 * w, 0.45 * h, cx + 0.01 * w, 0.455 * h],
        fill=(200, 150, 125),
        width=3,
    )
    d.chord([cx - 0.08 * w, 0.49 * h, cx + 0.08 * w, 0.54 * h], 0, 180, fill=(170, 70, 70))  # mouth
    return image


def portrait_png(width: int = 512, height: int = 768) -> bytes:
    buffer = io.BytesIO()
    draw_portrait(width, height).save(buffer, format="PNG")
    return buffer.getvalue()


def synthesize_speech(seconds: float = 4.0, seed: int = 0) -> np.ndarray:
    """Speech-like mono audio at 16 kHz in [-1, 1]: voiced syllables (a glottal harmonic series
    shaped by vowel formants, with a wandering pitch), consonant noise bursts and pauses."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float64)
    pos = int(0.15 * SAMPLE_RATE)
    while pos < out.size - SAMPLE_RATE // 10:
        syllable = int(rng.uniform(0.14, 0.28) * SAMPLE_RATE)
        n = min(syllable, out.size - pos)
        t = np.arange(n) / SAMPLE_RATE
        f0 = rng.uniform(110, 170) * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(1, 3) * t))
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        f1, f2 = VOWELS[rng.integers(len(VOWELS))]
        voiced = np.zeros(n)
        for k in range(1, 30):
            freq = k * f0.mean()
            gain = (
                1 / k
                + 2.5 * np.exp(-(((freq - f1) / 90) ** 2))
                + 1.5 * np.exp(-(((freq - f2) / 120) ** 2))
            )
            voiced += gain * np.sin(k * phase)
        envelope = np.sin(np.pi * np.arange(n) / n) ** 0.6
        burst = int(0.03 * SAMPLE_RATE)
        consonant = np.zeros(n)
        consonant[:burst] = rng.normal(0, 0.6, burst) * np.linspace(1, 0, burst)
        out[pos : pos + n] += voiced * envelope + consonant
        pos += n + int(rng.choice([0.02, 0.05, 0.25], p=[0.6, 0.3, 0.1]) * SAMPLE_RATE)
    return 0.8 * out / np.abs(out).max()


def wav_bytes(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buffer.getvalue()


def write_demo_inputs(directory: Path, seconds: float = 4.0) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    image, audio = directory / "portrait.png", directory / "speech.wav"
    image.write_bytes(portrait_png(512, 512))  # square: DEMO_SIZE renders it at 128x128
    audio.write_bytes(wav_bytes(synthesize_speech(seconds)))
    return image, audio


DEMO_PROMPT = (
    "A friendly presenter in a blue sweater speaks to the camera in a bright studio, "
    "natural head movement, soft light."
)
DEMO_SIZE = "128*128"
"""Small, so that the tiny model renders the demo on a laptop's CPU in about a minute (three
clips of 48 frames); `longtake submit --size` renders any size key."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_demo(settings: Settings, *, port: int | None = None, out: TextIO | None = None) -> int:
    """Submit the demo job to a fresh embedded service and follow it to the end."""
    out = out or sys.stderr
    from api.client import LongtakeClient
    from ops.server import BackgroundServer, build
    from ops.terminal import count, own_command, watch

    port = port or free_port()
    settings = settings.model_copy(update={"api_url": f"http://127.0.0.1:{port}"})
    demo_dir = settings.data_dir / "demo"
    image, audio = write_demo_inputs(demo_dir)
    out.write(f"demo inputs: {image} and {audio}\n")

    server = BackgroundServer(build(settings, embedded=True), "127.0.0.1", port)
    server.start()
    try:
        key_file = server.process.api_key_file
        api_key = key_file.read_text().strip() if key_file is not None else None
        with LongtakeClient(settings.api_url, api_key=api_key) as client:
            client.wait_ready()
            job = client.submit(image, audio, prompt=DEMO_PROMPT, size=DEMO_SIZE, seed=42)
            job_id = job["id"]
            out.write(
                f"submitted job {job_id} to the embedded service at {settings.api_url}: "
                f"{count(job['progress']['clips_total'], 'clip')} at {job['params']['width']}x"
                f"{job['params']['height']}\n"
            )
            if not server.process.dispatching:
                out.write(
                    f"job {job_id} is {client.get(job_id)['status']}. No renderer is configured "
                    "for embedded mode (LONGTAKE_EMBEDDED_HANDLER is unset), so nothing will "
                    "render it in this process; the demo stops here. The job stays queued in "
                    f"{settings.data_dir / 'longtake.sqlite3'}.\n"
                )
                return 0
            code = watch(client, job_id, out=out)
            if code != 0:
                out.write(f"the demo job ended {client.get(job_id)['status']}\n")
                return code
            video = demo_dir / "output.mp4"
            size = client.download(client.result(job_id)["url"], video)
            manifest = demo_dir / "output.manifest.json"
            storage = server.process.app.state.services.storage
            storage.get_file(f"jobs/{job_id}/output.manifest.json", manifest)
            longtake = own_command()
            out.write(
                f"the demo video is at {video} ({size} bytes); its provenance manifest is at "
                f"{manifest} (check the video with: {longtake} verify {video} {manifest})\n"
            )
            if longtake != "longtake" and Path(longtake).name == "longtake":
                out.write(
                    f"`longtake` is installed in the virtual environment: run it as {longtake}, "
                    f"or activate the environment first (source {Path(longtake).parent}/activate)\n"
                )
            return 0
    finally:
        server.stop()
