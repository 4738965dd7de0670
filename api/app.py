"""The FastAPI application, built from injected components."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.errors import install_error_handlers
from api.routes import files, health, jobs
from api.schemas import JobRequest
from api.services import Services


def create_app(services: Services) -> FastAPI:
    app = FastAPI(
        title="longtake",
        version="1",
        description="Queued, resumable renders of long talking-avatar videos.",
    )
    app.state.services = services
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(files.router)

    def openapi() -> dict[str, Any]:
        # POST /v1/jobs parses its body itself (multipart or JSON); publish the JSON schema.
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {})["JobRequest"] = (
                JobRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
