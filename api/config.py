"""What the API is configured with (built from settings by the caller, or directly in tests)."""

from __future__ import annotations

from dataclasses import dataclass, field

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

    @property
    def max_request_bytes(self) -> int:
        """Both files plus room for the form fields."""
        return self.max_image_bytes + self.max_audio_bytes + MiB


@dataclass(frozen=True)
class ApiConfig:
    tenant: str = "default"
    """Every job belongs to this tenant until API keys map requests to tenants."""
    limits: InputLimits = field(default_factory=InputLimits)
    allowed_input_buckets: tuple[str, ...] = ()
    """Buckets that `s3://` input references may name; empty disables references."""
    max_attempts: int = 3
    checkpoint_every: int = 10
    """Clips between checkpoints when a request does not say."""
    presign_expires_s: int = 3600
    max_page_size: int = 200
