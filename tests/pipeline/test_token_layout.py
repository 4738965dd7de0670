"""The layout of the DiT's residual stream: row-major [1, L, C], a token's C values together.

The FP8 steps' kernels (pipeline/model/fp8_rows.py) hold one token's row per program and run
only on row-major tokens; the patch embedding's output, a convolution's [1, C, L] seen as
[1, L, C], is not, and every elementwise step keeps its input's strides."""

from __future__ import annotations

import torch

from tests.pipeline.conftest import request


def test_every_block_reads_and_writes_row_major_tokens(tiny):
    seen: list[tuple[str, bool]] = []

    def before(block: torch.nn.Module, args: tuple) -> None:
        seen.append(("in", args[0].is_contiguous()))

    def after(block: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        seen.append(("out", out.is_contiguous()))

    hooks = []
    for block in tiny.components.dit.blocks:
        hooks.append(block.register_forward_pre_hook(before))
        hooks.append(block.register_forward_hook(after))
    try:
        stream = tiny.open(request(1.0))
        next(stream)
        stream.close()
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) >= 2 * len(tiny.components.dit.blocks)
    assert [s for s in seen if not s[1]] == []
