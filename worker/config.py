"""The render worker's configuration: typed values built by ops/settings.py from LONGTAKE_*."""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from db.capabilities import Capabilities
from db.params import WatermarkSpec
from pipeline import params as P
from worker.segments import EncoderSettings
from worker.stitch import AudioSettings
from worker.tiers import TierSettings


def default_worker_id() -> str:
    """host:pid: unique per process, so a restarted worker is never mistaken for a dead one."""
    return f"{socket.gethostname()}:{os.getpid()}"


def default_scratch_dir() -> Path:
    return Path(tempfile.gettempdir()) / "longtake-worker"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for operations on external services (S3, the database).

    The delays double from ``base_delay_s`` up to ``max_delay_s``; ``attempts`` counts the
    first try. The defaults ride out about a minute of unavailability.
    """

    attempts: int = 7
    base_delay_s: float = 0.5
    max_delay_s: float = 20.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"retry attempts must be at least 1, got {self.attempts}")
        if self.base_delay_s < 0 or self.max_delay_s < self.base_delay_s:
            raise ValueError("retry delays must satisfy 0 <= base_delay_s <= max_delay_s")

    def delay(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failure (1-based)."""
        return min(self.max_delay_s, self.base_delay_s * 2 ** (failures - 1))


@dataclass(frozen=True)
class EngineSpec:
    """Which generator a worker process loads (once, at its first job).

    ``factory`` names a plug-in, ``module:function`` called with this spec that returns an
    engine (anything with ``open(request, resume_from=...) -> stream``, see worker/engine.py);
    None builds ``pipeline.Generator.from_preset(preset, ...)``.
    """

    preset: str = "tiny"
    device: str = "auto"
    """"auto" (the first GPU if there is one, else the CPU), "cpu", "cuda", "cuda:1", ..."""
    checkpoint_dir: Path = Path("checkpoints")
    """Released weights (unused by the tiny preset, which has random weights)."""
    random_weights: bool = False
    factory: str | None = None
    ranks: int = 0
    """For a multi-device engine (worker.engine.multi_gpu_engine): how many devices (0: all)."""
    torch_threads: int = 0
    """CPU threads of torch (0: torch's default). Renders are bit-identical only between
    processes with the same device, dtype and thread count."""
    precision: str = P.PRECISION_DEFAULT
    """The DiT's precision (pipeline.params.PRECISIONS); a worker builds one engine for each
    precision it serves, from this spec with the precision replaced."""
    compile_cache_dir: Path | None = None
    """Where torch.compile keeps its kernels (inductor's and Triton's caches), on the node's
    disk: a worker restarted there loads them instead of compiling again, a minute or more of
    a 14B engine's first clips. None: torch's default (under /tmp). An operator's own
    TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR take precedence."""
    presenter_cache_gpu_bytes: int = 0
    presenter_cache_host_bytes: int = 0
    """The process's presenter cache (pipeline/presenters.py), shared by its engines: bytes on
    the engine's device (a CPU engine: host memory) and in page-locked host memory; both 0:
    no cache. An engine that cannot use one (the multi-GPU engine) ignores it."""

    def __post_init__(self) -> None:
        P.check_precision(self.precision)
        if self.presenter_cache_gpu_bytes < 0 or self.presenter_cache_host_bytes < 0:
            raise ValueError("presenter cache sizes must be >= 0")

    @property
    def caches_presenters(self) -> bool:
        return self.presenter_cache_gpu_bytes > 0 or self.presenter_cache_host_bytes > 0


@dataclass(frozen=True)
class WorkerConfig:
    worker_id: str = field(default_factory=default_worker_id)
    lease_s: float = 120.0
    heartbeat_s: float | None = None
    """Seconds between heartbeats; None: a quarter of the lease, so three can be missed."""
    progress_interval_s: float = 1.0
    """Progress is written at a clip boundary at most this often (and at every checkpoint):
    clips slower than this write every clip, a tiny model's fast clips every few."""
    soft_shutdown_timeout_s: float = 60.0
    """What a shutdown (SIGTERM) leaves the job: it checkpoints the clips since the last
    checkpoint only if the previous checkpoint took well under this long."""
    scratch_dir: Path = field(default_factory=default_scratch_dir)
    """Local working files: segments being encoded, checkpoint files, the stitched output."""
    tiers: TierSettings = field(default_factory=lambda: TierSettings(node=socket.gethostname()))
    """Where checkpoints go: the node's disk every interval, the bucket by budget."""
    engine: EngineSpec = field(default_factory=EngineSpec)
    precisions: tuple[str, ...] = (P.PRECISION_DEFAULT,)
    """The precisions this worker serves: it claims only jobs that need one of them, and
    builds (once each) an engine per precision it meets. Each 14B engine holds its weights."""
    preload: bool = True
    """Build the engine of `precisions[0]` as the worker process starts (`longtake worker`),
    not at its first job (worker.engine.preload)."""
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    audio: AudioSettings = field(default_factory=AudioSettings)
    watermark: WatermarkSpec = field(default_factory=WatermarkSpec)
    """The operator's default mark; a job's watermark parameter changes its fields."""
    watermark_allowed: bool = True
    """False disables the mark for every job, whatever the job asks."""
    keep_segments: bool = False
    """Keep the segments in storage after the output is stored (they hold the same frames)."""
    checkpoint_mode: Literal["auto", "capture", "directory"] = "auto"
    """How a boundary's checkpoint is taken. capture: the stream's state is copied to (pinned)
    host memory and written to files in the background (the one-device generator). directory:
    the stream writes its own checkpoint directory (`stream.checkpoint(dir)`), as a multi-GPU
    engine does, each rank its own shard, in parallel; the upload runs in the background.
    auto: directory for engines that say `writes_own_checkpoints = True`, else capture."""
    storage_retry: RetryPolicy = field(default_factory=RetryPolicy)
    database_retry: RetryPolicy = field(default_factory=RetryPolicy)
    fault: str | None = None
    """Fault injection for the crash tests (worker/faults.py); None in production."""

    def __post_init__(self) -> None:
        for precision in self.precisions:
            P.check_precision(precision)
        if not self.precisions:
            raise ValueError("a worker must serve at least one precision")
        if self.lease_s <= 0:
            raise ValueError(f"lease_s must be positive, got {self.lease_s}")
        if self.heartbeat_s is not None and not 0 < self.heartbeat_s < self.lease_s:
            raise ValueError(
                f"heartbeat_s must be positive and shorter than the lease ({self.lease_s} s)"
            )

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(frozenset(self.precisions), node=self.tiers.node)

    @property
    def local_root(self) -> Path:
        """The local tier's directory (it outlives attempts and the worker process)."""
        return self.tiers.local_root or self.scratch_dir / "checkpoints"

    def engine_for(self, precision: str) -> EngineSpec:
        """The engine that renders a job of `precision`."""
        return dataclasses.replace(self.engine, precision=precision)

    @property
    def heartbeat_interval_s(self) -> float:
        return self.heartbeat_s if self.heartbeat_s is not None else self.lease_s / 4
