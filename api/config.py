"""What the API is configured with (built from settings by the caller, or directly in tests)."""

from __future__ import annotations

from dataclasses import dataclass, field

from db.params import WatermarkSpec
from pipeline import params

MiB = 1024 * 1024


@dataclass(frozen=True)
class InputLimits:
    max_image_bytes: int = 20 * MiB
    max_image_pixels: int = 40_000_000
    min_image_side: int = 64
    max_audio_bytes: int = 1024 * MiB
    max_audio_seconds: float = 4 * 3600
    max_prompt_chars: int = params.PROMPT_MAX_CHARS
    max_num_clips: int = params.NUM_CLIPS_MAX
    max_checkpoint_every: int = 10_000
    max_script_chars: int = 20_000
    """A job's script, in characters (about 20 minutes of speech at the default)."""

    @property
    def max_request_bytes(self) -> int:
        """Both files plus room for the form fields."""
        return self.max_image_bytes + self.max_audio_bytes + MiB


@dataclass(frozen=True)
class ApiConfig:
    tenant: str = "default"
    """The tenant of every request when authentication is off."""
    auth_required: bool = True
    """Requests need `Authorization: Bearer <API key>`; off only for a loopback server."""
    auth_cache_s: float = 5.0
    """How long a key lookup is reused: a revoked key stops working within this time."""
    limits: InputLimits = field(default_factory=InputLimits)
    """The input limits of tenants that have none of their own."""
    max_request_bytes: int | None = None
    """No request body may exceed this (default: what the largest upload needs)."""
    max_json_bytes: int = MiB
    max_batch_bytes: int = 32 * MiB
    max_batch_jobs: int = 10_000
    max_queued_jobs: int = 100_000
    """Unfinished (queued, running, stitching) jobs a tenant may have at once, by default."""
    rate_limit_per_s: float = 50.0
    """Requests per second per API key by default (0: unlimited); bursts of twice that."""
    allowed_input_buckets: tuple[str, ...] = ()
    """Buckets that `s3://` input references may name; empty disables references."""
    model_preset: str = "tiny"
    """The model preset this deployment's workers run (LONGTAKE_MODEL_PRESET): the submit form
    and the CLI suggest a size that suits it."""
    default_precision: str = "bf16"
    """The DiT precision of a job that does not name one (LONGTAKE_DEFAULT_PRECISION)."""
    max_attempts: int = 3
    checkpoint_every: int = 10
    """Clips between checkpoints when a request does not say."""
    presign_expires_s: int = 3600
    """Default lifetime of result and segment URLs."""
    presign_max_s: int = 7 * 24 * 3600
    """The longest lifetime a client may ask for (S3 signatures last at most 7 days)."""
    max_page_size: int = 200
    webhook_allowed_hosts: tuple[str, ...] = ()
    """Host names and networks (CIDR) webhooks may reach although they are not public."""
    watermark: WatermarkSpec = field(default_factory=WatermarkSpec)
    """The operator's visible mark, which every job's frames get (jobs may change its text
    and look): checked at submit to fit the job's output size."""
    watermark_allowed: bool = True
    sse_poll_s: float = 0.5
    """How often an event stream looks for new events."""
    sse_keepalive_s: float = 15.0

    @property
    def request_cap(self) -> int:
        return self.max_request_bytes or max(
            self.limits.max_request_bytes, self.max_batch_bytes, self.max_json_bytes
        )
