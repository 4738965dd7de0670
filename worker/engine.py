"""The generation engine as the worker sees it: `pipeline.engine.Engine`, built once per worker
process and kept: as `longtake worker` starts (`preload`), or else at its first job.

Loading a 14B model takes minutes and must never happen per job. `longtake worker` renders in
the process that loads the model (Celery's threads pool, no fork after it: the worker process
is forked from its parent before anything loads, ops/respawn.py), so building the engine as
it starts initialises CUDA in the only process that will use it.
``pipeline.Generator`` (one device) is the default engine; the multi-GPU engine
(`pipeline.tpp`) plugs in through ``EngineSpec.factory`` (see `multi_gpu_engine`).

The process also keeps one presenter cache (pipeline/presenters.py) across jobs, shared by its
engines, sized by the spec: a job whose presenter (tenant, portrait, prompt, size, precision)
was rendered here before opens from it. Its keys go to the claim (presenter affinity).
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.engine import Engine, PresenterEngine
from worker.config import EngineSpec

if TYPE_CHECKING:
    from pipeline.presenters import PresenterCache

log = logging.getLogger(__name__)


def use_threads(spec: EngineSpec) -> None:
    """The engine's CPU thread count for the calling thread (torch's count is per thread: one
    set where the model loaded does not reach the thread that renders). Call it in the thread
    that renders, before it does: float results on the CPU depend on the count, so a render is
    bit-identical to another only at the same one."""
    if spec.torch_threads > 0:
        import torch

        torch.set_num_threads(spec.torch_threads)


def use_compile_cache(spec: EngineSpec) -> None:
    """Point torch.compile's caches at the spec's directory, before anything compiles (the
    environment: the multi-GPU engine's rank processes inherit it)."""
    if spec.compile_cache_dir is None:
        return
    root = Path(spec.compile_cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))


def build_engine(spec: EngineSpec) -> Engine:
    use_threads(spec)
    use_compile_cache(spec)
    if spec.factory:
        module_name, _, attr = spec.factory.partition(":")
        if not attr:
            raise ValueError(f"engine factory {spec.factory!r} must have the form module:function")
        return getattr(importlib.import_module(module_name), attr)(spec)

    device = resolve_device(spec.device)
    loading = None
    if spec.preset != "auto":  # (resolving "auto" reads the release with the heavy modules)
        # the DiT's load starts before the encoders' libraries are imported: their imports,
        # the encoders' build and a job's open (a resume's checkpoint read) run beside it
        from pipeline.dit_loading import start_preset_dit

        loading = start_preset_dit(
            spec.preset,
            device=device,
            precision=spec.precision,
            random_weights=spec.random_weights,
            checkpoint_dir=spec.checkpoint_dir,
        )
    from pipeline import Generator

    return Generator.from_preset(
        spec.preset,
        device=device,
        random_weights=spec.random_weights,
        checkpoint_dir=spec.checkpoint_dir,
        precision=spec.precision,
        defer_dit=True,
        dit_loading=loading,
    )


def multi_gpu_engine(spec: EngineSpec) -> Engine:
    """The Timestep-forcing Pipeline Parallelism engine (`pipeline.tpp`) as the worker's
    engine: `LONGTAKE_ENGINE_FACTORY=worker.engine:multi_gpu_engine`.

    Ranks: `spec.ranks` GPUs from cuda:0 (0: every GPU this process sees); with device "cpu",
    `spec.ranks` CPU ranks (tests and dry runs). Its ranks write their own checkpoint shards
    in parallel (`writes_own_checkpoints`), so the worker lets the stream write checkpoints.
    """
    import torch

    from pipeline.tpp import Engine as TppEngine
    from pipeline.tpp import EngineConfig

    common: dict[str, Any] = dict(
        preset=spec.preset,
        random_weights=spec.random_weights,
        checkpoint_dir=str(spec.checkpoint_dir),
        precision=spec.precision,
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
    return TppEngine(config)


def preload(spec: EngineSpec, cache: EngineCache | None = None) -> threading.Thread:
    """Start building the engine of `spec` in a daemon thread and return it. A job that asks
    for the engine meanwhile waits for this build (`EngineCache.get`) instead of starting its
    own; a build that fails is logged here, and the job's request builds again (and fails
    there, where the attempt records it)."""
    engines = cache if cache is not None else ENGINES

    def build() -> None:
        try:
            engines.get(spec)
        except Exception:
            log.exception("preloading the %s engine failed; the first job loads it", spec.preset)

    thread = threading.Thread(target=build, name="engine-preload", daemon=True)
    thread.start()
    return thread


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
        self.presenters: PresenterCache | None = None
        """The process's presenter cache, made with its first engine that has one."""

    def get(self, spec: EngineSpec) -> Engine:
        with self._lock:
            engine = self._engines.get(spec)
            if engine is None:
                started = time.monotonic()
                log.info("loading the %s engine on %s", spec.preset, resolve_device(spec.device))
                engine = build_engine(spec)
                log.info("engine loaded in %.1f s", time.monotonic() - started)
                self._engines[spec] = engine
            if isinstance(engine, PresenterEngine) and spec.caches_presenters:
                if self.presenters is None:
                    from pipeline.presenters import PresenterCache

                    self.presenters = PresenterCache(
                        spec.presenter_cache_gpu_bytes, spec.presenter_cache_host_bytes
                    )
                engine.presenter_cache = self.presenters
            return engine

    def presenter_keys(self) -> tuple[str, ...]:
        """The presenters this process holds (`jobs.presenter_key` values), most recent first."""
        cache = self.presenters
        return () if cache is None else cache.presenter_keys()

    def close(self) -> None:
        """Shut down the engines that run processes of their own (multi-GPU ranks)."""
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            engine.shutdown()


ENGINES = EngineCache()
