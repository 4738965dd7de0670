"""FP8 attention's arithmetic (pipeline/model/fp8_attention.py): power-of-two per-tensor scales
that never saturate, and the emulated FP8 attention against exact attention; on a Hopper GPU
with the cuDNN frontend, the fused kernel against both."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.model import fp8_attention as fa


def exact(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """float64 softmax attention, [B, L, H, D] in and out."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return (s.softmax(dim=-1) @ v).transpose(1, 2)


def qkv(lq: int, lk: int, heads: int = 4, dim: int = 64, seed: int = 0) -> list[torch.Tensor]:
    """Keys and queries of unit RMS with a few large entries (as after norm_q/norm_k and RoPE),
    values of linear-layer scale."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, lq, heads, dim, generator=g)
    k = torch.randn(1, lk, heads, dim, generator=g)
    k[0, :: max(lk // 7, 1), :, 0] *= 8  # outliers set the scale
    v = torch.randn(1, lk, heads, dim, generator=g) * 0.5
    return [q, k, v]


@pytest.mark.parametrize("amax", [448.0, 1.0, 3.0, 1e-3, 5e4])
def test_multipliers_are_powers_of_two_that_bring_the_largest_value_in_range(amax):
    m = fa.pow2_multiplier(torch.tensor(amax))
    assert m.dtype == torch.float32
    assert torch.log2(m) == torch.round(torch.log2(m))  # exact to apply and to undo
    assert amax * m <= fa.E4M3_MAX < 2 * amax * m  # in range, and no power of two more fits


def test_a_zero_tensor_quantizes_to_zeros():
    x8, m = fa.quantize_per_tensor(torch.zeros(3, 5))
    assert torch.isfinite(m) and m > 0
    assert torch.equal(x8.float(), torch.zeros(3, 5))


def test_per_tensor_quantization_never_saturates_and_keeps_three_mantissa_bits():
    x = torch.randn(4096) * torch.logspace(-2, 2, 4096)
    x8, m = fa.quantize_per_tensor(x)
    back = x8.float() / m
    assert x8.float().abs().max() <= fa.E4M3_MAX
    normal = x.abs() * m >= 2.0**-6  # e4m3's normal range: relative error ≤ 2^-4
    assert ((back - x).abs()[normal] <= x.abs()[normal] * 2**-4).all()


def test_emulated_fp8_attention_is_close_to_exact_attention():
    q, k, v = qkv(lq=96, lk=400)
    want = exact(q, k, v)
    got = fa.emulate(q, k, v).double()
    rel = (got - want).norm() / want.norm()
    # three mantissa bits in Q, K, V, P and O; on random keys and values (attention spread
    # over all keys, the output a small average of many) 6.8 %, the worst case for it
    assert rel < 0.1, rel
    # and it is not exact attention: the e4m3 rounding is there
    assert rel > 1e-3
    # bf16 inputs give the same result as their float32 values
    q16, k16, v16 = (t.to(torch.bfloat16) for t in (q, k, v))
    assert torch.equal(fa.emulate(q16, k16, v16), fa.emulate(q16.float(), k16.float(), v16.float()))


def test_the_output_multiplier_cannot_saturate():
    # O's rows are convex combinations of V's rows: |O| <= max |V|, so m_o = m_v always fits
    q, k, v = qkv(lq=32, lk=64)
    v[0, 5] = 1e3  # one huge value row; attention concentrated on it
    k[0, 5] = q[0, 0] * 50
    out = fa.emulate(q, k, v)
    v8, mv = fa.quantize_per_tensor(v)
    assert torch.isfinite(out).all()
    assert out.abs().max() <= (v8.float() / mv).abs().max()  # no more than V as quantised


needs_hopper = pytest.mark.skipif(
    not (torch.cuda.is_available() and fa.available(torch.device("cuda"))),
    reason="needs a Hopper GPU and the cuDNN frontend",
)


@needs_hopper
def test_cudnn_fp8_attention_matches_the_emulation_and_exact_attention():
    device = torch.device("cuda")
    q, k, v = (t.to(device, torch.bfloat16) for t in qkv(lq=3375 // 25, lk=1400, heads=8, dim=128))
    attend = fa.CudnnFp8Attention(device)
    got = attend(q, k, v).double().cpu()
    want = exact(q.cpu(), k.cpu(), v.cpu())
    emulated = fa.emulate(q.cpu(), k.cpu(), v.cpu()).double()
    assert (got - want).norm() / want.norm() < 0.1
    # the kernel's softmax is online (block by block) and rounds its numerators against a
    # running maximum: close to the emulation, not equal (3.5 % on an H200, 2026-12-04)
    assert (got - emulated).norm() / want.norm() < 0.06


def test_emulation_rounds_only_the_tensors_named():
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, n, 2, 16, generator=g) for n in (8, 24, 24))
    exact = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    ).transpose(1, 2)
    assert torch.allclose(fa.emulate(q, k, v, rounded=frozenset()), exact, atol=1e-5)
    assert torch.equal(fa.emulate(q, k, v, rounded=fa.ROUNDINGS), fa.emulate(q, k, v))
    only_v = fa.emulate(q, k, v, rounded=frozenset({"v"}))
    v8, mv = fa.quantize_per_tensor(v)
    with_v8 = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), (v8.float() / mv).transpose(1, 2)
    ).transpose(1, 2)
    assert torch.allclose(only_v, with_v8, atol=1e-5)
    with pytest.raises(ValueError, match="unknown tensors"):
        fa.emulate(q, k, v, rounded=frozenset({"s"}))


def test_the_fp8_backend_is_the_emulation_on_the_cpu():
    """`attention.set_backend("fp8")` routes the DiT's attention through FP8 attention (on the
    CPU its emulation), in q's dtype; "auto" goes back to exact attention."""
    from pipeline.model import attention

    q, k, v = (t.to(torch.bfloat16) for t in qkv(lq=32, lk=100))
    attention.set_backend("fp8")
    try:
        got = attention.attention(q, k, v)
    finally:
        attention.set_backend("auto")
    assert got.dtype == torch.bfloat16 and got.shape == q.shape
    assert torch.equal(got, fa.emulate(q, k, v).to(torch.bfloat16))
    exact_bf16 = attention.attention(q, k, v)
    assert not torch.equal(got, exact_bf16)
    assert (got.double() - exact(q, k, v)).norm() / exact(q, k, v).norm() < 0.1
