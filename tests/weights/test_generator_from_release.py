"""A generator built from released-format files renders: the loaders feed the real pipeline."""

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.components import load_released
from pipeline.generator import Generator
from pipeline.inputs import Waveform
from pipeline.model import WanS2VTransformer
from pipeline.presets import LIVEAVATAR_14B, TINY
from pipeline.request import RenderRequest
from pipeline.weights import ReleaseSpec, verify
from pipeline.weights.module_tensors import building
from pipeline.weights.preset_spec import release_spec
from pipeline.weights.specs import dit_shapes

from .tiny_release import merged_weight, write_release


def test_the_liveavatar_preset_is_the_published_release():
    assert release_spec(LIVEAVATAR_14B) == ReleaseSpec.liveavatar_14b()


@pytest.mark.parametrize("preset", [LIVEAVATAR_14B, TINY], ids=lambda p: p.name)
def test_pipeline_dit_has_the_release_tensor_table(preset):
    with building("meta", torch.bfloat16):
        dit = WanS2VTransformer(preset.dit)
    ours = {name: tuple(t.shape) for name, t in dit.state_dict().items()}
    assert ours == dit_shapes(release_spec(preset).dit)


def portrait_png() -> bytes:
    y, x = np.mgrid[0:96, 0:80]
    rgb = np.stack([x * 3, y * 2, (x + y) % 256], axis=-1).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.slow
def test_generator_renders_from_a_release_in_the_published_formats(tmp_path):
    spec = dataclasses.replace(release_spec(TINY), lora_rank=4)
    release = write_release(tmp_path / "checkpoints", spec, audio_config=TINY.audio_encoder)
    assert verify(release.root, spec).ok

    components = load_released(TINY, release.root, "cpu", torch.float32)
    dit = components.dit
    for module in ("blocks.3.cross_attn.o", "audio_injector.injector.2.k", "blocks.0.ffn.0"):
        expected = merged_weight(release, module, torch.float32)
        assert torch.equal(dit.get_parameter(f"{module}.weight"), expected)
    assert torch.equal(
        dit.get_parameter("frame_packer.proj_4x.weight"),
        release.written["dit"]["frame_packer.proj_4x.weight"].float(),
    )

    t = np.arange(32000) / 16000
    speech = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
    request = RenderRequest(
        image=portrait_png(),
        audio=Waveform(speech.astype(np.float32)),
        prompt="a talking avatar",
        size="64*64",
        infer_frames=24,
        num_clips=1,
        seed=3,
    )
    clips = list(Generator(TINY, components).open(request))
    assert len(clips) == 1
    assert clips[0].frames.dtype == np.uint8 and clips[0].frames.shape[0] == 24
