"""Loading onto a GPU: the pinned double-buffered path delivers every byte, LoRA merged on device.

Skipped on machines without CUDA.
"""

import pytest
import torch

from pipeline.weights import Placement, load_weights
from pipeline.weights.spec_module import module_from_shapes
from pipeline.weights.specs import LORA_ALPHA, dit_shapes, lora_target_modules
from pipeline.weights.text_encoder import umt5_config
from pipeline.weights.vae import vae_config

from .tiny_release import TINY

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def merged_on(device, release, module, dtype):
    # The same operations on the same device as the loader: bit-identical result expected.
    w = release.written["dit"][f"{module}.weight"].to(device).float()
    a = release.written["lora"][f"base_model.model.{module}.lora_A.default.weight"].to(device)
    b = release.written["lora"][f"base_model.model.{module}.lora_B.default.weight"].to(device)
    delta = b.float() @ a.float()
    delta.mul_(LORA_ALPHA / release.spec.lora_rank)
    w.add_(delta)
    return w.to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_every_tensor_reaches_the_gpu_intact(pristine_release, dtype):
    dit = module_from_shapes(dit_shapes(TINY.dit), dtype)
    loaded = load_weights(
        pristine_release.root,
        Placement.single("cuda", offload_text_encoder=True),
        dit,
        text_config=umt5_config(TINY.text),
        vae_config=vae_config(TINY.vae),
    )
    targets = lora_target_modules(dit_shapes(TINY.dit))
    for name, tensor in pristine_release.written["dit"].items():
        got = dit.get_parameter(name)
        assert got.is_cuda and got.dtype == dtype
        module = name.removesuffix(".weight")
        if name.endswith(".weight") and module in targets:
            assert torch.equal(got, merged_on(got.device, pristine_release, module, dtype)), name
        else:
            assert torch.equal(got.cpu(), tensor.to(dtype)), name
    assert next(loaded.text_encoder.parameters()).device.type == "cpu"  # offloaded
    assert next(loaded.vae.parameters()).is_cuda
    assert next(loaded.audio_encoder.parameters()).is_cuda
    vae_state = loaded.vae.state_dict()
    assert torch.equal(
        vae_state["decoder.up_blocks.1.resnets.0.conv_shortcut.weight"].cpu(),
        pristine_release.written["vae"]["decoder.upsamples.4.shortcut.weight"],
    )


def test_materialised_gpu_module_is_filled_in_place(pristine_release):
    dit = module_from_shapes(dit_shapes(TINY.dit), torch.bfloat16, "cuda")
    before = dict(dit.named_parameters())
    load_weights(pristine_release.root, Placement({"dit": "cuda"}), dit, merge_lora=False)
    for name, tensor in pristine_release.written["dit"].items():
        assert dit.get_parameter(name) is before[name]
        assert torch.equal(before[name].cpu(), tensor)
