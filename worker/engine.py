"""The generation engine as the worker sees it: a plug-in that opens resumable streams.

An engine is anything with ``open(request, resume_from=None) -> stream``; a stream yields
``pipeline.Clip`` objects (``index``, ``frames`` uint8 [T, H, W, 3]) and offers, between
clips, ``state_dict()`` (a ``pipeline.state`` StateDict that
``pipeline.state.write_checkpoint`` writes) and ``checkpoint(directory)`` (the same files,
written by the stream itself); ``open(..., resume_from=<such a directory>)`` continues from
either. An engine whose streams write checkpoints better than the worker can (each rank of a
multi-GPU engine writing its own shard) says so with ``writes_own_checkpoints = True``. ``pipeline.Generator`` (one device) is the default engine; a multi-GPU engine
with the same stream API plugs in through ``EngineSpec.factory``.

The engine is built once per worker process, at its first job, and kept: loading a 14B model
takes minutes and must never happen per job. Nothing here runs before the first job, so a
process that forks workers never initialises CUDA before the fork.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from worker.config import EngineSpec

if TYPE_CHECKING:
    from pipeline import Clip, RenderRequest

log = logging.getLogger(__name__)


class RenderStream(Protocol):
    num_clips: int
    width: int
    height: int
    fps: int
    next_clip: int

    def __iter__(self) -> Iterator[Clip]: ...

    def __next__(self) -> Clip: ...

    def state_dict(self) -> dict[str, Any]: ...

    def checkpoint(self, directory: Path) -> list[Path]: ...

    def close(self) -> None: ...


class Engine(Protocol):
    def open(self, request: RenderRequest, *, resume_from: Path | None = None) -> RenderStream: ...


def capture_state(stream: RenderStream) -> dict[str, Any]:
    """The stream's state on the host, at the cost of the device-to-host copy only.

    Streams that can copy into pinned memory (``state_dict(pin_memory=True)``) are asked to,
    so the copy runs at full bus speed; serialising and uploading happen elsewhere.
    """
    if "pin_memory" in inspect.signature(stream.state_dict).parameters:
        return stream.state_dict(pin_memory=True)  # type: ignore[call-arg]
    return stream.state_dict()


def state_bytes(state: dict[str, Any]) -> int:
    return sum(t.numel() * t.element_size() for t in state["tensors"].values())


def build_engine(spec: EngineSpec) -> Engine:
    import torch

    if spec.torch_threads > 0:
        torch.set_num_threads(spec.torch_threads)
    if spec.factory:
        module_name, _, attr = spec.factory.partition(":")
        if not attr:
            raise ValueError(f"engine factory {spec.factory!r} must have the form module:function")
        return getattr(importlib.import_module(module_name), attr)(spec)

    from pipeline import Generator

    return Generator.from_preset(
        spec.preset,
        device=resolve_device(spec.device),
        random_weights=spec.random_weights,
        checkpoint_dir=spec.checkpoint_dir,
    )


def multi_gpu_engine(spec: EngineSpec) -> Engine:
    """The Timestep-forcing Pipeline Parallelism engine (`pipeline.tpp`) as the worker's
    engine: `LONGTAKE_ENGINE_FACTORY=worker.engine:multi_gpu_engine`.

    Ranks: `spec.ranks` GPUs from cuda:0 (0: every GPU this process sees); with device "cpu",
    `spec.ranks` CPU ranks (tests and dry runs). Its ranks write their own checkpoint shards
    in parallel, so the worker lets the stream write checkpoints (`writes_own_checkpoints`).
    """
    import torch

    from pipeline.tpp import Engine as TppEngine
    from pipeline.tpp import EngineConfig

    common: dict[str, Any] = dict(
        preset=spec.preset,
        random_weights=spec.random_weights,
        checkpoint_dir=str(spec.checkpoint_dir),
    )
    if spec.device == "cpu":
        ranks = max(1, spec.ranks)
        config = EngineConfig(
            dit_devices=("cpu",) * ranks, cpu_threads=spec.torch_threads, **common
        )
    else:
        gpus = spec.ranks or torch.cuda.device_count()
        if gpus < 1:
            raise RuntimeError("the multi-GPU engine needs a CUDA device (or device 'cpu')")
        config = EngineConfig.cuda(gpus, **common)
    engine = TppEngine(config)
    engine.writes_own_checkpoints = True  # type: ignore[attr-defined]
    return engine  # type: ignore[return-value]


def resolve_device(device: str) -> str:
    """ "auto": the first GPU when there is one, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class EngineCache:
    """One engine per process for a given spec, built on first use (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: dict[EngineSpec, Engine] = {}

    def get(self, spec: EngineSpec) -> Engine:
        with self._lock:
            engine = self._engines.get(spec)
            if engine is None:
                started = time.monotonic()
                log.info("loading the %s engine on %s", spec.preset, resolve_device(spec.device))
                engine = build_engine(spec)
                log.info("engine loaded in %.1f s", time.monotonic() - started)
                self._engines[spec] = engine
            return engine

    def close(self) -> None:
        """Shut down the engines that run processes of their own (multi-GPU ranks)."""
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            shutdown = getattr(engine, "shutdown", None)
            if shutdown is not None:
                shutdown()


ENGINES = EngineCache()
