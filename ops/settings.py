"""Configuration from the environment: the one place that reads it.

Every variable is `LONGTAKE_<FIELD>` (case-insensitive), e.g. LONGTAKE_DATABASE_URL. The
packages never read the environment; they take the typed configs built here.
"""

from __future__ import annotations

import secrets
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from api.config import ApiConfig, InputLimits, MiB

GB = 1e9

# The heavier packages' configs are imported where they are built, so that a client command
# (which needs only the API's URL and key) does not import boto3, Celery and the server.
if TYPE_CHECKING:
    from db.database import Database
    from db.params import WatermarkSpec
    from dispatch.celery_app import CeleryConfig
    from dispatch.reconcile import StorageReconciler
    from dispatch.sweep import ResumePointSweeper
    from dispatch.webhooks import DeliveryConfig
    from speech import SpeechEngines
    from storage.base import Storage
    from storage.s3 import S3Config, S3Reader
    from worker.config import WorkerConfig


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LONGTAKE_", extra="ignore")

    # services
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/longtake"
    broker_url: str = "redis://127.0.0.1:6379/0"
    broker_key_prefix: str = ""
    broker_visibility_timeout_s: int = 12 * 3600

    # object storage
    storage_backend: Literal["s3", "local"] = "s3"
    storage_bucket: str = "longtake"
    storage_prefix: str = ""
    storage_endpoint_url: str | None = None
    storage_public_endpoint_url: str | None = None
    """The bucket's address for clients outside the deployment: presigned result and segment
    URLs are made for it (default: `storage_endpoint_url`)."""
    storage_region: str | None = None
    storage_path_style: bool = False
    storage_dir: Path = Path("var/storage")
    """Root of the local backend."""
    multipart_threshold_mb: int = 64
    allowed_input_buckets: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Comma-separated buckets that s3:// input references may name."""

    # API
    api_url: str = "http://127.0.0.1:8000"
    """Where the API is reached: the CLI's target, and the base of local download links."""
    host: str = "127.0.0.1"
    port: int = 8000
    tenant: str = "default"
    """The tenant of embedded mode's local key, and of every request when auth is off."""
    auth: Literal["keys", "off"] = "keys"
    """`keys`: requests need an API key. `off` (loopback servers only): no keys."""
    api_key: str | None = None
    """The key client commands send (default: embedded mode's key file, <data_dir>/api-key)."""
    auth_cache_s: float = 5.0
    rate_limit_per_s: float = 50.0
    """Requests per second per API key unless the key says otherwise (0: unlimited)."""
    rate_limit_redis_url: str | None = None
    """Where API processes share rate limits (default: the broker's Redis; "" for none)."""
    max_queued_jobs: int = 100_000
    """Unfinished jobs a tenant may have, unless its own limit says otherwise."""
    max_batch_jobs: int = 10_000
    database_pool_size: int = 10
    database_idle_transaction_timeout_s: float = 60.0
    """Postgres ends a session of ours that sits idle inside a transaction this long, which
    releases its row locks: a process frozen mid-transaction (a paused VM, SIGSTOP, a swap
    storm) cannot keep its job from the reaper, or another worker, for longer (0: never)."""
    api_workers: int = 1
    """API processes `longtake serve` runs (each with its own pool, relay and delivery loop)."""
    serve_relay: bool = True
    """Whether `longtake serve` runs the outbox relay and reaper beside the API."""
    log_format: Literal["json", "text"] = "json"
    webhook_timeout_s: float = 10.0
    webhook_max_attempts: int = 12
    webhook_backoff_s: float = 5.0
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Comma-separated host names and networks (CIDR) webhooks may reach although they are
    not public, e.g. `hooks.corp.internal,10.20.0.0/16`. Everything else must resolve to public
    addresses only: loopback, private, link-local and metadata addresses are refused."""
    signing_key: str | None = None
    """HMAC key of local download links; a random one per process when unset."""
    presign_expires_s: int = 3600
    presign_max_s: int = 7 * 24 * 3600

    # input limits
    max_image_mb: int = 20
    max_image_pixels: int = 40_000_000
    max_audio_mb: int = 1024
    max_audio_seconds: float = 4 * 3600
    max_script_chars: int = 20_000
    """The longest script a job may carry, in characters (about 20 minutes of speech)."""

    # speech from scripts (docs/speech.md)
    speech_engines: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["espeak-ng"])
    """Comma-separated engines that synthesise scripts, the first the default: `espeak-ng`
    (the embedded engine) or `module:function`, a factory given `speech_voice_dir`."""
    speech_voice_dir: Path | None = None
    """The voice files the operator provides to engines of their own (never downloaded)."""
    speech_timeout_s: float = 120.0
    """The longest one synthesis may take before the submission is refused (503)."""
    espeak_ng_path: str = "espeak-ng"
    """The espeak-ng program."""

    # jobs
    max_attempts: int = 3
    checkpoint_every: int = 20
    """Clips between checkpoints when a job does not say: keeps a 14B render's checkpoint cost
    near 1% on one GPU (docs/benchmarks.md, the lifecycle section)."""
    lease_s: int = 120
    relay_poll_s: float = 0.5
    redispatch_after_s: float = 3600
    soft_shutdown_timeout_s: float = 60
    resume_retention_days: float = 7.0
    """Days a failed or canceled job keeps its checkpoint and segments for a retry to resume
    from (dispatch/sweep.py); 0 keeps them until the job is retried."""
    sweep_interval_s: float = 3600
    reconcile_grace_hours: float = 6.0
    """Objects that no job or upload accounts for are removed once this old
    (dispatch/reconcile.py), by the relay's loop every `sweep_interval_s`."""

    # render worker
    model_preset: str = "tiny"
    """`tiny` (random weights, CPU-friendly) or `liveavatar-14b` (weights under model_dir)."""
    model_device: str = "auto"
    model_dir: Path = Path("checkpoints")
    model_random_weights: bool = False
    """Build the preset with random weights (benchmarks; speed does not depend on values)."""
    engine_factory: str | None = None
    """`module:function` building another engine from the worker's EngineSpec, e.g.
    `worker.engine:multi_gpu_engine` (Timestep-forcing Pipeline Parallelism on the GPUs)."""
    engine_ranks: int = 0
    """Devices of a multi-device engine (0: every GPU the worker sees)."""
    torch_threads: int = 0
    presenter_cache_gpu_gb: float = 8
    """The worker's presenter cache on the GPU (a CPU worker: in memory): encodings of recent
    presenters kept across jobs, so that a repeat presenter's stream opens in about a second
    (0: none on the GPU)."""
    presenter_cache_host_gb: float = 16
    """Its second tier, in page-locked host memory, for presenters pushed off the GPU (0: none;
    both 0: no presenter cache)."""
    precisions: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["bf16"])
    """The DiT precisions this worker serves (comma-separated: bf16, fp8, fp8-attention); it
    claims only jobs of these, and loads the model once per precision it meets."""
    default_precision: str = "bf16"
    """The precision of a job that does not name one (the API's default)."""
    node_id: str = Field(default_factory=socket.gethostname)
    """This node's name: its workers keep local checkpoints under it (default: the host name;
    give each node's workers the same, and every node its own)."""
    local_checkpoints: bool = True
    """Keep a checkpoint on the node's disk every interval (the local tier); false: every
    checkpoint goes to the bucket."""
    local_checkpoint_dir: Path | None = None
    """The local tier's directory (default <scratch>/checkpoints): on the node's own disk,
    kept across worker restarts."""
    local_checkpoint_max_gb: float = 0
    """The most the node's local checkpoints may take (0: what the disk has free)."""
    local_checkpoint_reserve_gb: float = 10
    """Free space a local checkpoint must leave on its disk."""
    checkpoint_upload_mb_per_s: float = 50
    """The node's budget for checkpoint uploads to the bucket (MB/s on average)."""
    checkpoint_upload_max_minutes: float = 30
    """A checkpoint reaches the bucket at least this often, whatever the budget (0: never
    forced)."""
    prefer_local_s: float = 120
    """A requeued job whose newest checkpoint is on one node's disk waits this long for a worker
    there before any worker may take it."""
    worker_preload: bool = True
    """`longtake worker` starts building its engine (for the first of its precisions) as it
    starts, not at its first job: the model loads while Celery connects and the job is
    claimed, and a restarted worker's resume finds it loaded or loading."""
    worker_respawn: bool = True
    """`longtake worker` runs the worker in a fork of a parent that imports the worker's
    modules once and replaces a worker process that dies (ops/respawn.py)."""
    compile_cache_dir: Path | None = None
    """torch.compile's kernel cache (default <scratch>/compile-cache): on the node's disk, kept
    across worker restarts, so a restarted worker does not compile its kernels again."""
    scratch_dir: Path | None = None
    """The worker's local working files (default: <tmp>/longtake-worker; embedded: data_dir)."""
    heartbeat_s: float | None = None
    progress_interval_s: float = 1.0
    encoder_preset: str = "veryfast"
    encoder_crf: int = 20
    watermark_enabled: bool = True
    """False turns the visible "AI-generated" mark off for every job."""
    watermark_text: str = "AI-generated"
    watermark_corner: str = "bottom-right"
    keep_segments: bool = False
    """Keep the segments in storage after a job succeeds (the output holds the same frames)."""
    checkpoint_mode: Literal["auto", "capture", "directory"] = "auto"
    """How the worker takes a checkpoint (worker/config.py): auto asks the engine."""
    fault: str | None = None
    """Crash injection for the fault-tolerance tests (worker/faults.py); never in production."""

    # embedded mode
    data_dir: Path = Path("var")
    embedded_handler: str | None = "dispatch.embedded:make_render_handler"
    """`module:function` returning the job handler of embedded mode, given these settings
    (the render lifecycle by default; empty: no handler, jobs stay queued)."""

    @field_validator(
        "allowed_input_buckets", "precisions", "webhook_allowed_hosts", "speech_engines",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _split_list(cls, v: object) -> object:
        if isinstance(v, str):
            return [b.strip() for b in v.split(",") if b.strip()]
        return v

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _check_hosts(cls, v: list[str]) -> list[str]:
        if v:  # (imported only then: a client command's settings need no database code)
            from db.webhooks import TargetPolicy

            TargetPolicy.from_hosts(v)  # a ValueError naming the entry that is neither
        return v

    def embedded(self) -> Settings:
        """The embedded variant: SQLite and local files under the data directory."""
        data = self.data_dir.resolve()
        return self.model_copy(
            update={
                "database_url": f"sqlite:///{data / 'longtake.sqlite3'}",
                "storage_backend": "local",
                "storage_dir": data / "storage",
                "scratch_dir": self.scratch_dir or data / "scratch",
            }
        )

    # ---- typed configs for the packages

    def s3_config(self) -> S3Config:
        from storage.s3 import S3Config

        return S3Config(
            bucket=self.storage_bucket,
            prefix=self.storage_prefix,
            endpoint_url=self.storage_endpoint_url,
            public_endpoint_url=self.storage_public_endpoint_url,
            region=self.storage_region,
            path_style=self.storage_path_style,
            multipart_threshold=self.multipart_threshold_mb * MiB,
            multipart_chunksize=self.multipart_threshold_mb * MiB,
        )

    def make_sweeper(self, database: Database, storage: Storage) -> ResumePointSweeper | None:
        """The relay's sweep of old resume points, or None when they are kept."""
        if self.resume_retention_days <= 0:
            return None
        from dispatch.sweep import ResumePointSweeper

        return ResumePointSweeper(
            database,
            storage,
            retention_s=self.resume_retention_days * 86400,
            interval_s=self.sweep_interval_s,
        )

    def make_reconciler(self, database: Database, storage: Storage) -> StorageReconciler:
        """The relay's removal of objects that no row accounts for."""
        from dispatch.reconcile import StorageReconciler

        return StorageReconciler(
            database,
            storage,
            grace_s=self.reconcile_grace_hours * 3600,
            keep_segments=self.keep_segments,
            interval_s=self.sweep_interval_s,
        )

    def make_storage(self) -> Storage:
        from storage.local import LocalStorage
        from storage.s3 import S3Storage
        from storage.signing import UrlSigner

        if self.storage_backend == "local":
            secret = (self.signing_key or secrets.token_hex(32)).encode()
            return LocalStorage(self.storage_dir, signer=UrlSigner(secret, self.api_url))
        return S3Storage(self.s3_config())

    def make_s3_reader(self, storage: Storage) -> S3Reader | None:
        from storage.s3 import S3Reader, S3Storage, make_client

        if not self.allowed_input_buckets:
            return None
        client = storage.client if isinstance(storage, S3Storage) else make_client(self.s3_config())
        return S3Reader(client)

    @property
    def api_key_file(self) -> Path:
        """Embedded mode writes its local API key here."""
        return self.data_dir / "api-key"

    def make_database(self, *, pooled: bool = False) -> Database:
        """The database, as every process of ours opens it; `pooled`: with the API's pool."""
        from db.database import Database

        pool = (
            {"pool_size": self.database_pool_size, "max_overflow": self.database_pool_size}
            if pooled
            else {}
        )
        return Database(
            self.database_url,
            idle_transaction_timeout_s=self.database_idle_transaction_timeout_s,
            **pool,
        )

    def delivery_config(self) -> DeliveryConfig:
        from dispatch.webhooks import DeliveryConfig

        return DeliveryConfig(
            timeout_s=self.webhook_timeout_s,
            max_attempts=self.webhook_max_attempts,
            backoff_base_s=self.webhook_backoff_s,
            allowed_hosts=tuple(self.webhook_allowed_hosts),
        )

    def api_config(self) -> ApiConfig:
        return ApiConfig(
            tenant=self.tenant,
            auth_required=self.auth == "keys",
            auth_cache_s=self.auth_cache_s,
            rate_limit_per_s=self.rate_limit_per_s,
            max_queued_jobs=self.max_queued_jobs,
            max_batch_jobs=self.max_batch_jobs,
            presign_max_s=self.presign_max_s,
            limits=InputLimits(
                max_image_bytes=self.max_image_mb * MiB,
                max_image_pixels=self.max_image_pixels,
                max_audio_bytes=self.max_audio_mb * MiB,
                max_audio_seconds=self.max_audio_seconds,
                max_script_chars=self.max_script_chars,
            ),
            allowed_input_buckets=tuple(self.allowed_input_buckets),
            model_preset=self.model_preset,
            default_precision=self.default_precision,
            max_attempts=self.max_attempts,
            checkpoint_every=self.checkpoint_every,
            presign_expires_s=self.presign_expires_s,
            webhook_allowed_hosts=tuple(self.webhook_allowed_hosts),
            watermark=self.watermark_spec(),
            watermark_allowed=self.watermark_enabled,
        )

    def make_speech(self) -> SpeechEngines:
        """The speech engines scripts are synthesised with, the first the default."""
        from speech import SpeechEngines, load_engine

        return SpeechEngines(
            [
                load_engine(
                    spec,
                    voice_dir=self.speech_voice_dir,
                    espeak_path=self.espeak_ng_path,
                    timeout_s=self.speech_timeout_s,
                )
                for spec in self.speech_engines
            ]
        )

    def watermark_spec(self) -> WatermarkSpec:
        """The operator's mark (jobs may change its text and look, not whether it is there)."""
        from db.params import WatermarkSpec

        return WatermarkSpec.model_validate(
            {"text": self.watermark_text, "corner": self.watermark_corner}
        )

    def worker_config(self) -> WorkerConfig:
        from worker.config import EngineSpec, WorkerConfig, default_scratch_dir
        from worker.segments import EncoderSettings
        from worker.tiers import TierSettings

        scratch = self.scratch_dir or default_scratch_dir()
        return WorkerConfig(
            lease_s=self.lease_s,
            heartbeat_s=self.heartbeat_s,
            progress_interval_s=self.progress_interval_s,
            soft_shutdown_timeout_s=self.soft_shutdown_timeout_s,
            scratch_dir=scratch,
            tiers=TierSettings(
                node=self.node_id,
                local=self.local_checkpoints,
                local_root=self.local_checkpoint_dir,
                local_max_bytes=int(self.local_checkpoint_max_gb * GB),
                local_reserve_bytes=int(self.local_checkpoint_reserve_gb * GB),
                upload_bytes_per_s=self.checkpoint_upload_mb_per_s * 1e6,
                upload_max_interval_s=self.checkpoint_upload_max_minutes * 60,
                prefer_local_s=self.prefer_local_s,
            ),
            precisions=tuple(self.precisions),
            preload=self.worker_preload,
            engine=EngineSpec(
                preset=self.model_preset,
                device=self.model_device,
                checkpoint_dir=self.model_dir,
                random_weights=self.model_random_weights,
                factory=self.engine_factory,
                ranks=self.engine_ranks,
                torch_threads=self.torch_threads,
                compile_cache_dir=self.compile_cache_dir or scratch / "compile-cache",
                presenter_cache_gpu_bytes=int(self.presenter_cache_gpu_gb * GB),
                presenter_cache_host_bytes=int(self.presenter_cache_host_gb * GB),
            ),
            encoder=EncoderSettings(preset=self.encoder_preset, crf=self.encoder_crf),
            watermark=self.watermark_spec(),
            watermark_allowed=self.watermark_enabled,
            keep_segments=self.keep_segments,
            checkpoint_mode=self.checkpoint_mode,
            fault=self.fault,
        )

    def celery_config(self) -> CeleryConfig:
        from dispatch.celery_app import CeleryConfig

        return CeleryConfig(
            broker_url=self.broker_url,
            key_prefix=self.broker_key_prefix,
            visibility_timeout_s=self.broker_visibility_timeout_s,
            soft_shutdown_timeout_s=self.soft_shutdown_timeout_s,
        )
