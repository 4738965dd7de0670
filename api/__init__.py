"""HTTP API: validation, auth, idempotency, progress and result URLs (FastAPI, versioned under /v1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.lazy import exports

if TYPE_CHECKING:
    from api.app import create_app
    from api.config import ApiConfig, InputLimits
    from api.services import Services

__all__ = ["ApiConfig", "InputLimits", "Services", "create_app"]

# Loaded on first use, so that importing a light module of this package (`api.client`, the
# CLI's HTTP client; `api.config`) does not import FastAPI, SQLAlchemy and the whole app.
_EXPORTS = {
    "ApiConfig": "api.config",
    "InputLimits": "api.config",
    "Services": "api.services",
    "create_app": "api.app",
}


__getattr__ = exports(__name__, _EXPORTS)
