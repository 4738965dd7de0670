"""The decoder-precompile benchmark runs every mode in fresh processes (tiny VAE on the CPU),
and every mode that ran decodes the same frames and leaves the same cache."""

from __future__ import annotations

import json

import pytest

from ops.bench import decoder_precompile


@pytest.mark.slow
def test_every_mode_decodes_the_same_frames(tmp_path, capsys):
    out = tmp_path / "precompile.json"
    decoder_precompile.main(
        ["--preset", "tiny", "--device", "cpu", "--size", "64*64", "--out", str(out)]
    )
    report = json.loads(out.read_text())
    rows = {r["mode"]: r for r in report["modes"]}
    assert list(rows) == list(decoder_precompile.MODES)
    ran = [r for r in rows.values() if "sha256" in r]
    assert {"jit", "jit again"} <= {r["mode"] for r in ran}  # torch.compile always runs
    if "unavailable" in rows["save"]:  # a torch without aot_compile: nothing to load
        assert "unavailable" in rows["load"]
    assert len({r["sha256"] for r in ran}) == 1
    for r in ran:
        assert 0 < r["ready_s"] <= r["first_frame_s"] and r["steady_frame_s"] > 0
    assert "frames" in capsys.readouterr().out
