"""Exact stream state: a stream cut at a clip boundary and restored elsewhere continues with
the very frames it would have produced; seeds decide everything random."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import Generator, Waveform
from pipeline import state as state_io
from tests.pipeline.conftest import request, speech

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def six_clips(tiny) -> list[np.ndarray]:
    return [c.frames for c in tiny.open(request(seconds=6.0, num_clips=6))]


def test_six_clips_equal_three_then_restore_in_a_new_process(tiny, six_clips, tmp_path):
    stream = tiny.open(request(seconds=6.0, num_clips=6))
    first = [next(stream).frames for _ in range(3)]
    assert stream.next_clip == 3
    buf = io.BytesIO()
    state_io.save_state(stream.state_dict(), buf)
    (tmp_path / "state.bin").write_bytes(buf.getvalue())

    script = textwrap.dedent(
        f"""
        import numpy as np, torch
        from pipeline import Generator
        from pipeline import state as state_io
        from tests.pipeline.conftest import request
        torch.set_num_threads(1)  # as the test session: same kernels, same bits
        gen = Generator.from_preset("tiny", device="cpu", random_weights=True)
        with open({str(tmp_path / "state.bin")!r}, "rb") as f:
            sd = state_io.load_state(f.read())
        stream = gen.open(request(seconds=6.0, num_clips=6), state=sd)
        assert stream.next_clip == 3, stream.next_clip
        frames = [c.frames for c in stream]
        np.save({str(tmp_path / "rest.npy")!r}, np.stack(frames))
        """
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=300, env=_env())
    rest = list(np.load(tmp_path / "rest.npy"))
    assert len(first) + len(rest) == 6
    for got, want in zip(first + rest, six_clips, strict=True):
        assert np.array_equal(got, want)


def test_checkpoint_directory_round_trip(tiny, six_clips, tmp_path):
    stream = tiny.open(request(seconds=6.0, num_clips=6))
    for _ in range(4):
        next(stream)
    written = stream.checkpoint(tmp_path / "ckpt")
    assert written[-1].name == "manifest.json"
    names = {p.name for p in written}
    assert {"sink.safetensors", "decoder.safetensors", "step-0.safetensors"} <= names
    assert len([n for n in names if n.startswith("step-")]) == 4  # one shard per step

    resumed = Generator.from_preset("tiny", device="cpu", random_weights=True).open(
        request(seconds=6.0, num_clips=6), resume_from=tmp_path / "ckpt"
    )
    assert [c.index for c in resumed] == [4, 5]
    resumed = Generator.from_preset("tiny", device="cpu", random_weights=True).open(
        request(seconds=6.0, num_clips=6), resume_from=tmp_path / "ckpt"
    )
    for clip in resumed:
        assert np.array_equal(clip.frames, six_clips[clip.index])


def _counting_text_encoder(gen, monkeypatch) -> list[int]:
    """Counts the text encoder's forward passes (the class's: a visiting encoder is the same
    object)."""
    calls = [0]
    encoder = gen.components.text_encoder
    forward = type(encoder).forward

    def counted(self, *args, **kwargs):
        calls[0] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(encoder), "forward", counted)
    return calls


def test_a_resume_reads_the_encoded_prompt_instead_of_encoding_it(
    tiny, six_clips, tmp_path, monkeypatch
):
    """The encoded prompt is part of the state: a resume does not run the text encoder (on a
    GPU it would take its 11 GB of weights to the device beside the model's load and the
    checkpoint's read) and continues with the uninterrupted stream's frames; a state written
    before it was kept (no prompt.text) still resumes, encoding the prompt again."""
    from pipeline.text import STATE_NAME

    stream = tiny.open(request(seconds=6.0, num_clips=6))
    next(stream)
    next(stream)
    stream.checkpoint(tmp_path / "ckpt")
    state = stream.state_dict()
    stream.close()
    assert state["tensors"][STATE_NAME].dtype == torch.float32
    assert (tmp_path / "ckpt" / "prompt.safetensors").is_file()

    calls = _counting_text_encoder(tiny, monkeypatch)
    resumed = tiny.open(request(seconds=6.0, num_clips=6), resume_from=tmp_path / "ckpt")
    assert calls[0] == 0
    assert torch.equal(resumed._text, state["tensors"][STATE_NAME])
    for clip in resumed:
        assert np.array_equal(clip.frames, six_clips[clip.index])

    older = {"meta": state["meta"], "tensors": dict(state["tensors"])}
    del older["tensors"][STATE_NAME]
    resumed = tiny.open(request(seconds=6.0, num_clips=6), state=older)
    assert calls[0] == 1
    for clip in resumed:
        assert np.array_equal(clip.frames, six_clips[clip.index])


def _sink(stream) -> list[torch.Tensor]:
    """The sink as attention reads it: unrotated reference keys, and every step's motion keys
    and values (the reference keys' slot in a step cache is rewritten before every use)."""
    out = [stream.sink_keys.ref.clone()]
    for cache in stream.caches:
        out += [cache.sink_motion_keys.clone(), cache.sink_values.clone()]
    return out


@pytest.mark.parametrize("boundary", [0, 1, 3])
def test_a_restored_sink_equals_the_saved_one_bit_for_bit(tiny, boundary, tmp_path):
    stream = tiny.open(request(seconds=6.0, num_clips=6))
    for _ in range(boundary):
        next(stream)
    saved_sink = _sink(stream)
    stream.checkpoint(tmp_path / "ckpt")
    stream.close()
    resumed = tiny.open(request(seconds=6.0, num_clips=6), resume_from=tmp_path / "ckpt")
    for got, want in zip(_sink(resumed), saved_sink, strict=True):
        assert torch.equal(got, want)


def _counting_prefills(monkeypatch) -> list[int]:
    from pipeline.denoise import Denoiser

    calls = [0]
    prefill = Denoiser.prefill_sink

    def counted(self, *args, **kwargs):
        calls[0] += 1
        return prefill(self, *args, **kwargs)

    monkeypatch.setattr(Denoiser, "prefill_sink", counted)
    return calls


def _counting_encodes(monkeypatch) -> list[int]:
    from pipeline import vae as vae_mod

    calls = [0]
    encode = vae_mod.encode

    def counted(*args, **kwargs):
        calls[0] += 1
        return encode(*args, **kwargs)

    monkeypatch.setattr(vae_mod, "encode", counted)
    return calls


def test_a_state_keeps_the_sink_as_its_latent_and_a_resume_prefills_it(
    tiny, six_clips, tmp_path, monkeypatch
):
    stream = tiny.open(request(seconds=6.0, num_clips=6))
    next(stream)
    next(stream)
    state = stream.state_dict()
    stream.checkpoint(tmp_path / "ckpt")
    g = stream.geometry
    stream.close()
    sink = {k: t for k, t in state["tensors"].items() if state_io.shard_of(k) == "sink"}
    assert sorted(sink) == [state_io.SINK_LATENT, state_io.SINK_MOTION]
    assert sink[state_io.SINK_LATENT].shape == (16, 1, g.latent_h, g.latent_w)
    motion = sink[state_io.SINK_MOTION]
    assert motion.shape[0] == 16 and motion.shape[2:] == (g.latent_h, g.latent_w)
    shard = tmp_path / "ckpt" / "sink.safetensors"
    assert shard.stat().st_size < (1 + motion.shape[1]) * 16 * g.latent_h * g.latent_w * 4 + 4096

    calls, encodes = _counting_prefills(monkeypatch), _counting_encodes(monkeypatch)
    resumed = tiny.open(request(seconds=6.0, num_clips=6), resume_from=tmp_path / "ckpt")
    assert calls[0] == 1
    assert encodes[0] == 0  # the portrait's latents come from the state
    for clip in resumed:
        assert np.array_equal(clip.frames, six_clips[clip.index])


def test_a_format_1_checkpoint_holding_the_sink_caches_resumes_by_copy(
    tiny, six_clips, tmp_path, monkeypatch
):
    """Checkpoints written before the sink was kept as its latent hold its caches (format 1):
    they resume, by copying them, with the same frames."""
    stream = tiny.open(request(seconds=6.0, num_clips=6))
    next(stream)
    next(stream)
    state = stream.state_dict()
    kept = (state_io.SINK_LATENT, state_io.SINK_MOTION)
    tensors = {k: t for k, t in state["tensors"].items() if k not in kept}
    caches = (stream.sink_keys.ref, stream.caches[0].sink_motion_keys, stream.caches[0].sink_values)
    tensors |= {k: t.clone() for k, t in zip(state_io.SINK_CACHES, caches, strict=True)}
    stream.close()
    state_io.write_checkpoint({"meta": state["meta"], "tensors": tensors}, tmp_path / "v1")
    manifest = json.loads((tmp_path / "v1" / "manifest.json").read_text())
    manifest["format"] = "longtake.stream-state/1"
    (tmp_path / "v1" / "manifest.json").write_text(json.dumps(manifest))

    calls = _counting_prefills(monkeypatch)
    resumed = tiny.open(request(seconds=6.0, num_clips=6), resume_from=tmp_path / "v1")
    assert calls[0] == 0
    assert np.array_equal(next(resumed).frames, six_clips[2])
    # the sink's latents are not in a format-1 state: its later states keep the caches too
    later = resumed.state_dict()
    resumed.close()
    assert set(state_io.SINK_CACHES) <= set(later["tensors"])
    assert state_io.SINK_LATENT not in later["tensors"]
    for clip in tiny.open(request(seconds=6.0, num_clips=6), state=later):
        assert np.array_equal(clip.frames, six_clips[clip.index])


def test_a_checkpoint_is_read_straight_into_strided_tensors(tiny, tmp_path):
    stream = tiny.open(request(seconds=2.0, num_clips=2))
    next(stream)
    stream.checkpoint(tmp_path / "ckpt")
    source = state_io.CheckpointSource(tmp_path / "ckpt", chunk_bytes=1)
    whole = state_io.read_checkpoint(tmp_path / "ckpt")
    assert source.names() == set(whole["tensors"]) and source.meta == whole["meta"]
    ring = whole["tensors"]["step.1.ring"]
    # a ring is a strided view of a larger cache: the restore fills it in place
    host = torch.full((*ring.shape[:2], ring.shape[2] + 5, *ring.shape[3:]), 7.0, dtype=ring.dtype)
    target = host[:, :, 5:]
    assert not target.is_contiguous()
    source.fill({"step.1.ring": target})
    assert torch.equal(target, ring)
    assert (host[:, :, :5] == 7.0).all()  # nothing outside the view is touched
    with pytest.raises(ValueError, match="step.0.ring"):
        source.fill({"step.0.ring": torch.zeros(3, dtype=ring.dtype)})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("readers", [1, 3, 8])
def test_a_checkpoint_is_read_into_gpu_views_through_the_staging_buffers(tmp_path, readers):
    """Pieces of at most chunk_bytes go through a few page-locked buffers (two per reader),
    each refilled only once its copy to the device has run: every byte lands where it belongs
    and nothing outside the views is written, whatever the number of readers."""
    gen = torch.Generator().manual_seed(readers)
    tensors = {
        f"step.{i}.ring": torch.randint(-999, 999, (3, 2, 41, 4, 8), generator=gen).to(
            torch.bfloat16
        )
        for i in range(4)
    }
    state_io.write_checkpoint({"meta": {}, "tensors": tensors}, tmp_path / "ckpt")
    source = state_io.CheckpointSource(tmp_path / "ckpt", chunk_bytes=100, readers=readers)
    caches = {
        k: torch.full((3, 2, 47, 4, 8), float("nan"), dtype=torch.bfloat16, device="cuda")
        for k in tensors
    }
    source.fill({k: v[:, :, 6:] for k, v in caches.items()})  # strided views, as rings are
    for name, want in tensors.items():
        assert torch.equal(caches[name][:, :, 6:].cpu(), want)
        assert caches[name][:, :, :6].isnan().all()


def test_a_truncated_shard_is_refused_before_anything_is_read(tiny, tmp_path):
    stream = tiny.open(request(seconds=2.0, num_clips=2))
    next(stream)
    stream.checkpoint(tmp_path / "ckpt")
    shard = tmp_path / "ckpt" / "step-2.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        tiny.open(request(seconds=2.0, num_clips=2), resume_from=tmp_path / "ckpt")


def test_a_directory_without_manifest_is_not_a_checkpoint(tiny, tmp_path):
    stream = tiny.open(request(seconds=2.0, num_clips=2))
    next(stream)
    stream.checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "manifest.json").unlink()
    with pytest.raises(ValueError, match="manifest.json is missing"):
        tiny.open(request(seconds=2.0, num_clips=2), resume_from=tmp_path / "ckpt")


def test_resume_refuses_a_different_request(tiny):
    stream = tiny.open(request(seconds=2.0, num_clips=2))
    next(stream)
    state = stream.state_dict()
    for change in (dict(seed=8), dict(prompt="someone else"), dict(sample_steps=3)):
        with pytest.raises(ValueError, match="different request") as err:
            tiny.open(request(seconds=2.0, num_clips=2, **change), state=state)
        assert next(iter(change)) in str(err.value).replace("prompt_sha256", "prompt")
    other_audio = request(seconds=2.0, num_clips=2, audio=Waveform(speech(2.0) * 0.5))
    with pytest.raises(ValueError, match="audio_sha256"):
        tiny.open(other_audio, state=state)


def test_state_is_portable_data(tiny, tmp_path):
    stream = tiny.open(request(seconds=2.0, num_clips=2))
    next(stream)
    sd = stream.state_dict()
    assert all(t.device.type == "cpu" for t in sd["tensors"].values())
    json.dumps(sd["meta"])  # plain metadata
    state_io.save_state(sd, tmp_path / "s.safetensors")
    raw = (tmp_path / "s.safetensors").read_bytes()
    assert b"pickle" not in raw[:4096] and raw[8:9] == b"{"  # a safetensors JSON header
    back = state_io.load_state(tmp_path / "s.safetensors")
    assert back["meta"] == sd["meta"]
    assert set(back["tensors"]) == set(sd["tensors"])
    with pytest.raises(ValueError, match="not a longtake stream state"):
        state_io.load_state(b"\x00" * 16)


def test_same_seed_same_frames_other_seed_other_frames(tiny):
    a = [c.frames for c in tiny.open(request(seconds=1.0, num_clips=2, seed=11))]
    b = [c.frames for c in tiny.open(request(seconds=1.0, num_clips=2, seed=11))]
    c = [c.frames for c in tiny.open(request(seconds=1.0, num_clips=2, seed=12))]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not any(np.array_equal(x, z) for x, z in zip(a, c, strict=True))


def test_opening_a_stream_closes_the_previous_one(tiny):
    first = tiny.open(request(seconds=1.0, num_clips=1))
    tiny.open(request(seconds=1.0, num_clips=1))
    with pytest.raises(RuntimeError, match="closed"):
        next(first)


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env
