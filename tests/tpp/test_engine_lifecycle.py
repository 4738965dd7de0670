"""Engine start (warm-up, measured decode cost), configuration checks, and the loading hooks
a rank relies on (placements, offloaded text encoder, the "auto" preset)."""

from __future__ import annotations

import logging

import pytest
import torch

from pipeline import Generator
from pipeline.components import build_random
from pipeline.presets import TINY
from pipeline.tpp import EngineConfig
from pipeline.weights import Placement
from tests.tpp.conftest import config


def test_warm_up_runs_a_stream_and_measures_the_decode_for_a_balanced_split(engines):
    engine = engines.fresh(config(2, warmup=True, vae_cost=None))
    assert len(engine.warmup_stats) == 2
    first, last = engine.warmup_stats
    assert first["dit"]["count"] > 0 and last["vae"]["count"] > 0
    assert all(0.0 <= s["idle_fraction"] <= 1.0 for s in engine.warmup_stats)
    cost = engine.measured_vae_cost
    assert cost is not None and cost > 0
    # the measured decode moves DiT layers off the last rank
    p = engine.partition(4, "layers")
    assert sum(len(u) for u in p[0]) > sum(len(u) for u in p[1])
    engine.shutdown()


def test_configuration_is_checked():
    with pytest.raises(ValueError, match="GPU of its own"):
        EngineConfig(dit_devices=("cuda:0", "cuda:0"))
    with pytest.raises(ValueError, match="must not be a DiT GPU"):
        EngineConfig(dit_devices=("cuda:0", "cuda:1"), vae_device="cuda:1")
    with pytest.raises(ValueError, match="attention"):
        EngineConfig(attention="fastest")
    layout = EngineConfig.cuda(4, vae_on_own_gpu=True)
    assert layout.dit_devices == ("cuda:0", "cuda:1", "cuda:2") and layout.vae_device == "cuda:3"
    assert layout.world_size == 4 and layout.vae_on_own_rank
    second = EngineConfig.cuda(5, vae_on_own_gpu=True, first=5)  # GPUs 5-9 beside 0-4
    assert second.dit_devices == ("cuda:5", "cuda:6", "cuda:7", "cuda:8")
    assert second.vae_device == "cuda:9"
    assert EngineConfig.cuda(4).snapshots_for(4) == 2  # rank 0 runs a clip and more ahead
    assert EngineConfig.cuda(1).snapshots_for(4) == 0


@pytest.mark.parametrize(
    ("world", "own"), [(2, False), (3, True)], ids=["vae-on-last-dit", "vae-own-rank"]
)
def test_each_rank_builds_only_its_parts_with_the_single_device_weights(world, own):
    single = build_random(TINY, "cpu", torch.float32, seed=5)
    for rank in range(world):
        placement = Placement.tpp_rank(
            rank, world, vae_on_own_gpu=own, device_of=lambda r: torch.device("cpu")
        )
        comps = build_random(TINY, "cpu", torch.float32, seed=5, placement=placement)
        parts = {
            "dit": comps.dit,
            "text": comps.text_encoder,
            "audio": comps.audio_encoder,
            "vae": comps.vae,
        }
        assert {p for p, m in parts.items() if m is not None} == placement.parts
        for part, module in parts.items():
            if module is None:
                continue
            whole = {
                "dit": single.dit,
                "text": single.text_encoder,
                "audio": single.audio_encoder,
                "vae": single.vae,
            }[part]
            assert all(
                torch.equal(a, b)
                for a, b in zip(
                    module.state_dict().values(), whole.state_dict().values(), strict=True
                )
            )


def test_a_stream_needs_every_part_on_one_device():
    placement = Placement({"dit": "cpu", "vae": "cpu"})
    comps = build_random(TINY, "cpu", torch.float32, placement=placement)
    with pytest.raises(RuntimeError, match="no text, audio"):
        comps.require("dit", "text", "audio", "vae")


def test_auto_preset_falls_back_to_tiny_without_a_release(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        gen = Generator.from_preset("auto", checkpoint_dir=tmp_path)
    assert gen.preset.name == "tiny"
    assert "tiny" in caplog.text and "liveavatar-14b" in caplog.text
    with pytest.raises(ValueError, match="checkpoint_dir"):
        Generator.from_preset("auto")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_an_offloaded_text_encoder_visits_the_gpu_to_encode():
    from pipeline.text import encode_prompt

    placement = Placement.single("cuda", offload_text_encoder=True)
    comps = build_random(TINY, "cuda", torch.float32, placement=placement)
    assert next(comps.text_encoder.parameters()).device.type == "cpu"
    states = encode_prompt(comps.text_encoder, comps.tokenizer, "hello", 64, comps.text_device)
    assert states.device.type == "cuda"
    assert next(comps.text_encoder.parameters()).device.type == "cpu"
