"""The web dashboard: static files served at `/` (plain HTML, JavaScript modules and CSS; no
build step, nothing fetched from anywhere else), and the choices its submit form offers.

The page is a client of the /v1 API like any other. The user signs in with an API key, which
the page keeps in the tab's sessionStorage and sends as `Authorization: Bearer`; it reads event
streams with `fetch` (which can send that header; `EventSource` cannot), so the API needs no
other way to authenticate. The files themselves hold nothing secret and need no key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

from api.config import ApiConfig, InputLimits
from api.schemas import JobRequest
from pipeline import params as P

STATIC_DIR = Path(__file__).parent / "static"
PREFIX = "/dashboard"

# Scripts, styles and fetches from this origin only. Videos may come from the storage's own
# origin (presigned S3 URLs), so media may load from any http(s) URL; blob: and data: are the
# local previews of the files being submitted.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' blob: data:",
        "media-src 'self' blob: http: https:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Cache-Control": "no-cache",  # revalidate: an upgraded server serves its own files at once
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
PAGE_HEADERS = {**HEADERS, "Content-Security-Policy": CONTENT_SECURITY_POLICY}


class DashboardFiles(StaticFiles):
    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(HEADERS)
        return response


SUGGESTED_SIZES = {"tiny": "128*128"}
"""The size a submission is offered by default, by the model preset the workers run, where it
is not the model's own default (P.SIZE_DEFAULT): the tiny preset exists for CPUs, where 720*400
renders at well under 1 frame per second."""


def suggested_size(model_preset: str) -> str:
    return SUGGESTED_SIZES.get(model_preset, P.SIZE_DEFAULT)


def form_options(config: ApiConfig) -> dict[str, Any]:
    """What the submit form (and `longtake submit`) offers, from the same constants the API
    validates against, and the size that suits the model this deployment runs."""
    priority = JobRequest.model_json_schema()["properties"]["priority"]
    step = P.FRAMES_PER_BLOCK_VIDEO
    return {
        "sizes": list(P.SIZES),
        "model_preset": config.model_preset,
        "default_size": suggested_size(config.model_preset),
        "infer_frames": list(range(P.INFER_FRAMES_MIN, P.INFER_FRAMES_MAX + 1, step)),
        "default_infer_frames": P.INFER_FRAMES_DEFAULT,
        "sample_steps": {
            "min": P.SAMPLE_STEPS_MIN,
            "max": P.SAMPLE_STEPS_MAX,
            "default": P.SAMPLE_STEPS_DEFAULT,
        },
        "priority": {"min": priority["minimum"], "max": priority["maximum"]},
        "checkpoint_every_max": InputLimits().max_checkpoint_every,
        "num_clips_max": P.NUM_CLIPS_MAX,
        "prompt_max_chars": P.PROMPT_MAX_CHARS,
        "script_max_chars": config.limits.max_script_chars,
        "fps": P.FPS,
        # whether to ask for a key at all (LONGTAKE_AUTH=off serves loopback clients without)
        "auth_required": config.auth_required,
    }


def install(app: FastAPI) -> None:
    """The page at `/`, its files under /dashboard/ (none of it in the OpenAPI description)."""

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    @app.get(f"{PREFIX}/options.json", include_in_schema=False)
    def dashboard_options(request: Request) -> dict[str, Any]:
        return form_options(request.app.state.services.config)

    app.mount(PREFIX, DashboardFiles(directory=STATIC_DIR), name="dashboard")
