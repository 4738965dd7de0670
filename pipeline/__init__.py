"""Generation only: the LiveAvatar streaming generator. Knows nothing of databases, queues or S3.

from pipeline import Generator, RenderRequest
gen = Generator.from_preset("tiny", random_weights=True)
stream = gen.open(RenderRequest(image=..., audio=..., prompt="...", size="64*64"))
for clip in stream:            # Clip(index, frames uint8 [T, H, W, 3], audio_start_s, audio_end_s)
    ...
sd = stream.state_dict()       # between clips; pipeline.state.save_state / load_state

gen.presenter_cache = PresenterCache(device_bytes=8 << 30, host_bytes=16 << 30)
gen.open(request, namespace="tenant-a")   # a presenter seen before opens from the cache

On several GPUs, pipeline.tpp.Engine serves the same stream API (see pipeline/tpp/engine.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.lazy import exports

if TYPE_CHECKING:
    from pipeline.generator import Generator
    from pipeline.inputs import Waveform
    from pipeline.presenters import PresenterCache
    from pipeline.request import Clip, RenderRequest
    from pipeline.stream import Stream

__all__ = ["Clip", "Generator", "PresenterCache", "RenderRequest", "Stream", "Waveform"]

# Loaded on first use, so that `pipeline.params` (request validation in the API) does not
# import torch and the model code.
_EXPORTS = {
    "Clip": "pipeline.request",
    "Generator": "pipeline.generator",
    "PresenterCache": "pipeline.presenters",
    "RenderRequest": "pipeline.request",
    "Stream": "pipeline.stream",
    "Waveform": "pipeline.inputs",
}


__getattr__ = exports(__name__, _EXPORTS)
