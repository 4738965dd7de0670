"""Fixtures for the TPP engine specs: tiny engines of 1, 2 and 4 CPU ranks (gloo), the
single-device generator they must match, and a view of this process's children."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import Generator, RenderRequest
from pipeline.tpp import Engine, EngineConfig
from tests.pipeline.conftest import request as tiny_request


@pytest.fixture(scope="package", autouse=True)
def one_thread() -> Iterator[None]:
    """The ranks run one thread each; the reference runs one too, so the CPU kernels (and
    their summation order) are the same and frames can be compared bit for bit."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def config(ranks: int, **kw: object) -> EngineConfig:
    """A tiny engine on `ranks` CPU ranks. vae_cost=0 makes the "layers" split cut inside
    steps (the tiny decode would otherwise take the last rank's whole share)."""
    fields: dict[str, object] = dict(
        preset="tiny",
        dit_devices=("cpu",) * ranks,
        cpu_threads=1,
        vae_cost=0.0,
        warmup=False,
        comm_timeout_s=60.0,
        stall_timeout_s=60.0,
    )
    fields.update(kw)
    return EngineConfig(**fields)  # type: ignore[arg-type]


def request(clips: int = 3, steps: int = 4, **kw: object) -> RenderRequest:
    """64x64, clips of 24 frames (2 blocks): clip 0 ends with the adaptive sink, clip 2
    wraps the KV ring."""
    return tiny_request(seconds=clips * 0.96 + 0.2, num_clips=clips, sample_steps=steps, **kw)


@pytest.fixture(scope="session")
def tiny() -> Generator:
    return Generator.from_preset("tiny", device="cpu", random_weights=True)


@pytest.fixture(scope="session")
def reference(tiny):
    """Single-device frames of request(clips, steps), computed once each."""
    cache: dict[tuple[int, int], list[np.ndarray]] = {}

    def frames(clips: int = 3, steps: int = 4) -> list[np.ndarray]:
        if (clips, steps) not in cache:
            cache[(clips, steps)] = [c.frames for c in tiny.open(request(clips, steps))]
        return cache[(clips, steps)]

    return frames


class Engines:
    """Engines started on first use and shut down at the end of the session."""

    def __init__(self) -> None:
        self._engines: dict[str, Engine] = {}

    def get(self, name: str, cfg: EngineConfig) -> Engine:
        engine = self._engines.get(name)
        if engine is None or engine.failed is not None or not engine.pids:
            engine = self._engines[name] = Engine(cfg)
        return engine

    def fresh(self, cfg: EngineConfig) -> Engine:
        engine = Engine(cfg)
        self._engines[f"fresh-{id(engine)}"] = engine
        return engine

    def shutdown(self) -> None:
        for engine in self._engines.values():
            engine.shutdown()


@pytest.fixture(scope="session")
def engines() -> Iterator[Engines]:
    pool = Engines()
    yield pool
    pool.shutdown()


@pytest.fixture
def engine1(engines):
    return engines.get("1", config(1))


@pytest.fixture
def engine2(engines):
    return engines.get("2", config(2))


@pytest.fixture
def engine4(engines):
    return engines.get("4", config(4))


def children() -> dict[int, tuple[str, str]]:
    """This process's child processes: pid -> (state letter, command line)."""
    me = os.getpid()
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == me:
            out[int(entry.name)] = (fields[0], cmd)
    return out


def rank_children() -> dict[int, tuple[str, str]]:
    """Children other than multiprocessing's resource tracker (one per interpreter, by
    design, started with the first spawned process)."""
    return {pid: c for pid, c in children().items() if "resource_tracker" not in c[1]}
