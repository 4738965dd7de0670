"""The compiled decoder's steady graph, saved by the first process and loaded by later ones
(pipeline.vae.precompiled): a loaded graph compiles nothing and decodes what the saved one
did, bit for bit, across a restored state too; a damaged artefact is compiled anew."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

if not hasattr(torch._dynamo.config, "enable_aot_compile"):
    pytest.skip("this torch cannot save compiled functions", allow_module_level=True)


def child() -> None:
    """One worker-like process: a compiled, channels-last stream of the tiny VAE (inductor on
    the CPU), restored from its state half-way; prints what it compiled and decoded."""
    from pipeline import Generator
    from pipeline.model import fused
    from pipeline.vae import StreamingDecoder, use_channels_last

    vae = Generator.from_preset("tiny", device="cpu", seed=7).components.vae
    use_channels_last(vae)
    torch.manual_seed(5)
    latents = torch.randn(16, 2 + 3 * 3, 8, 8)
    blocks = [latents[:, :2]] + [latents[:, 2 + 3 * i : 5 + 3 * i] for i in range(3)]

    def stream(compiled: bool) -> list[torch.Tensor]:
        decoder = StreamingDecoder(vae, channels_last=True, compiled=compiled)
        out = []
        for i, z in enumerate(blocks):
            if i == 2:  # resumed from a state, as from disk
                tensors, meta = decoder.state_dict()
                decoder = StreamingDecoder(vae, channels_last=True, compiled=compiled)
                decoder.load_state_dict({k: v.contiguous() for k, v in tensors.items()}, meta)
            out.append(decoder.decode(z))
        assert decoder.compiled == compiled
        return out

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = fused.graphs_compiled()
        compiled = stream(True)
        graphs = fused.graphs_compiled() - before
    eager = stream(False)
    digest = hashlib.sha256(b"".join(f.numpy().tobytes() for f in compiled)).hexdigest()
    print(
        json.dumps(
            {
                "graphs": graphs,
                "sha256": digest,
                "max_diff_to_eager": max(
                    float((a - b).abs().max()) for a, b in zip(compiled, eager, strict=True)
                ),
                "warnings": [str(w.message)[:200] for w in caught],
            }
        )
    )


def run_child(cache: Path) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    code = "from tests.pipeline.test_decoder_precompile import child; child()"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def artefacts(cache: Path) -> list[Path]:
    return sorted((cache / "longtake-decoder").glob("*.aot"))


def test_later_processes_load_the_saved_graph_and_decode_the_same_frames(tmp_path):
    first = run_child(tmp_path)
    assert first["graphs"] >= 1 and len(artefacts(tmp_path)) == 1
    assert first["max_diff_to_eager"] < 1e-2  # compiled: rounding only
    assert not [w for w in first["warnings"] if "decod" in w]

    second = run_child(tmp_path)
    assert second["graphs"] == 0  # loaded, nothing traced or compiled
    assert second["sha256"] == first["sha256"]
    assert not [w for w in second["warnings"] if "decod" in w]

    (artefact,) = artefacts(tmp_path)
    artefact.write_bytes(artefact.read_bytes()[:100])  # a write cut short
    third = run_child(tmp_path)
    assert any("unreadable" in w for w in third["warnings"])
    assert third["graphs"] >= 1
    assert third["sha256"] == first["sha256"]
    assert run_child(tmp_path)["graphs"] == 0  # saved whole again
