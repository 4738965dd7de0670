"""Test media made on the fly: images with Pillow, audio with numpy and PyAV."""

from __future__ import annotations

import io

import av
import numpy as np
from PIL import Image

from ops.demo import portrait_png, synthesize_speech, wav_bytes


def png(width: int = 256, height: int = 384) -> bytes:
    return portrait_png(width, height)


def image_bytes(fmt: str, width: int = 256, height: int = 384) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 90, 60)).save(buffer, format=fmt)
    return buffer.getvalue()


def wav(seconds: float = 2.0, sample_rate: int = 16_000) -> bytes:
    if seconds == 0:
        return wav_bytes(np.zeros(0), sample_rate)
    return wav_bytes(synthesize_speech(seconds), sample_rate)


def encoded_audio(fmt: str, seconds: float = 2.0) -> bytes:
    """Speech encoded as mp3, m4a (AAC) or flac."""
    codec, container_format = {
        "mp3": ("mp3", "mp3"),
        "m4a": ("aac", "ipod"),
        "flac": ("flac", "flac"),
    }[fmt]
    rate = 44_100 if fmt == "mp3" else 16_000
    samples = synthesize_speech(seconds)
    if rate != 16_000:
        samples = np.interp(
            np.arange(int(seconds * rate)) / rate, np.arange(samples.size) / 16_000, samples
        )
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame_size = 1152 if fmt == "mp3" else 1024
        pcm = (samples * 32767).astype(np.int16)
        for start in range(0, pcm.size, frame_size):
            frame = av.AudioFrame.from_ndarray(
                pcm[None, start : start + frame_size], format="s16", layout="mono"
            )
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def wav_bytes_silence(seconds: float, sample_rate: int = 16_000) -> bytes:
    return wav_bytes(np.zeros(int(seconds * sample_rate)), sample_rate)
