"""HTTP API: validation, auth, idempotency, progress and result URLs (FastAPI, versioned under /v1)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'api' has no attribute {name!r}")
