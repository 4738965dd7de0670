"""Wan's `Wan2.1_VAE.pth` into diffusers' AutoencoderKLWan, with diffusers' key mapping."""

import pytest
import torch

from pipeline.weights.errors import CorruptFileError, KeyMismatchError
from pipeline.weights.specs import WAN21_VAE, vae_specs
from pipeline.weights.vae import build_vae, diffusers_vae_name, load_vae, vae_config

from .tiny_release import TINY


def test_published_vae_maps_one_to_one_onto_autoencoder_kl_wan():
    ours = {k: tuple(v.shape) for k, v in build_vae().state_dict().items()}  # meta
    mapped = {diffusers_vae_name(k): s.shape for k, s in vae_specs(WAN21_VAE).items()}
    assert len(mapped) == len(vae_specs(WAN21_VAE))  # no two tensors share a target
    assert mapped == ours


# The places where Wan's flat Sequentials and diffusers' blocks part ways.
CORRESPONDENCES = {
    "conv1.weight": "quant_conv.weight",
    "conv2.bias": "post_quant_conv.bias",
    "encoder.conv1.weight": "encoder.conv_in.weight",
    "encoder.downsamples.3.shortcut.weight": "encoder.down_blocks.3.conv_shortcut.weight",
    "encoder.downsamples.5.time_conv.bias": "encoder.down_blocks.5.time_conv.bias",
    "encoder.downsamples.9.residual.3.gamma": "encoder.down_blocks.9.norm2.gamma",
    "encoder.middle.1.to_qkv.weight": "encoder.mid_block.attentions.0.to_qkv.weight",
    "encoder.head.2.weight": "encoder.conv_out.weight",
    "decoder.middle.2.residual.3.gamma": "decoder.mid_block.resnets.1.norm2.gamma",
    "decoder.upsamples.3.time_conv.weight": "decoder.up_blocks.0.upsamplers.0.time_conv.weight",
    "decoder.upsamples.4.shortcut.weight": "decoder.up_blocks.1.resnets.0.conv_shortcut.weight",
    "decoder.upsamples.6.residual.2.bias": "decoder.up_blocks.1.resnets.2.conv1.bias",
    "decoder.upsamples.11.resample.1.weight": "decoder.up_blocks.2.upsamplers.0.resample.1.weight",
    "decoder.upsamples.14.residual.6.bias": "decoder.up_blocks.3.resnets.2.conv2.bias",
    "decoder.head.0.gamma": "decoder.norm_out.gamma",
}


def test_every_tensor_lands_where_diffusers_conversion_puts_it(pristine_release):
    vae = load_vae(pristine_release.paths.vae, "cpu", config=vae_config(TINY.vae))
    state = vae.state_dict()
    written = pristine_release.written["vae"]
    for original, ours in CORRESPONDENCES.items():
        assert torch.equal(state[ours], written[original]), original
    for original, tensor in written.items():
        assert torch.equal(state[diffusers_vae_name(original)], tensor), original
    assert len(state) == len(written)


def test_loaded_vae_decodes(pristine_release):
    vae = load_vae(pristine_release.paths.vae, "cpu", config=vae_config(TINY.vae))
    latents = torch.randn(1, TINY.vae.z_dim, 2, 4, 4)
    with torch.no_grad():
        video = vae.decode(latents).sample
    assert video.shape == (1, 3, 5, 32, 32)  # (2 - 1) * 4 + 1 frames, 8x spatial
    assert torch.isfinite(video).all()


def test_truncated_vae(release):
    path = release.paths.vae
    path.write_bytes(path.read_bytes()[:-4096])
    with pytest.raises(CorruptFileError, match=r"Wan2.1_VAE.pth: .*download it again"):
        load_vae(path, "cpu", config=vae_config(TINY.vae))


def test_vae_of_another_size_is_refused_by_name(pristine_release):
    with pytest.raises(
        KeyMismatchError, match=r"104 missing: decoder.upsamples.11.residual.0.gamma"
    ):
        load_vae(
            pristine_release.paths.vae, "cpu", config=vae_config(TINY.vae) | {"num_res_blocks": 3}
        )
