"""Attention with int8 logits (pipeline/model/int8_attention.py): per-token, per-head int8
quantisation, key smoothing that softmax cannot see, and the emulation against exact
attention; where Triton is installed, the kernel (its interpreter on the CPU) against the
emulation."""

from __future__ import annotations

import math
import os

import pytest
import torch

from pipeline.model import int8_attention as ia


def exact(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """float64 softmax attention, [B, L, H, D] in and out."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return (s.softmax(dim=-1) @ v).transpose(1, 2)


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm())


def qkv(lq: int = 48, lk: int = 160, heads: int = 2, dim: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, lq, heads, dim, generator=g).bfloat16()
    k = torch.randn(1, lk, heads, dim, generator=g).bfloat16()
    v = (torch.randn(1, lk, heads, dim, generator=g) * 0.5).bfloat16()
    return q, k, v


def test_each_token_and_head_is_quantised_on_its_own_scale():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 3, 16, generator=g)
    x[0, 1, 2] *= 1000  # one huge row must not coarsen any other
    x[1, 4, 0] = 0.0
    q, scale = ia.quantize_tokens(x)
    assert q.dtype == torch.int8 and scale.shape == (2, 5, 3)
    # each row's largest magnitude lands on ±127, and no value is off by more than half a step
    nonzero = scale != 1.0
    assert (q.abs().amax(-1)[nonzero] == 127).all()
    assert ((q.float() * scale.unsqueeze(-1) - x).abs() <= scale.unsqueeze(-1) / 2 + 1e-6).all()
    # the huge row's neighbours keep their own fine steps
    assert scale[0, 1, 2] > 500 * scale[0, 1, 1]
    # an all-zero row: scale 1, zeros
    assert scale[1, 4, 0] == 1.0 and (q[1, 4, 0] == 0).all()


def test_emulation_is_close_to_exact_attention():
    q, k, v = qkv()
    err = rel(ia.emulate(q, k, v).float(), exact(q, k, v))
    assert err < 0.03  # int8 logits: ~1 % here; cuDNN's e4m3 attention is ~8 % on such inputs


def test_keys_sharing_a_large_offset_cost_nothing_thanks_to_smoothing():
    """A component every key shares (a channel's bias) changes no softmax; smoothed away, it
    does not coarsen the keys' int8 steps either."""
    q, k, v = qkv()
    offset = torch.zeros(k.shape[-1])
    offset[::8] = 40.0  # forty times the keys' own scale in every eighth channel
    shifted = (k.float() + offset).bfloat16()
    want = exact(q, shifted, v)
    plain = rel(ia.emulate(q, k, v).float(), exact(q, k, v))
    assert rel(ia.emulate(q, shifted, v).float(), want) < 1.5 * plain + 1e-3
    # without smoothing the same offset would cost far more: the proof the test can fail
    q8, sq = ia.quantize_tokens(q)
    k8, sk = ia.quantize_tokens(shifted)
    s = torch.einsum(
        "blhd,bshd->bhls", q8.float() * sq.unsqueeze(-1), k8.float() * sk.unsqueeze(-1)
    )
    o = torch.einsum("bhls,bshd->blhd", (s / math.sqrt(q.shape[-1])).softmax(-1), v.float())
    assert rel(o, want) > 5 * plain


def test_the_scales_hold_the_softmax_temperature_in_base_two():
    q, k, _ = qkv()
    q8, sq, k8, sk = ia.quantize(q, k)
    sq_plain = ia.quantize_tokens(q)[1]
    torch.testing.assert_close(sq, sq_plain * math.log2(math.e) / math.sqrt(q.shape[-1]))
    assert torch.equal(k8, ia.quantize_tokens(ia.smooth_keys(k))[0])


def test_without_a_gpu_attention_is_the_emulation():
    q, k, v = qkv()
    assert torch.equal(ia.attention(q, k, v), ia.emulate(q, k, v))


def _triton_interpreter() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return os.environ.get("TRITON_INTERPRET") == "1"


@pytest.mark.skipif(not _triton_interpreter(), reason="needs Triton with TRITON_INTERPRET=1")
def test_kernel_matches_the_emulation():
    """The kernel's online softmax over key tiles (a last tile cut short) against one softmax
    per row. The interpreter has no bf16, so values are float32 here (the emulation's bf16
    numerators differ by ~0.1 %)."""
    q, k, v = qkv(lq=70, lk=150, dim=32)
    out = ia.attend_quantized(*ia.quantize(q, k), v.float(), block_m=32, block_n=32)
    assert rel(out, ia.emulate(q, k, v).float()) < 0.005
