"""Distributed snapshots: each rank writes its own shard at a clip boundary, the manifest comes
last; a new engine of the same layout restores them and continues with identical frames."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from pipeline import state as state_io
from pipeline.text import STATE_NAME
from pipeline.tpp import EngineError
from tests.tpp.conftest import config, request


def test_checkpoint_kill_new_engine_restore_gives_the_uninterrupted_frames(
    engines, engine2, reference, tmp_path
):
    engine = engines.fresh(config(2))
    stream = engine.open(request(4, 3), split="layers")
    first = [next(stream).frames for _ in range(2)]
    written = stream.checkpoint(tmp_path / "ckpt")
    assert written[-1].name == "manifest.json"
    names = {p.name for p in written}
    # whole groups keep the single-device shard names; step 1 is split between the ranks
    assert {"sink.safetensors", "step-0.safetensors", "step-2.safetensors"} <= names
    assert {"step-1.rank0.safetensors", "step-1.rank1.safetensors", "decoder.safetensors"} <= names
    assert "prompt.safetensors" in names  # rank 0's encoded prompt: a resume does not encode
    manifest = json.loads((tmp_path / "ckpt" / "manifest.json").read_text())
    assert manifest["meta"]["next_clip"] == 2 and manifest["meta"]["tpp"]["dit_ranks"] == 2

    next(stream)  # the engine runs on past the checkpoint, then dies
    for pid in engine.pids:
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(EngineError):
        next(stream)

    # another engine of the same layout (its processes started and loaded independently)
    assert not set(engine2.pids) & set(engine.pids)
    resumed = engine2.open(request(4, 3), resume_from=tmp_path / "ckpt", split="steps")
    assert resumed.partition == stream.partition  # the checkpoint's cut, not the split asked
    assert resumed.next_clip == 2
    rest = [c.frames for c in resumed]
    for got, want in zip(first + rest, reference(4, 3), strict=True):
        assert np.array_equal(got, want)


@pytest.mark.parametrize("boundary", [0, 3])
def test_state_at_the_first_and_last_boundary_resumes(engine2, reference, boundary):
    stream = engine2.open(request(3, 4), split="layers")
    for _ in range(boundary):
        next(stream)
    state = stream.state_dict()
    stream.close()
    assert state["tensors"][STATE_NAME].shape[0] > 0  # the encoded prompt, gathered from rank 0
    resumed = engine2.open(request(3, 4), state=state)
    assert resumed.next_clip == boundary
    assert [c.frames.tobytes() for c in resumed] == [
        f.tobytes() for f in reference(3, 4)[boundary:]
    ]


def test_state_dict_written_by_the_worker_path_resumes_too(engine4, reference, tmp_path):
    stream = engine4.open(request(4, 3), split="layers")
    next(stream)
    sd = stream.state_dict()
    assert sd["meta"]["next_clip"] == 1
    assert all(t.device.type == "cpu" and t.is_shared() for t in sd["tensors"].values())
    state_io.write_checkpoint(sd, tmp_path / "ckpt")
    stream.close()

    resumed = engine4.open(request(4, 3), resume_from=tmp_path / "ckpt")
    assert [c.index for c in resumed] == [1, 2, 3]
    resumed = engine4.open(request(4, 3), state=state_io.read_checkpoint(tmp_path / "ckpt"))
    for clip in resumed:
        assert np.array_equal(clip.frames, reference(4, 3)[clip.index])


def test_state_can_be_taken_at_any_boundary_while_ranks_run_ahead(engine4, reference, tmp_path):
    """Ranks run up to a clip ahead of the caller; the boundary snapshots still give the
    state at the boundary the caller stands at, however late it asks."""
    stream = engine4.open(request(4, 4))
    assert stream.snapshots >= 1
    next(stream)
    next(stream)
    stream.checkpoint(tmp_path / "at2")
    sd = stream.state_dict()
    assert sd["meta"]["next_clip"] == 2
    stream.close()
    resumed = engine4.open(request(4, 4), resume_from=tmp_path / "at2")
    assert [c.frames.tobytes() for c in resumed] == [f.tobytes() for f in reference(4, 4)[2:]]


def test_a_whole_step_checkpoint_is_a_single_device_checkpoint(engine4, tiny, reference, tmp_path):
    stream = engine4.open(request(3, 4), split="steps")
    next(stream)
    stream.checkpoint(tmp_path / "ckpt")
    stream.close()
    want = reference(3, 4)  # before the resume: rendering it opens `tiny`, closing the resume
    resumed = tiny.open(request(3, 4), resume_from=tmp_path / "ckpt")
    for clip in resumed:
        assert np.array_equal(clip.frames, want[clip.index])


def test_a_state_keeps_the_sink_as_its_latent_alone(engine2, reference):
    stream = engine2.open(request(3, 4), split="layers")
    next(stream)
    state = stream.state_dict()
    stream.close()
    sink = [k for k in state["tensors"] if state_io.shard_of(k) == "sink"]
    assert sorted(sink) == [state_io.SINK_LATENT, state_io.SINK_MOTION]
    assert state["tensors"][state_io.SINK_LATENT].shape[:2] == (16, 1)


def test_a_resume_takes_the_layout_its_state_records(engine2, reference):
    stream = engine2.open(request(3, 4), split="layers")
    next(stream)
    state = stream.state_dict()
    stream.close()
    assert state["meta"]["layout"] == "row-major"  # the default of new streams
    resumed = engine2.open(request(3, 4), state=state)
    assert resumed.row_major is True
    resumed.close()
    del state["meta"]["layout"]  # a state from before the record: the convolution's layout
    resumed = engine2.open(request(3, 4), state=state)
    assert resumed.row_major is False
    resumed.close()
    state["meta"]["layout"] = "conv"
    resumed = engine2.open(request(3, 4), state=state)
    assert resumed.row_major is False
    # on the CPU the layouts round alike: the same frames
    assert [c.frames.tobytes() for c in resumed] == [f.tobytes() for f in reference(3, 4)[1:]]


@pytest.mark.parametrize("boundary", [0, 1])
def test_a_format_1_state_holding_the_sink_caches_resumes_by_copy(
    engine2, tiny, reference, boundary
):
    """A state from before the sink was kept as its latents: its caches, whole (the
    single-device names), are copied into each rank's layers, split or not; from boundary 0
    the portrait is encoded again for clip 0's adaptive sink."""
    stream = engine2.open(request(3, 4), split="layers")
    for _ in range(boundary):
        next(stream)
    state = stream.state_dict()
    stream.close()
    single = tiny.open(request(3, 4))  # the same sink, on the CPU bit for bit
    for _ in range(boundary):
        next(single)
    caches = (single.sink_keys.ref, single.caches[0].sink_motion_keys, single.caches[0].sink_values)
    kept = (state_io.SINK_LATENT, state_io.SINK_MOTION)
    tensors = {k: t for k, t in state["tensors"].items() if k not in kept}
    tensors |= {k: t.clone() for k, t in zip(state_io.SINK_CACHES, caches, strict=True)}
    single.close()
    want = [f.tobytes() for f in reference(3, 4)]
    resumed = engine2.open(request(3, 4), state={"meta": state["meta"], "tensors": tensors})
    assert next(resumed).frames.tobytes() == want[boundary]
    # past clip 0 the sink's latents are unknown: the later states keep the caches too
    later = resumed.state_dict()
    resumed.close()
    kept_latents = state_io.SINK_LATENT in later["tensors"]
    assert kept_latents is (boundary == 0)
    resumed = engine2.open(request(3, 4), state=later)
    assert [c.frames.tobytes() for c in resumed] == want[boundary + 1 :]


def test_restore_refuses_another_layout_or_request(engine2, engine4, tmp_path):
    stream = engine4.open(request(3, 4))
    next(stream)
    stream.checkpoint(tmp_path / "ckpt")
    stream.close()
    with pytest.raises(ValueError, match="4 DiT rank.*this engine has 2 DiT rank"):
        engine2.open(request(3, 4), resume_from=tmp_path / "ckpt")
    with pytest.raises(ValueError, match="different request.*sample_steps"):
        engine4.open(request(3, 3), resume_from=tmp_path / "ckpt")
    (tmp_path / "ckpt" / "manifest.json").unlink()
    with pytest.raises(ValueError, match="manifest.json is missing"):
        engine4.open(request(3, 4), resume_from=tmp_path / "ckpt")
