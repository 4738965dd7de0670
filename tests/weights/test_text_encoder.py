"""Wan's umT5 `.pth` into UMT5EncoderModel: same tensors, same function."""

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.weights.errors import CorruptFileError, KeyMismatchError, ShapeMismatchError
from pipeline.weights.specs import UMT5_XXL, t5_specs
from pipeline.weights.text_encoder import (
    build_text_encoder,
    load_text_encoder,
    load_tokenizer,
    umt5_config,
    umt5_name,
)

from .tiny_release import TINY


def tiny_config():
    return umt5_config(TINY.text)


def test_every_tensor_lands_once_and_stays_tied(pristine_release):
    model = load_text_encoder(
        pristine_release.paths.text_encoder, "cpu", torch.bfloat16, tiny_config()
    )
    written = pristine_release.written["text"]
    state = model.state_dict()
    # Hand-checked correspondences, one per kind of tensor.
    expected = {
        "token_embedding.weight": "shared.weight",
        "blocks.1.norm1.weight": "encoder.block.1.layer.0.layer_norm.weight",
        "blocks.1.attn.q.weight": "encoder.block.1.layer.0.SelfAttention.q.weight",
        "blocks.1.attn.o.weight": "encoder.block.1.layer.0.SelfAttention.o.weight",
        "blocks.1.pos_embedding.embedding.weight": (
            "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"
        ),
        "blocks.1.norm2.weight": "encoder.block.1.layer.1.layer_norm.weight",
        "blocks.1.ffn.gate.0.weight": "encoder.block.1.layer.1.DenseReluDense.wi_0.weight",
        "blocks.1.ffn.fc1.weight": "encoder.block.1.layer.1.DenseReluDense.wi_1.weight",
        "blocks.1.ffn.fc2.weight": "encoder.block.1.layer.1.DenseReluDense.wo.weight",
        "norm.weight": "encoder.final_layer_norm.weight",
    }
    for original, ours in expected.items():
        assert torch.equal(state[ours], written[original]), original
    for original, tensor in written.items():
        assert torch.equal(state[umt5_name(original)], tensor)
    assert model.shared.weight is model.encoder.embed_tokens.weight
    assert not any(p.is_meta for p in model.parameters())


def _bucket(rel: torch.Tensor, num_buckets: int, max_dist: int = 128) -> torch.Tensor:
    # Bidirectional T5 buckets: half for keys after the query; exact up to a quarter of the
    # buckets, log-spaced beyond, saturating at max_dist.
    half = num_buckets // 2
    out = (rel > 0).long() * half
    rel = rel.abs()
    exact = half // 2
    large = (
        exact
        + (torch.log(rel.float() / exact) / math.log(max_dist / exact) * (half - exact)).long()
    )
    return out + torch.where(rel < exact, rel, large.clamp(max=half - 1))


def _rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def wan_t5_encoder(sd: dict, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Wan's T5 encoder written out from its definition (fp32)."""
    sd = {k: v.float() for k, v in sd.items()}
    arch = TINY.text
    b, length = ids.shape
    heads, head_dim = arch.num_heads, arch.dim_attn // arch.num_heads
    pos = torch.arange(length)
    buckets = _bucket(pos[None, :] - pos[:, None], arch.num_buckets)  # [Lq, Lk]
    masked = torch.zeros(b, 1, 1, length).masked_fill(mask[:, None, None, :] == 0, -1e30)
    x = sd["token_embedding.weight"][ids]
    for i in range(arch.num_layers):
        p = f"blocks.{i}."
        bias = sd[p + "pos_embedding.embedding.weight"][buckets].permute(2, 0, 1)[None]
        h = _rms(x, sd[p + "norm1.weight"])
        q, k, v = (
            (h @ sd[p + f"attn.{n}.weight"].T).view(b, length, heads, head_dim) for n in "qkv"
        )
        scores = torch.einsum("binc,bjnc->bnij", q, k) + bias + masked  # T5: no 1/sqrt(d)
        out = torch.einsum("bnij,bjnc->binc", scores.softmax(-1), v).reshape(b, length, -1)
        x = x + out @ sd[p + "attn.o.weight"].T
        h = _rms(x, sd[p + "norm2.weight"])
        gate = F.gelu(h @ sd[p + "ffn.gate.0.weight"].T, approximate="tanh")
        x = x + ((h @ sd[p + "ffn.fc1.weight"].T) * gate) @ sd[p + "ffn.fc2.weight"].T
    return _rms(x, sd["norm.weight"])


def test_loaded_encoder_computes_what_wan_computes(pristine_release):
    model = load_text_encoder(
        pristine_release.paths.text_encoder, "cpu", torch.float32, tiny_config()
    )
    ids = torch.tensor([[5, 9, 13, 2, 1, 0, 0], [7, 7, 3, 11, 30, 1, 0]])
    mask = (ids != 0).long()
    ours = model(input_ids=ids, attention_mask=mask).last_hidden_state
    theirs = wan_t5_encoder(pristine_release.written["text"], ids, mask)
    valid = mask.bool()
    torch.testing.assert_close(ours[valid], theirs[valid], rtol=1e-4, atol=1e-5)


def test_published_size_maps_onto_umt5_xxl_exactly():
    model = build_text_encoder(umt5_config(UMT5_XXL))  # meta: no memory
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapped = {umt5_name(k): s.shape for k, s in t5_specs(UMT5_XXL).items()}
    assert set(ours) - set(mapped) == {"encoder.embed_tokens.weight"}  # tied to shared.weight
    assert all(ours[k] == shape for k, shape in mapped.items())


def test_truncated_checkpoint(release):
    path = release.paths.text_encoder
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match=r"models_t5_umt5-xxl-enc-bf16.pth: .*download it"):
        load_text_encoder(path, "cpu", config=tiny_config())


def test_missing_and_wrong_shaped_tensors_are_named_in_the_files_own_terms(release):
    path = release.paths.text_encoder
    state = torch.load(path)
    del state["blocks.1.ffn.fc1.weight"]
    torch.save(state, path)
    with pytest.raises(KeyMismatchError, match=r"1 missing: blocks.1.ffn.fc1.weight"):
        load_text_encoder(path, "cpu", config=tiny_config())
    state["blocks.1.ffn.fc1.weight"] = torch.zeros(24, 17)
    torch.save(state, path)
    with pytest.raises(ShapeMismatchError, match=r"blocks.1.ffn.fc1.weight \[24, 17\]"):
        load_text_encoder(path, "cpu", config=tiny_config())


def test_tokenizer_loads_offline_from_the_release_folder(pristine_release):
    tokenizer = load_tokenizer(pristine_release.paths.tokenizer)
    ids = tokenizer("a talking avatar").input_ids
    assert ids[-1] == tokenizer.eos_token_id == 1
    assert len(ids) > 1
