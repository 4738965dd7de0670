"""HTTP API: validation, auth, idempotency, progress and result URLs (FastAPI, versioned under /v1)."""

from api.app import create_app
from api.config import ApiConfig, InputLimits
from api.services import Services

__all__ = ["ApiConfig", "InputLimits", "Services", "create_app"]
