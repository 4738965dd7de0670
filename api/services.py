"""What the routes work with: configuration and the components they call (injected)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request

from api.config import ApiConfig
from db.database import Database
from storage.base import Storage
from storage.s3 import S3Reader


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

    def job_queued(self) -> None:
        if self.on_job_queued is not None:
            self.on_job_queued()


def get_services(request: Request) -> Services:
    return request.app.state.services
