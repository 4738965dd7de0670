"""Generation only: the LiveAvatar streaming generator. Knows nothing of databases, queues or S3.

from pipeline import Generator, RenderRequest
gen = Generator.from_preset("tiny", random_weights=True)
stream = gen.open(RenderRequest(image=..., audio=..., prompt="...", size="64*64"))
for clip in stream:            # Clip(index, frames uint8 [T, H, W, 3], audio_start_s, audio_end_s)
    ...
sd = stream.state_dict()       # between clips; pipeline.state.save_state / load_state
"""

from pipeline.generator import Generator
from pipeline.inputs import Waveform
from pipeline.request import Clip, RenderRequest
from pipeline.stream import Stream

__all__ = ["Clip", "Generator", "RenderRequest", "Stream", "Waveform"]
