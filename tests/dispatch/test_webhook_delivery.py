"""Webhook delivery to a real HTTP receiver on loopback: signed, filtered, retried with
backoff until delivered (at least once), logged, and harmless to repeat for a receiver that
deduplicates on the event id. Deliveries go only to the address that was checked when the
attempt was made (a host that turns private since is refused, redirects are not followed).

The receivers listen on loopback, which webhooks may not reach by default: these tests allow
127.0.0.1 explicitly, as an operator would (`LONGTAKE_WEBHOOK_ALLOWED_HOSTS`)."""

from __future__ import annotations

import dataclasses
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
LOOPBACK = ("127.0.0.1",)
FAST = DeliveryConfig(
    timeout_s=1.0, backoff_base_s=0.05, backoff_cap_s=0.2, poll_s=0.05, allowed_hosts=LOOPBACK
)


@pytest.fixture(autouse=True)
def loopback_receivers_allowed(api_services):
    """The API registers webhooks to the loopback receivers because it is told to."""
    api_services.config = dataclasses.replace(api_services.config, webhook_allowed_hosts=LOOPBACK)


class Receiver:
    """An HTTP endpoint that checks signatures, applies each event once (dedup by event id)
    and can be told to fail or stall its next requests."""

    def __init__(self, secret: str = SECRET, *, host: str = "127.0.0.1", tls=None):
        self.secret = secret
        self.requests: list[dict] = []
        self.applied: dict[str, dict] = {}
        self.fail_next = 0
        self.stall_next = 0
        self.redirect_to: str | None = None
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
                if receiver.redirect_to:
                    self.send_response(302)
                    self.send_header("Location", receiver.redirect_to)
                    self.send_header("Content-Length", "0")
                    return self.end_headers()
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

        self.server = ThreadingHTTPServer((host, 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://{host}:{self.port}/hooks/longtake"
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


# --------------------------------------------------------------------------- addresses


class Names:
    """A resolver whose answers a test changes between registration and delivery."""

    def __init__(self, **names: list[str]):
        self.names = {k.replace("_", "."): v for k, v in names.items()}
        self.asked: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        try:
            return self.names[host]
        except KeyError:
            raise OSError(f"{host} does not resolve") from None


def test_a_host_that_turns_private_after_registration_is_not_delivered_to(
    pg_db, create_job, receiver, api_client, api_services
):
    """DNS rebinding: the name resolved to a public address when it was registered; at the
    attempt it resolves to loopback, and nothing is sent."""
    names = Names(hooks_example_test=["93.184.216.34"])
    api_services.resolver = names
    url = f"http://hooks.example.test:{receiver.port}/hooks/longtake"
    hook = api_client.post("/v1/webhooks", json={"url": url, "secret": SECRET}).json()
    assert "id" in hook, hook
    names.names["hooks.example.test"] = ["127.0.0.1"]
    deliverer = WebhookDeliverer(pg_db, dataclasses.replace(FAST, allowed_hosts=()), resolver=names)
    try:
        job = create_job(pg_db)
        api_client.post(f"/v1/jobs/{job.id}/cancel")
        deliverer.run_once()
    finally:
        deliverer.close()
    assert receiver.requests == []
    (d,) = deliveries(pg_db, hook["id"])
    assert (d.status, d.attempts, d.last_status_code) == ("pending", 1, None)
    assert "127.0.0.1 is not a public address" in d.last_error


def test_a_delivery_connects_to_the_address_it_checked(pg_db, create_job, receiver, api_client):
    """The request goes to the resolved, checked address with the URL's host name in `Host`
    (the system resolver does not know this name: only the checked address can be reached)."""
    url = f"http://hooks.example.test:{receiver.port}/hooks/longtake"
    names = Names(hooks_example_test=["127.0.0.1"])
    config = dataclasses.replace(FAST, allowed_hosts=("hooks.example.test",))
    deliverer = WebhookDeliverer(pg_db, config, resolver=names)
    with pg_db.transaction() as s:
        webhooks.create_webhook(s, tenant="default", url=url, events=["canceled"], secret=SECRET)
    try:
        job = create_job(pg_db)
        api_client.post(f"/v1/jobs/{job.id}/cancel")
        deliver_all(deliverer, until=lambda: len(receiver.applied) == 1)
    finally:
        deliverer.close()
    assert receiver.requests[0]["headers"]["Host"] == f"hooks.example.test:{receiver.port}"
    assert names.asked == ["hooks.example.test"]


def test_https_to_a_checked_address_verifies_the_host_name(pg_db, create_job, api_client, tmp_path):
    """TLS to the pinned address still presents the URL's host name (SNI) and checks the
    certificate against it."""
    import ssl

    import httpx

    ca, server_context = tls_for("hooks.example.test", tmp_path)
    secure = Receiver(tls=server_context)
    try:
        url = f"https://hooks.example.test:{secure.port}/hooks/longtake"
        names = Names(hooks_example_test=["127.0.0.1"])
        config = dataclasses.replace(FAST, allowed_hosts=("hooks.example.test",))
        client = httpx.Client(verify=ssl.create_default_context(cafile=ca), timeout=5)
        deliverer = WebhookDeliverer(pg_db, config, client=client, resolver=names)
        with pg_db.transaction() as s:
            webhooks.create_webhook(
                s, tenant="default", url=url, events=["canceled"], secret=SECRET
            )
        try:
            job = create_job(pg_db)
            api_client.post(f"/v1/jobs/{job.id}/cancel")
            deliver_all(deliverer, until=lambda: len(secure.applied) == 1)
        finally:
            deliverer.close()
        # the same server under a name its certificate does not carry: refused
        names.names["other.example.test"] = ["127.0.0.1"]
        config = dataclasses.replace(FAST, allowed_hosts=("other.example.test",))
        client = httpx.Client(verify=ssl.create_default_context(cafile=ca), timeout=5)
        deliverer = WebhookDeliverer(pg_db, config, client=client, resolver=names)
        other = url.replace("hooks.example.test", "other.example.test")
        with pg_db.transaction() as s:
            hook = webhooks.create_webhook(
                s, tenant="default", url=other, events=["canceled"], secret=SECRET
            )
        try:
            job = create_job(pg_db)
            api_client.post(f"/v1/jobs/{job.id}/cancel")
            deliverer.run_once()
        finally:
            deliverer.close()
        (d,) = deliveries(pg_db, hook.id)
        assert d.status == "pending" and "certificate" in d.last_error.lower()
        assert len(secure.applied) == 1
    finally:
        secure.close()


def test_redirects_are_not_followed(pg_db, create_job, receiver, deliverer, api_client):
    elsewhere = Receiver()
    try:
        receiver.redirect_to = elsewhere.url
        hook = api_client.post(
            "/v1/webhooks", json={"url": receiver.url, "events": ["canceled"], "secret": SECRET}
        ).json()
        job = create_job(pg_db)
        api_client.post(f"/v1/jobs/{job.id}/cancel")
        deliverer.run_once()
        (d,) = deliveries(pg_db, hook["id"])
        assert (d.status, d.last_status_code) == ("pending", 302)
        assert "redirects are not followed" in d.last_error
        assert len(receiver.requests) == 1 and elsewhere.requests == []
    finally:
        elsewhere.close()


def tls_for(host: str, directory):
    """A certificate authority (its PEM file) and a server context for `host` signed by it."""
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(subject, issuer, public_key, signing_key, *, ca: bool):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
            )
        return builder.sign(signing_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert("longtake test CA", "longtake test CA", ca_key.public_key(), ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = cert(host, "longtake test CA", key.public_key(), ca_key, ca=False)
    pem = serialization.Encoding.PEM
    ca_file, chain, key_file = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca_file.write_bytes(ca_cert.public_bytes(pem))
    chain.write_bytes(leaf.public_bytes(pem))
    key_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key_file)
    return str(ca_file), context
