"""The FastAPI application, built from injected components."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api import dashboard
from api.errors import install_error_handlers, method_table
from api.limits import BodyLimitMiddleware
from api.logs import RequestLogMiddleware
from api.metrics import CONTENT_TYPE, MetricsMiddleware
from api.references import reference_pattern
from api.routes import batches, files, health, jobs, presenters, uploads, voices, webhooks
from api.routes.webhooks import WebhookRequest
from api.schemas import form_schema, job_schema
from api.services import Services
from speech import SpeechError

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
    app.include_router(presenters.router)
    app.include_router(webhooks.router)
    app.include_router(voices.router)
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
        if app.openapi_schema is None:
            app.openapi_schema = _openapi(app, services)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.methods = method_table(app)  # every route is in place: the 405s' Allow
    return app


def _openapi(app: FastAPI, services: Services) -> dict[str, Any]:
    """The OpenAPI document, as strict as the server: the request bodies the routes parse
    themselves, and the bounds this server's configuration (and its speech engines) set."""
    config = services.config
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    template = "#/components/schemas/{model}"
    reference = {"pattern": reference_pattern(config.allowed_input_buckets)}
    job = job_schema(template)
    job["properties"]["image"].update(reference)
    job["properties"]["audio"].update(reference)
    _speech_choices(job["properties"], services)
    bodies = {
        "JobRequest": job,
        "JobForm": form_schema(job),
        "WebhookRequest": WebhookRequest.model_json_schema(ref_template=template),
        **batches.request_schemas(template, reference["pattern"]),
        **presenters.request_schemas(job),
    }
    _speech_choices(bodies["BatchJob"]["properties"], services)
    for name, body in bodies.items():
        components.update(body.pop("$defs", {}))  # nested models, referred to by the template
        components[name] = body
    bounds = {"limit": config.max_page_size, "expires_in": config.presign_max_s}
    for item in schema["paths"].values():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                parameter["schema"] = _not_null(parameter["schema"])
                if parameter["name"] in bounds:
                    parameter["schema"]["maximum"] = bounds[parameter["name"]]
    return schema


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without the null that an optional argument's type carries: an
    omitted parameter is how a request leaves it out (a header or query string cannot be
    null, and "null" is not a value any of them takes)."""
    options = [o for o in schema.get("anyOf", []) if o.get("type") != "null"]
    if len(options) != 1:
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf" and not (k == "default" and v is None)}
    return {**rest, **options[0]}


def _speech_choices(properties: dict[str, Any], services: Services) -> None:
    """The script's bounds on this server: its length, and the engines, languages and voices
    its engines offer (GET /v1/voices says which voice speaks which language)."""
    properties["script"]["maxLength"] = services.config.limits.max_script_chars
    try:
        engines = list(services.speech)
        choices = {
            "speech_engine": [e.name for e in engines],
            "language": sorted({lang for e in engines for lang in e.languages()}),
            "voice": sorted({v.id for e in engines for v in e.voices()}),
        }
    except SpeechError:  # the document is still served; the submission says what is wrong
        return
    for name, values in choices.items():
        properties[name]["anyOf"] = [{"type": "string", "enum": values}, {"type": "null"}]
