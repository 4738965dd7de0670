"""Webhook delivery to a real HTTP receiver on loopback: signed, filtered, retried with
backoff until delivered (at least once), logged, and harmless to repeat for a receiver that
deduplicates on the event id."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from db import leases, webhooks
from dispatch.signatures import HEADER, sign, verify
from dispatch.webhooks import DeliveryConfig, WebhookDeliverer
from storage import keys
from tests.factories import lease_for

SECRET = "whsec_receiver-test-secret"
FAST = DeliveryConfig(timeout_s=1.0, backoff_base_s=0.05, backoff_cap_s=0.2, poll_s=0.05)


class Receiver:
    """An HTTP endpoint that checks signatures, applies each event once (dedup by event id)
    and can be told to fail or stall its next requests."""

    def __init__(self, secret: str = SECRET):
        self.secret = secret
        self.requests: list[dict] = []
        self.applied: dict[str, dict] = {}
        self.fail_next = 0
        self.stall_next = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                valid = verify(receiver.secret, body, self.headers[HEADER])
                receiver.requests.append(
                    {"headers": dict(self.headers), "body": body, "valid": valid}
                )
                if not valid:
                    return self._answer(401)
                event = json.loads(body)
                assert str(event["id"]) == self.headers["X-Longtake-Event-Id"]
                receiver.applied.setdefault(str(event["id"]), event)  # the effect, once
                if receiver.stall_next:
                    receiver.stall_next -= 1
                    time.sleep(FAST.timeout_s * 1.5)  # applied, but the answer comes too late
                if receiver.fail_next:
                    receiver.fail_next -= 1
                    return self._answer(500)
                self._answer(204)

            def _answer(self, status):
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/longtake"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def deliverer(pg_db):
    d = WebhookDeliverer(pg_db, FAST)
    yield d
    d.close()


def deliver_all(deliverer, *, until, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "deliveries did not finish"
        deliverer.run_once()
        time.sleep(0.02)


def run_job(db, job_id):
    with db.transaction() as s:
        lease = leases.claim(s, job_id, "gpu-1", 60)
        leases.update_progress(s, lease_for(job_id, "gpu-1", 1), clips_done=1)
        leases.record_checkpoint(s, lease_for(job_id, "gpu-1", lease.attempt), 1)
        leases.mark_stitching(s, lease_for(job_id, "gpu-1", lease.attempt))
        leases.mark_succeeded(s, lease_for(job_id, "gpu-1", lease.attempt), keys.output_key(job_id))


def the_hook(db):
    with db.transaction() as s:
        (hook,) = webhooks.list_webhooks(s, tenant="default")
        return hook.id


def deliveries(db, hook_id):
    with db.transaction() as s:
        return webhooks.list_deliveries(s, webhook_id=hook_id)


def test_signed_filtered_deliveries(pg_db, create_job, receiver, deliverer, api_client):
    hook = api_client.post(
        "/v1/webhooks",
        json={"url": receiver.url, "events": ["started", "succeeded"], "secret": SECRET},
    ).json()
    job = create_job(pg_db)
    run_job(pg_db, job.id)
    deliver_all(deliverer, until=lambda: len(receiver.applied) == 2)

    assert all(r["valid"] for r in receiver.requests)
    events = sorted(receiver.applied.values(), key=lambda e: e["id"])
    assert [e["type"] for e in events] == ["started", "succeeded"]  # not checkpoint
    done = events[-1]
    assert done["job"]["id"] == str(job.id) and done["job"]["status"] == "succeeded"
    assert done["job"]["output_key"] == keys.output_key(job.id)
    first = receiver.requests[0]["headers"]
    assert first["X-Longtake-Event"] in ("started", "succeeded")
    assert first["Content-Type"] == "application/json"

    # what a receiver checks: the exact bytes, the secret, a recent timestamp
    body = receiver.requests[0]["body"]
    header = receiver.requests[0]["headers"][HEADER]
    assert verify(SECRET, body, header)
    assert not verify("whsec_another-secret-entirely", body, header)
    assert not verify(SECRET, body + b" ", header)
    stamp = int(header.split(",")[0].removeprefix("t="))
    assert not verify(SECRET, body, header, now=stamp + 301)  # a replayed old capture
    assert sign(SECRET, body, stamp) == header

    log = api_client.get(f"/v1/webhooks/{hook['id']}/deliveries").json()["deliveries"]
    assert [(d["event_type"], d["status"], d["attempts"], d["last_status_code"]) for d in log] == [
        ("started", "delivered", 1, 204),
        ("succeeded", "delivered", 1, 204),
    ]


def test_a_failing_receiver_is_retried_with_backoff(pg_db, create_job, receiver, api_client):
    api_client.post(
        "/v1/webhooks", json={"url": receiver.url, "events": ["canceled"], "secret": SECRET}
    )
    receiver.fail_next = 3
    times = []

    def clock():  # read once per attempt, to sign it
        times.append(time.monotonic())
        return time.time()

    deliverer = WebhookDeliverer(pg_db, FAST, clock=clock)
    job = create_job(pg_db)
    api_client.post(f"/v1/jobs/{job.id}/cancel")
    try:
        stop = threading.Event()
        loop = threading.Thread(target=deliverer.run, args=(stop,))
        loop.start()
        deadline = time.monotonic() + 15
        while not (receiver.requests and receiver.fail_next == 0 and len(receiver.requests) == 4):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.2)
        stop.set()
        loop.join()
    finally:
        deliverer.close()
    assert len(receiver.requests) == 4  # three 500s, then delivered, then nothing more
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps[0] >= 0.8 * FAST.backoff_base_s and gaps[1] >= 0.8 * 2 * FAST.backoff_base_s
    (d,) = api_client.get("/v1/webhooks").json()["webhooks"]
    (log,) = api_client.get(f"/v1/webhooks/{d['id']}/deliveries").json()["deliveries"]
    assert (log["status"], log["attempts"], log["failures"], log["last_status_code"]) == (
        "delivered", 4, 3, 204,
    )  # fmt: skip
    assert log["last_error"] is None


def test_repeats_have_no_duplicate_effects_for_a_deduplicating_receiver(
    pg_db, create_job, receiver, deliverer, api_client
):
    api_client.post(
        "/v1/webhooks", json={"url": receiver.url, "events": ["canceled"], "secret": SECRET}
    )
    receiver.stall_next = 1  # the first attempt lands but its answer times out
    job = create_job(pg_db)
    api_client.post(f"/v1/jobs/{job.id}/cancel")
    deliver_all(deliverer, until=lambda: len(receiver.requests) == 2)
    deliver_all(
        deliverer, until=lambda: deliveries(pg_db, the_hook(pg_db))[0].status == "delivered"
    )
    first, second = receiver.requests
    assert first["body"] == second["body"]  # the same event, the same id: a repeat, not news
    assert first["headers"]["X-Longtake-Event-Id"] == second["headers"]["X-Longtake-Event-Id"]
    assert (
        first["headers"]["X-Longtake-Attempt"] == "1"
        and second["headers"]["X-Longtake-Attempt"] == "2"
    )
    assert len(receiver.applied) == 1


def test_delivery_gives_up_after_its_attempts(pg_db, create_job, receiver, api_client):
    hook = api_client.post("/v1/webhooks", json={"url": receiver.url, "secret": SECRET}).json()
    receiver.fail_next = 100
    deliverer = WebhookDeliverer(pg_db, DeliveryConfig(**{**FAST.__dict__, "max_attempts": 3}))
    try:
        job = create_job(pg_db)
        api_client.post(f"/v1/jobs/{job.id}/cancel")
        deliver_all(deliverer, until=lambda: deliveries(pg_db, hook["id"])[0].status == "failed")
        time.sleep(0.3)
        deliverer.run_once()
    finally:
        deliverer.close()
    assert len(receiver.requests) == 3
    (d,) = deliveries(pg_db, hook["id"])
    assert (d.attempts, d.failures, d.last_status_code) == (3, 3, 500)
    assert d.last_error.startswith("HTTP 500")
    metrics = api_client.get("/metrics").text
    assert "longtake_webhook_delivery_failures_total 3.0" in metrics
    assert 'longtake_webhook_deliveries{status="failed"} 1.0' in metrics


def test_unreachable_receivers_and_disabled_webhooks(pg_db, create_job, deliverer, api_client):
    hook = api_client.post(
        "/v1/webhooks", json={"url": "http://127.0.0.1:9/nobody", "events": ["canceled"]}
    ).json()
    job = create_job(pg_db)
    api_client.post(f"/v1/jobs/{job.id}/cancel")
    deliverer.run_once()
    (d,) = deliveries(pg_db, hook["id"])
    assert (d.status, d.attempts, d.last_status_code) == ("pending", 1, None)
    assert "ConnectError" in d.last_error
    assert api_client.delete(f"/v1/webhooks/{hook['id']}").status_code == 204
    with pg_db.transaction() as s:  # due now
        d = s.get(webhooks.WebhookDelivery, d.id)
        d.next_attempt_at = d.created_at
    deliverer.run_once()
    (d,) = deliveries(pg_db, hook["id"])
    assert (d.status, d.last_error) == ("failed", "the webhook was disabled")
    assert api_client.get("/v1/webhooks").json()["webhooks"] == []
