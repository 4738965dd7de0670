"""The FP8 steps' Triton kernels (pipeline/model/fp8_rows.py) against the compiled functions'
arithmetic, at the 14B DiT's row widths and at one that is not a power of two."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.model import fp8, fp8_rows


def _triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and _triton()), reason="needs a GPU and Triton"
)


def test_the_kernels_run_by_default_on_contiguous_rows():
    x = torch.zeros(4, 8, device="cuda")
    assert fp8_rows.usable(x)
    assert not fp8_rows.usable(x.t())  # a row's values apart: the compiled steps run


def same_rows(got: tuple[torch.Tensor, torch.Tensor], want_rows: torch.Tensor) -> None:
    """Scales equal to float32 rounding; e4m3 codes equal but where the statistics' order of
    sums moved a value across a rounding boundary (one step, rarely). The codes are compared,
    not the dequantised values: a scale one unit in the last place off (a row's maximum taken
    from statistics summed in another order) moves every value of its row."""
    q, s = got
    want_q, want_s = fp8.quantize_rows(want_rows)
    assert q.dtype == fp8.E4M3 and q.shape == want_q.shape and s.shape == want_s.shape
    assert torch.allclose(s, want_s, rtol=1e-5, atol=0)
    differ = (q.float() != want_q.float()).float().mean().item()
    assert differ < 1e-3
    a, b = fp8.dequantize(q, s), fp8.dequantize(want_q, want_s)
    assert ((a - b).abs() <= want_s * 32 + 1e-6).all()  # one e4m3 step at most (<= 448 / 16)


@pytest.mark.parametrize("width", [5120, 100])
def test_the_norm_kernels_compute_the_compiled_steps(width):
    g = torch.Generator(device="cuda").manual_seed(0)
    rows = 333
    h = torch.randn(1, rows, width, device="cuda", generator=g) * 3
    y = torch.randn(1, rows, width, device="cuda", generator=g).to(torch.bfloat16)
    gate, shift, scale = (torch.randn(width, device="cuda", generator=g) for _ in range(3))
    w = torch.randn(width, device="cuda", generator=g).to(torch.bfloat16)
    b = torch.randn(width, device="cuda", generator=g).to(torch.bfloat16)
    h[0, 7] = 0.0  # a constant row: variance 0, every value the shift

    summed, q, s = fp8_rows.norm_fp8(h, y, gate, w, b, 1e-6, modulated=False)
    product = y.float() * gate
    want = h + product
    # the kernel's h + y * gate is one fused multiply-add: the product is not rounded first
    # (a difference of at most half a unit in its last place), and the sum's rounding may then
    # differ by one more unit
    assert ((summed - want).abs() <= product.abs() * 2.0**-24 + want.abs() * 2.0**-23).all()
    same_rows((q, s), F.layer_norm(want, (width,), w.float(), b.float(), 1e-6))

    summed, q, s = fp8_rows.norm_fp8(h, y, None, scale, shift, 1e-6, modulated=True)
    want = h + y.float()
    assert torch.equal(summed, want)
    same_rows((q, s), F.layer_norm(want, (width,), eps=1e-6) * (1 + scale) + shift)

    same_h, q, s = fp8_rows.norm_fp8(h, None, None, scale, shift, 1e-6, modulated=True)
    assert same_h is h
    same_rows((q, s), F.layer_norm(h, (width,), eps=1e-6) * (1 + scale) + shift)


@pytest.mark.parametrize("width", [13824, 5120, 100])
def test_the_activation_kernels_compute_the_compiled_steps(width):
    g = torch.Generator(device="cuda").manual_seed(1)
    x = (torch.randn(1, 257, width, device="cuda", generator=g) * 4).to(torch.bfloat16)
    x[0, 3] = 0.0  # an all-zero row: zeros, the floor scale
    same_rows(fp8_rows.act_fp8(x, gelu=True), F.gelu(x.float(), approximate="tanh"))
    q, s = fp8_rows.act_fp8(x, gelu=False)
    same_rows((q, s), x.float())
    assert (q[0, 3].float() == 0).all() and s[0, 3].item() == pytest.approx(1e-12 / 448)


@pytest.mark.parametrize(("chunks", "heads", "dim"), [(8, 40, 128), (3, 5, 24), (1, 2, 64)])
def test_the_merge_kernel_weighs_each_chunk_by_its_log_sum_exp(chunks, heads, dim):
    g = torch.Generator(device="cuda").manual_seed(2)
    tokens = 301
    o = torch.randn(chunks, tokens, heads, dim, device="cuda", generator=g) * 100
    o8 = o.clamp(-448, 448).to(fp8.E4M3)
    # log-sum-exps far apart (a chunk that barely counts) and close (chunks that share a row)
    stats = torch.randn(chunks, heads, tokens, 1, device="cuda", generator=g) * 6 + 40
    factors = torch.tensor([0.5, 0.25, 1 / 64, 64.0], device="cuda")

    weights = torch.softmax(stats, dim=0).transpose(1, 2)  # [c, L, H, 1]
    want = (o8.float() * weights).sum(0) * factors[2]  # [L, H, D]
    same_rows(fp8_rows.merge_fp8(o8, stats, factors), want.flatten(1).unsqueeze(0))


def test_the_merge_kernel_is_the_merge_the_fp8_attention_path_calls():
    from pipeline.model import fp8_attention, fused

    g = torch.Generator(device="cuda").manual_seed(3)
    o8 = (torch.randn(4, 64, 8, 64, device="cuda", generator=g) * 50).to(fp8.E4M3)
    stats = torch.randn(4, 8, 64, 1, device="cuda", generator=g)
    factors = torch.tensor([1.0, 1.0, 0.125, 8.0], device="cuda")
    got = fused.fp8_attention_rows(o8, stats, factors)
    assert torch.equal(
        got[0].view(torch.uint8), fp8_rows.merge_fp8(o8, stats, factors)[0].view(torch.uint8)
    )
    want_q, want_s = fp8_attention.merge_rows(o8, stats, factors)
    same_rows(got, fp8.dequantize(want_q, want_s))
