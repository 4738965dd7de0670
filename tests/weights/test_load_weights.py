"""Loading the parts a process needs onto their devices."""

import pytest
import torch

from pipeline.weights import Placement, load_weights, visiting
from pipeline.weights.spec_module import module_from_shapes
from pipeline.weights.specs import dit_shapes
from pipeline.weights.text_encoder import umt5_config
from pipeline.weights.vae import vae_config

from .tiny_release import TINY, merged_weight


def test_single_device_loads_every_part(pristine_release):
    dit = module_from_shapes(dit_shapes(TINY.dit), torch.bfloat16)
    loaded = load_weights(
        pristine_release.root,
        Placement.single("cpu"),
        dit,
        text_config=umt5_config(TINY.text),
        vae_config=vae_config(TINY.vae),
    )
    assert loaded.dit is dit and not any(p.is_meta for p in dit.parameters())
    name = "audio_injector.injector.1.q"
    assert torch.equal(
        dit.get_parameter(f"{name}.weight"), merged_weight(pristine_release, name, torch.bfloat16)
    )
    assert loaded.dit_report.lora_rank == TINY.lora_rank
    assert loaded.vae is not None and loaded.text_encoder is not None
    assert loaded.tokenizer is not None and loaded.audio_encoder is not None
    assert loaded.feature_extractor is not None
    assert set(loaded.seconds) == {"dit", "vae", "text", "audio"}


def test_a_rank_loads_only_its_parts(pristine_release):
    only_vae = Placement({"vae": "cpu"})
    loaded = load_weights(pristine_release.root, only_vae, vae_config=vae_config(TINY.vae))
    assert loaded.vae is not None
    assert loaded.dit is loaded.text_encoder is loaded.audio_encoder is None
    assert set(loaded.seconds) == {"vae"}


def test_dit_placement_needs_a_module(pristine_release):
    with pytest.raises(ValueError, match="pass the module"):
        load_weights(pristine_release.root, Placement({"dit": "cpu"}))


def test_offloaded_text_encoder_is_loaded_to_host_memory():
    placement = Placement.single("cuda:0", offload_text_encoder=True)
    assert placement.load_device("text") == torch.device("cpu")
    assert placement.load_device("dit") == torch.device("cuda:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_visiting_moves_a_module_to_the_gpu_and_back_even_on_error():
    module = torch.nn.Linear(2, 2)
    with pytest.raises(KeyError), visiting(module, torch.device("cuda")):
        assert module.weight.is_cuda
        raise KeyError("encode failed")
    assert module.weight.device.type == "cpu"


@pytest.mark.parametrize(
    ("world", "vae_own", "expected"),
    [
        # 5 GPUs as LiveAvatar runs them: 4 DiT ranks and one that only decodes
        (5, True, [{"dit", "text", "audio"}, {"dit"}, {"dit"}, {"dit"}, {"vae"}]),
        # 2 GPUs with the VAE overlapped on the last DiT rank
        (2, False, [{"dit", "text", "audio"}, {"dit", "vae"}]),
        (1, False, [{"dit", "vae", "text", "audio"}]),
    ],
)
def test_tpp_ranks_load_dit_everywhere_vae_once_encoders_once(world, vae_own, expected):
    plans = [Placement.tpp_rank(r, world, vae_on_own_gpu=vae_own) for r in range(world)]
    assert [p.parts for p in plans] == expected
    assert [p.devices.get("dit") for p in plans if "dit" in p.parts] == [
        torch.device("cuda", r) for r in range(world) if "dit" in plans[r].parts
    ]


def test_unknown_part_is_refused():
    with pytest.raises(ValueError, match="unknown parts"):
        Placement({"unet": "cpu"})
