"""The FastAPI application, built from injected components."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api import dashboard
from api.errors import install_error_handlers
from api.limits import BodyLimitMiddleware
from api.logs import RequestLogMiddleware
from api.metrics import CONTENT_TYPE, MetricsMiddleware
from api.routes import batches, files, health, jobs, uploads, webhooks
from api.schemas import JobRequest
from api.services import Services

DESCRIPTION = """Queued, resumable renders of long talking-avatar videos.

Authenticate with an API key: `Authorization: Bearer <key>` (`longtake keys create`).
Errors are JSON: `{"error": {"code", "message", "field"}}`. See docs/api.md for webhooks
(signatures), Server-Sent Events and batches.
"""


def create_app(services: Services) -> FastAPI:
    app = FastAPI(title="longtake", version="1", description=DESCRIPTION)
    app.state.services = services
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(batches.router)
    app.include_router(uploads.router)
    app.include_router(webhooks.router)
    app.include_router(files.router)
    dashboard.install(app)  # the web dashboard at /

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics (text exposition format)."""
        await run_in_threadpool(services.metrics.refresh)
        return Response(services.metrics.render(), media_type=CONTENT_TYPE)

    # outermost first: the access log sees every answer, the size limit acts before routing
    app.add_middleware(BodyLimitMiddleware, max_bytes=services.config.request_cap)
    app.add_middleware(MetricsMiddleware, metrics=services.metrics)
    app.add_middleware(RequestLogMiddleware)

    def openapi() -> dict[str, Any]:
        # POST /v1/jobs and /v1/batches parse their bodies themselves; publish the schemas.
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            template = "#/components/schemas/{model}"
            components["JobRequest"] = JobRequest.model_json_schema(ref_template=template)
            components["BatchRequest"] = batches.BatchRequest.model_json_schema(
                ref_template=template
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
