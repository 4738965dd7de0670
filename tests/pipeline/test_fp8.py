"""The arithmetic of the fp8 precision (pipeline/model/fp8.py): per-output-channel weight
scales, per-token activation scales, saturation at e4m3's largest value, zero rows, and the
scaled product, each against a float reference."""

from __future__ import annotations

import copy

import pytest
import torch

from pipeline.model import fp8, fused
from pipeline.model.layers import Linear, TransformerBlock

# every finite e4m3 value, to round a float64 reference to the nearest one
_E4M3 = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).double()
_E4M3 = torch.unique(_E4M3[torch.isfinite(_E4M3)])


def nearest_e4m3(x: torch.Tensor) -> torch.Tensor:
    """float64 x rounded to the nearest e4m3 value (random data has no exact ties)."""
    i = torch.searchsorted(_E4M3, x.clamp(-448, 448).contiguous())
    lo, hi = _E4M3[(i - 1).clamp(0, len(_E4M3) - 1)], _E4M3[i.clamp(0, len(_E4M3) - 1)]
    return torch.where((x - lo).abs() <= (hi - x).abs(), lo, hi)


def rows_of_many_scales(rows: int, cols: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    magnitudes = 10.0 ** torch.linspace(-4, 4, rows).unsqueeze(1)
    return torch.randn(rows, cols, generator=g, dtype=torch.float64).float() * magnitudes


def test_weights_get_one_scale_per_output_channel():
    w = rows_of_many_scales(48, 64, seed=0)  # [out, in], rows 1e-4 .. 1e4 in size
    q = fp8.Fp8Weight.quantize(w)
    assert q.data.dtype == torch.float8_e4m3fn and q.data.shape == (48, 64)
    assert q.scale.shape == (1, 48) and q.scale.dtype == torch.float32
    amax = w.abs().amax(dim=1)
    assert torch.equal(q.scale[0], amax / 448)
    # each row's largest value lands on +-448, every value on the nearest e4m3 step
    assert torch.equal(q.data.float().abs().amax(dim=1), torch.full((48,), 448.0))
    want = nearest_e4m3((w / q.scale[0].unsqueeze(1)).double())
    assert torch.equal(q.data.double(), want)
    back = fp8.dequantize(q.data, q.scale.reshape(-1, 1))
    assert ((back - w).abs() <= w.abs() * 2**-4 + q.scale.reshape(-1, 1) * 2**-9).all()


def test_activations_get_one_scale_per_token():
    x = rows_of_many_scales(30, 64, seed=1).reshape(1, 30, 64)  # [1, tokens, C]
    data, scale = fp8.quantize_rows(x)
    assert data.shape == (1, 30, 64) and scale.shape == (1, 30, 1)
    assert torch.equal(scale, x.abs().amax(dim=-1, keepdim=True) / 448)
    assert torch.equal(data.double(), nearest_e4m3((x / scale).double()))
    # half-precision inputs are quantised from their float32 values
    data16, scale16 = fp8.quantize_rows(x.to(torch.bfloat16))
    x16 = x.to(torch.bfloat16).float()
    assert torch.equal(scale16, x16.abs().amax(dim=-1, keepdim=True) / 448)
    assert torch.equal(data16.float(), fp8.to_e4m3(x16, scale16).float())


def test_values_past_the_range_saturate_at_448():
    # (some devices' casts would give NaN past the range: the clamp comes first everywhere)
    x = torch.tensor([[1000.0, -1000.0, 448.0, 3.0, -0.0]])
    q = fp8.to_e4m3(x, torch.tensor([[1.0]]))
    assert q.float().tolist() == [[448.0, -448.0, 448.0, 3.0, 0.0]]
    # a scale rounded a hair too small must not turn the largest value into NaN
    q = fp8.to_e4m3(torch.tensor([[448.0 * (1 + 1e-7)]]), torch.tensor([[1.0]]))
    assert q.float().item() == 448.0


def test_zero_rows_quantise_to_zeros_and_leave_the_bias():
    x = torch.randn(4, 32)
    x[2] = 0.0
    data, scale = fp8.quantize_rows(x)
    assert torch.isfinite(scale).all() and (scale > 0).all()
    assert (data[2].float() == 0).all() and (fp8.dequantize(data, scale)[2] == 0).all()
    w = torch.randn(16, 32)
    w[5] = 0.0
    weight = fp8.Fp8Weight.quantize(w)
    bias = torch.randn(16)
    y = fp8.linear(fp8.Fp8Rows(data, scale), weight, bias, torch.float32)
    assert torch.equal(y[2], bias)
    assert torch.equal(y[:, 5], bias[5].expand(4))


@pytest.mark.parametrize("kernel", ["native", "emulated"])
def test_the_product_is_that_of_the_dequantised_operands(kernel, monkeypatch):
    if kernel == "emulated":
        monkeypatch.setitem(fp8._KERNEL, ("cpu", torch.float32), "emulated")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 45, 64, generator=g)  # leading dimensions are kept
    w = torch.randn(48, 64, generator=g) / 8
    b = torch.randn(48, generator=g)
    rows = fp8.Fp8Rows(*fp8.quantize_rows(x))
    weight = fp8.Fp8Weight.quantize(w)
    y = fp8.linear(rows, weight, b, torch.float32)
    assert y.shape == (2, 45, 48)
    ref = (
        fp8.dequantize(rows.data, rows.scale).double()
        @ fp8.dequantize(weight.data, weight.scale.reshape(-1, 1)).double().T
        + b.double()
    )
    assert torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-5)
    # and the quantisation costs a few per cent of the unquantised product
    exact = x.double() @ w.double().T + b.double()
    err = ((y.double() - exact).norm() / exact.norm()).item()
    assert 1e-3 < err < 0.06


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                          reason="needs a GPU"))],
)  # fmt: skip
def test_a_long_product_keeps_every_term_of_its_sum(device):
    # K = the FFN's 13 824 equal terms. Hopper's fast FP8 accumulation keeps too few bits to
    # add a small term to a large sum (FP8 attention lost a quarter of its sums over 16 278
    # keys that way); fp8.linear leaves _scaled_mm's use_fast_accum off
    k = 13824
    x = torch.full((16, k), 0.875, device=device)  # scales 0.875 / 448 = 2^-9: exact
    w = torch.full((16, k), 0.875, device=device)
    rows = fp8.Fp8Rows(*fp8.quantize_rows(x))
    y = fp8.linear(rows, fp8.Fp8Weight.quantize(w), None, torch.float32)
    want = k * 0.875**2
    assert ((y - want).abs() / want).max().item() < 1e-3


def test_the_fused_steps_end_in_the_same_quantisation():
    g = torch.Generator().manual_seed(3)
    h = torch.randn(1, 20, 64, generator=g)
    shift, scale = torch.randn(64, generator=g), torch.randn(64, generator=g)
    got = fused.modulated_norm_fp8(h, shift, scale, 1e-6)
    norm = torch.nn.functional.layer_norm(h, (64,), eps=1e-6) * (1 + scale) + shift
    want = fp8.quantize_rows(norm)
    assert torch.equal(got[0].float(), want[0].float()) and torch.equal(got[1], want[1])
    u = torch.randn(1, 20, 128, generator=g).to(torch.bfloat16)
    got = fused.gelu_fp8(u)
    want = fp8.quantize_rows(torch.nn.functional.gelu(u.float(), approximate="tanh"))
    assert torch.equal(got[0].float(), want[0].float()) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("compiled", [False, True])
def test_a_residual_and_the_norm_after_it_in_one_step_equal_the_two_steps(compiled):
    """The block's residual sums merged with the norms after them: the same values as the sum
    followed by the norm, in the weights' dtype and in FP8 rows (eager, and compiled with
    dynamo's eager backend: the same graphs)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(5)
    h = torch.randn(1, 20, 64, generator=g)
    y = torch.randn(1, 20, 64, generator=g).to(torch.bfloat16)
    gate, shift, scale, w, b = (torch.randn(64, generator=g) for _ in range(5))
    summed, gated = h + y.float(), h + y.float() * gate
    affine = F.layer_norm(gated, (64,), w, b, 1e-6)
    modulated = F.layer_norm(summed, (64,), eps=1e-6) * (1 + scale) + shift
    if compiled:
        fused.set_compile(True, devices=("cpu",), backend="eager")
    try:
        got = fused.gated_residual_affine_norm(h, y, gate, w, b, 1e-6, torch.bfloat16)
        assert torch.equal(got[0], gated) and torch.equal(got[1], affine.to(torch.bfloat16))
        got = fused.residual_modulated_norm(h, y, shift, scale, 1e-6, torch.bfloat16)
        assert torch.equal(got[0], summed) and torch.equal(got[1], modulated.to(torch.bfloat16))
        for got, (s, n) in (
            (fused.gated_residual_affine_norm_fp8(h, y, gate, w, b, 1e-6), (gated, affine)),
            (fused.residual_modulated_norm_fp8(h, y, shift, scale, 1e-6), (summed, modulated)),
        ):
            q, scales = fp8.quantize_rows(n)
            assert torch.equal(got[0], s)
            assert torch.equal(got[1].float(), q.float()) and torch.equal(got[2], scales)
    finally:
        fused.set_compile(True)


def test_a_quantised_linear_keeps_its_names_and_drops_its_float_weight():
    lin = Linear(64, 32)
    names = set(lin.state_dict())
    assert names == {"weight", "bias"}
    x = torch.randn(3, 64)
    before = lin(x)
    lin.to_fp8()
    assert lin.weight is None and lin.weight_fp8 is not None and lin.weight_scale is not None
    assert lin.weight_fp8.dtype == torch.float8_e4m3fn and lin.weight_scale.shape == (1, 32)
    after = lin(x)  # a plain tensor is quantised per token on the way in
    assert ((after - before).norm() / before.norm()).item() < 0.06
    with pytest.raises(TypeError, match="not in FP8"):
        Linear(64, 32)(fp8.Fp8Rows(*fp8.quantize_rows(x)))


class _NoCache:
    """Self-attention over the block's own tokens only, unrotated (cos 1, sin 0)."""

    def __init__(self, tokens: int, head_dim: int):
        half = torch.ones(tokens, 1, head_dim // 2)
        self.freqs = torch.stack([half, torch.zeros_like(half)], dim=-1)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        return k, v


def test_a_block_in_fp8_stays_close_to_the_block_in_float():
    torch.manual_seed(4)
    block = TransformerBlock(64, 128, num_heads=4).eval()
    for name, p in block.named_parameters():
        if name.endswith("bias"):
            torch.nn.init.normal_(p, std=0.02)
    x = torch.randn(1, 10, 64)
    time_mod = torch.randn(6, 64) * 0.1
    text = (torch.randn(1, 7, 4, 16), torch.randn(1, 7, 4, 16))
    with torch.no_grad():
        want = block(x, time_mod, _NoCache(10, 16), text)
        block.to_fp8()
        got = block(x, time_mod, _NoCache(10, 16), text)
    assert block.fp8
    err = ((got - want).norm() / want.norm()).item()
    assert 0 < err < 0.02  # the residual stream carries most of the output


def test_self_attention_in_fp8_makes_q_k_and_v_in_one_product_with_the_same_values():
    """One product of the stacked weights (each output channel on its own scale) gives the
    values of the three separate FP8 products; the layers' own copies are freed."""
    torch.manual_seed(5)
    block = TransformerBlock(64, 128, num_heads=4).eval()
    for name, p in block.named_parameters():
        if name.endswith("bias"):
            torch.nn.init.normal_(p, std=0.02)
    separate = copy.deepcopy(block)
    for m in separate.modules():
        if isinstance(m, Linear):
            m.to_fp8()
    separate.fp8 = True
    block.to_fp8()
    attn = block.self_attn
    assert attn.qkv_fp8 is not None and attn.qkv_fp8.shape == (192, 64)
    assert all(m.weight_fp8 is None and m.bias is None for m in (attn.q, attn.k, attn.v))
    x = torch.randn(1, 10, 64)
    time_mod = torch.randn(6, 64) * 0.1
    text = (torch.randn(1, 7, 4, 16), torch.randn(1, 7, 4, 16))
    with torch.no_grad():
        want = separate(x, time_mod, _NoCache(10, 16), text)
        got = block(x, time_mod, _NoCache(10, 16), text)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="in FP8"):
        TransformerBlock(64, 128, num_heads=4).self_attn.fuse_qkv()
