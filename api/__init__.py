"""HTTP API: validation, auth, idempotency, progress and result URLs (FastAPI, versioned under /v1)."""
