"""What the routes work with: configuration and the components they call (injected)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from api.config import ApiConfig
from api.errors import ApiError
from db.database import Database
from db.webhooks import Resolver, TargetPolicy, WebhookTargetError
from storage.base import Storage
from storage.s3 import S3Reader

if TYPE_CHECKING:
    from api.auth import Authenticator
    from api.metrics import Metrics
    from api.quota import QuotaCounter
    from api.ratelimit import RateLimiter
    from api.references import UploadCache
    from speech import SpeechEngines


@dataclass
class Services:
    config: ApiConfig
    database: Database
    storage: Storage
    s3_reader: S3Reader | None = None
    """Reads `s3://` input references; None disables them."""
    on_job_queued: Callable[[], None] | None = None
    """Called after a job (and its outbox row) is committed, e.g. to wake the relay at once."""
    readiness: dict[str, Callable[[], None]] = field(default_factory=dict)
    """Named checks for /readyz: each raises when its dependency is unreachable."""
    rate_limiter: RateLimiter | Any = None
    """Per-key token buckets; in memory unless given (Redis when API processes share them)."""
    authenticator: Authenticator | Any = None
    metrics: Metrics | Any = None
    quota: QuotaCounter | Any = None
    """Unfinished jobs per tenant, counted at most once a second per process."""
    upload_cache: UploadCache | Any = None
    stopping: threading.Event = field(default_factory=threading.Event)
    """Set when the process shuts down: open event streams end."""
    resolver: Resolver | None = None
    """Resolves webhook hosts (the system's resolver by default)."""
    speech: SpeechEngines | Any = None
    """The engines that synthesise scripts (espeak-ng alone by default)."""

    def __post_init__(self) -> None:
        # built here by default so that tests and embedded mode need to pass nothing
        from api.auth import Authenticator
        from api.metrics import Metrics
        from api.quota import QuotaCounter
        from api.ratelimit import MemoryRateLimiter
        from api.references import UploadCache

        if self.rate_limiter is None:
            self.rate_limiter = MemoryRateLimiter()
        if self.authenticator is None:
            self.authenticator = Authenticator(self.database, self.config)
        if self.metrics is None:
            self.metrics = Metrics(self.database)
        if self.quota is None:
            self.quota = QuotaCounter()
        if self.upload_cache is None:
            self.upload_cache = UploadCache()
        if self.speech is None:
            from speech import EspeakEngine, SpeechEngines

            self.speech = SpeechEngines([EspeakEngine()])

    def webhook_targets(self) -> TargetPolicy:
        return TargetPolicy.from_hosts(self.config.webhook_allowed_hosts, self.resolver)

    def check_webhook_url(self, url: str, field: str) -> None:
        """422 naming `field` unless webhooks may be delivered to `url` (its host is resolved:
        call from a worker thread)."""
        try:
            self.webhook_targets().resolve(url)
        except WebhookTargetError as e:
            raise ApiError(422, "invalid_parameter", f"{field}: {e}", field) from None

    def job_queued(self) -> None:
        if self.on_job_queued is not None:
            self.on_job_queued()
