"""The decoder-convolutions benchmark (tiny VAE on the CPU): every convolution of a steady
frame, each form of it computing the same convolution."""

from __future__ import annotations

import json

import pytest

from ops.bench import decoder_convs


@pytest.mark.slow
def test_every_convolution_of_a_frame_in_every_form(tmp_path, capsys):
    out = tmp_path / "convs.json"
    decoder_convs.main(
        ["--preset", "tiny", "--device", "cpu", "--size", "64*64", "--repeats", "1",
         "--out", str(out)]
    )  # fmt: skip
    report = json.loads(out.read_text())
    rows = report["convs"]
    weights = {tuple(r["weight"]) for r in rows}
    assert any(w[0] == 3 for w in weights)  # the last convolution, to RGB
    assert any(len(w) == 5 and w[2] == 3 for w in weights)  # the causal 3x3x3 ones
    assert any(len(w) == 4 for w in weights)  # the upsamplers' 2-D ones
    forms = {name for r in rows for name in r["ms"]}
    assert {"channels-last", "default", "2-D per time tap"} <= forms
    assert any(name.startswith("outputs padded to") for name in forms)
    for r in rows:
        assert r["calls_per_frame"] >= 1
        assert set(r["ms"]) == set(r["max_abs_diff"]) == set(r["equal_to_channels_last"])
        assert all(ms > 0 for ms in r["ms"].values())
        # padded kernels and per-tap sums are the same convolution, rounded differently
        assert all(d < 0.05 for d in r["max_abs_diff"].values()), r
    assert "per frame" in capsys.readouterr().out
