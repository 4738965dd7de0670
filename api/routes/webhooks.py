"""/v1/webhooks: register where a tenant's job events go, and read the delivery log.

A webhook without a `job_id` receives the events of every job of the tenant; one with a
`job_id` only that job's (a job request's `webhook_url` makes such one). Deliveries are signed
with the webhook's secret: its own, or the tenant's (GET /v1/webhooks/secret).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor

from api.auth import Caller
from api.deps import CallerDep, ServicesDep
from api.errors import ApiError, error_responses, pydantic_error
from api.limits import read_json_object
from api.routes.jobs import page_size
from api.schemas import (
    WEBHOOK_EVENTS_SCHEMA,
    WEBHOOK_ID_PATTERN,
    WEBHOOK_SECRET_SCHEMA,
    WEBHOOK_URL_SCHEMA,
    After,
    PageSize,
    check_webhook_events,
    check_webhook_secret,
    check_webhook_url,
    id_links,
)
from api.services import Services
from db import job_store, tenants, webhooks
from db.models import Webhook, WebhookDelivery

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=error_responses())


class WebhookIdConvertor(Convertor[str]):
    """Only a webhook id is one: /v1/webhooks/secret is not webhook "secret" (so DELETE there
    is a 405, not a lookup), and no other text reaches the database."""

    regex = WEBHOOK_ID_PATTERN.strip("^$")

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("webhook_id", WebhookIdConvertor())


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(
        description="An http:// or https:// URL that accepts POSTs. Its host must resolve to "
        "public addresses only, unless the operator allows it.",
        json_schema_extra=WEBHOOK_URL_SCHEMA,
    )
    events: list[str] = Field(
        default_factory=lambda: list(webhooks.WEBHOOK_EVENTS),
        description="Any of " + ", ".join(webhooks.WEBHOOK_EVENTS) + "; all by default.",
        json_schema_extra=WEBHOOK_EVENTS_SCHEMA,
    )
    job_id: uuid.UUID | None = Field(None, strict=False, description="Only this job's events.")
    secret: str | None = Field(
        None,
        description="16 to 128 characters; the tenant's webhook secret when omitted.",
        json_schema_extra=WEBHOOK_SECRET_SCHEMA,
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_webhook_url(v)

    @field_validator("events")
    @classmethod
    def _events(cls, v: list[str]) -> list[str]:
        return check_webhook_events(v)

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: str | None) -> str | None:
        return None if v is None else check_webhook_secret(v)


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    job_id: uuid.UUID | None
    created_at: datetime
    links: dict[str, str]

    @classmethod
    def of(cls, hook: Webhook) -> WebhookOut:
        return cls(
            id=hook.id,
            url=hook.url,
            events=hook.events,
            job_id=hook.job_id,
            created_at=hook.created_at,
            links={"deliveries": f"/v1/webhooks/{hook.id}/deliveries"},
        )


class WebhookList(BaseModel):
    webhooks: list[WebhookOut]


class SecretOut(BaseModel):
    secret: str = Field(description="Signs the webhooks registered without a secret of their own.")


class DeliveryOut(BaseModel):
    id: int
    webhook_id: str
    event_id: int
    event_type: str
    job_id: uuid.UUID
    status: str = Field(description="pending, delivered or failed (attempts exhausted).")
    attempts: int
    failures: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, d: WebhookDelivery) -> DeliveryOut:
        return cls(
            id=d.id,
            webhook_id=d.webhook_id,
            event_id=d.event_id,
            event_type=d.event_type,
            job_id=d.job_id,
            status=d.status,
            attempts=d.attempts,
            failures=d.failures,
            last_status_code=d.last_status_code,
            last_error=d.last_error,
            next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
            last_attempt_at=d.last_attempt_at,
            delivered_at=d.delivered_at,
            created_at=d.created_at,
        )


class DeliveryList(BaseModel):
    deliveries: list[DeliveryOut]
    next_after: int | None = Field(description="Pass as `after` for the next page.")


WEBHOOK_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/WebhookRequest"}}
        },
    }
}


@router.post(
    "",
    status_code=201,
    response_model=WebhookOut,
    openapi_extra=WEBHOOK_DOC,
    responses={
        201: {
            "description": "the webhook",
            "links": id_links(
                "webhook_id",
                GetWebhook=("get", "/v1/webhooks/{webhook_id}"),
                DeleteWebhook=("delete", "/v1/webhooks/{webhook_id}"),
                GetDeliveries=("get", "/v1/webhooks/{webhook_id}/deliveries"),
            ),
        },
        **error_responses(404, 413, 415),
    },
)
async def create_webhook(request: Request, services: ServicesDep, caller: CallerDep) -> WebhookOut:
    """Register a URL for the tenant's job events (or one job's)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the webhook as application/json")
    raw = await read_json_object(request, services.config.max_json_bytes)
    try:
        body = WebhookRequest.model_validate(raw)
    except ValidationError as e:
        raise pydantic_error(list(e.errors())) from None
    return await run_in_threadpool(_create_webhook, services, caller, body)


def _create_webhook(services: Services, caller: Caller, body: WebhookRequest) -> WebhookOut:
    services.check_webhook_url(body.url, "url")
    with services.database.transaction() as s:
        if (
            body.job_id is not None
            and job_store.get_job(s, body.job_id, tenant=caller.tenant) is None
        ):
            raise ApiError(404, "job_not_found", f"job {body.job_id} does not exist")
        secret = body.secret or tenants.ensure_tenant(s, caller.tenant).webhook_secret
        hook = webhooks.create_webhook(
            s,
            tenant=caller.tenant,
            url=body.url,
            events=body.events,
            secret=secret,
            job_id=body.job_id,
        )
    return WebhookOut.of(hook)


@router.get("", response_model=WebhookList)
def list_webhooks(
    services: ServicesDep,
    caller: CallerDep,
    job_id: Annotated[uuid.UUID | None, Query(description="This job's webhooks instead.")] = None,
) -> WebhookList:
    """The tenant-wide webhooks (or one job's)."""
    with services.database.transaction() as s:
        hooks = webhooks.list_webhooks(s, tenant=caller.tenant, job_id=job_id)
    return WebhookList(webhooks=[WebhookOut.of(h) for h in hooks])


@router.get("/secret", response_model=SecretOut)
def get_secret(services: ServicesDep, caller: CallerDep) -> SecretOut:
    """The tenant's webhook secret (HMAC-SHA256 key of webhooks without their own)."""
    with services.database.transaction() as s:
        return SecretOut(secret=tenants.ensure_tenant(s, caller.tenant).webhook_secret)


WebhookId = Annotated[
    str,
    Path(description="wh_ and 24 hex digits.", json_schema_extra={"pattern": WEBHOOK_ID_PATTERN}),
]


def _owned(s: Any, caller: Any, webhook_id: str) -> Webhook:
    """The caller's webhook (the route's path admits only webhook ids); 404 for another
    tenant's or a deleted one."""
    hook = webhooks.get_webhook(s, webhook_id, tenant=caller.tenant)
    if hook is None:
        raise ApiError(404, "webhook_not_found", f"webhook {webhook_id} does not exist")
    return hook


@router.get("/{webhook_id:webhook_id}", response_model=WebhookOut, responses=error_responses(404))
def get_webhook(webhook_id: WebhookId, services: ServicesDep, caller: CallerDep) -> WebhookOut:
    with services.database.transaction() as s:
        return WebhookOut.of(_owned(s, caller, webhook_id))


@router.delete("/{webhook_id:webhook_id}", status_code=204, responses=error_responses(404))
def delete_webhook(webhook_id: WebhookId, services: ServicesDep, caller: CallerDep) -> None:
    """No more deliveries to it; its pending ones are dropped. It is gone, with its delivery
    log: GET and DELETE answer 404 from now on."""
    with services.database.transaction() as s:
        webhooks.disable_webhook(s, _owned(s, caller, webhook_id))


@router.get(
    "/{webhook_id:webhook_id}/deliveries",
    response_model=DeliveryList,
    responses=error_responses(404),
)
def list_deliveries(
    webhook_id: WebhookId,
    services: ServicesDep,
    caller: CallerDep,
    job_id: Annotated[uuid.UUID | None, Query(description="Only this job's.")] = None,
    after: After = None,
    limit: PageSize = 100,
) -> DeliveryList:
    """The delivery log: every event queued for this webhook, oldest first, with its attempts,
    last response code and error."""
    limit = page_size(services, limit)
    with services.database.transaction() as s:
        _owned(s, caller, webhook_id)
        rows = webhooks.list_deliveries(
            s, webhook_id=webhook_id, job_id=job_id, after_id=after, limit=limit + 1
        )
    page = rows[:limit]
    return DeliveryList(
        deliveries=[DeliveryOut.of(d) for d in page],
        next_after=page[-1].id if len(rows) > limit else None,
    )
