"""Webhooks reach only public addresses: a URL whose host is, or resolves to, a loopback,
private, link-local, unique-local, multicast, reserved or cloud-metadata address is refused
when it is registered (on its own, with a job, in a batch), unless the operator allowed that
host (`LONGTAKE_WEBHOOK_ALLOWED_HOSTS`, names or networks)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from db.webhooks import TargetPolicy, WebhookTargetError
from tests import media
from tests.api.test_bad_inputs import NOTHING, leftovers

NAMES = {
    "hooks.example.test": ["93.184.216.34"],
    "split.example.test": ["93.184.216.34", "10.1.2.3"],  # one public, one private
    "v6.example.test": ["2606:2800:220:1:248:1893:25c8:1946"],
    "metadata.google.internal": ["169.254.169.254"],
    "internal.example.test": ["192.168.10.20"],
}


def resolver(host: str, port: int) -> list[str]:
    if host in NAMES:
        return NAMES[host]
    return TargetPolicy.system_resolve(host, port)


@pytest.fixture
def named(api_services):
    api_services.resolver = resolver
    return api_services


FORBIDDEN = [
    "http://127.0.0.1/hook",
    "http://127.8.9.10:8080/hook",
    "http://localhost:8000/hook",
    "http://[::1]/hook",
    "http://0.0.0.0/hook",
    "http://10.0.0.1/hook",
    "http://172.16.5.4/hook",
    "http://192.168.1.1/hook",
    "http://100.64.0.1/hook",  # carrier-grade NAT
    "http://169.254.169.254/latest/meta-data/",  # AWS, GCP, Azure metadata
    "http://[fd00:ec2::254]/latest/meta-data/",  # AWS metadata over IPv6
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://[fe80::1]/hook",
    "http://[fc00::1]/hook",
    "http://224.0.0.1/hook",
    "http://[ff02::1]/hook",
    "http://240.0.0.1/hook",
    "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped loopback
    "http://[64:ff9b::a9fe:a9fe]/hook",  # NAT64 of the metadata address
    "http://2130706433/hook",  # 127.0.0.1 as one number
    "http://0x7f.1/hook",
    "https://internal.example.test/hook",
    "https://split.example.test/hook",  # any private address refuses the host
    "http://nowhere.invalid/hook",  # does not resolve
]


@pytest.mark.parametrize("url", FORBIDDEN)
def test_registration_refuses_addresses_that_are_not_public(api_client, named, url):
    r = api_client.post("/v1/webhooks", json={"url": url})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == "url"
    assert "public address" in error["message"] or "resolve" in error["message"]
    assert "LONGTAKE_WEBHOOK_ALLOWED_HOSTS" in error["message"]
    assert leftovers(named) == NOTHING


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.test/longtake",
        "http://93.184.216.34:8080/x",
        "https://v6.example.test/",
    ],
)
def test_public_addresses_are_accepted(api_client, named, url):
    r = api_client.post("/v1/webhooks", json={"url": url})
    assert r.status_code == 201, r.text


def test_job_and_batch_webhooks_are_checked_too(api_client, named):
    files = {"image": ("a.png", media.png()), "audio": ("a.wav", media.wav(1.0))}
    r = api_client.post(
        "/v1/jobs", files=files,
        data={"prompt": "p", "webhook_url": "http://169.254.169.254/latest/meta-data/"},
    )  # fmt: skip
    assert r.status_code == 422 and r.json()["error"]["field"] == "webhook_url", r.text
    image = api_client.post(
        "/v1/uploads", files={"file": ("a.png", media.png())}, data={"kind": "image"}
    ).json()["id"]
    audio = api_client.post(
        "/v1/uploads", files={"file": ("a.wav", media.wav(1.0))}, data={"kind": "audio"}
    ).json()["id"]
    job = {"prompt": "p", "image": image, "audio": audio}
    r = api_client.post(
        "/v1/batches",
        json={"jobs": [job, {**job, "webhook_url": "http://[fd00:ec2::254]/"}]},
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "jobs[1].webhook_url", r.text
    r = api_client.post(
        "/v1/batches", json={"defaults": {"webhook_url": "http://10.0.0.1/"}, "jobs": [job]}
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "jobs[0].webhook_url", r.text
    counts = leftovers(named)["rows"]
    assert (counts["jobs"], counts["webhooks"], counts["batches"]) == (0, 0, 0)


@pytest.mark.parametrize(
    "allowed,url,ok",
    [
        (("internal.example.test",), "https://internal.example.test/hook", True),
        (("INTERNAL.example.test",), "https://internal.example.test/hook", True),
        (("internal.example.test",), "https://split.example.test/hook", False),
        (("192.168.0.0/16",), "https://internal.example.test/hook", True),
        (("10.0.0.0/8",), "https://split.example.test/hook", True),  # public + allowed private
        (("127.0.0.1",), "http://127.0.0.1:9000/hook", True),
        (("127.0.0.1",), "http://127.0.0.2:9000/hook", False),
        (("127.0.0.0/8", "::1"), "http://[::1]:9000/hook", True),
        (("10.0.0.0/8",), "http://169.254.169.254/", False),
    ],
)
def test_the_operator_allows_named_hosts_and_networks(api_client, named, allowed, url, ok):
    named.config = replace(named.config, webhook_allowed_hosts=allowed)
    r = api_client.post("/v1/webhooks", json={"url": url})
    assert r.status_code == (201 if ok else 422), r.text


def test_the_policy_reads_names_and_networks():
    policy = TargetPolicy.from_hosts(["Hooks.Corp", "10.0.0.0/8", "fd00::/8", "127.0.0.1"])
    assert policy.allowed_names == frozenset({"hooks.corp"})
    assert [str(n) for n in policy.allowed_networks] == ["10.0.0.0/8", "fd00::/8", "127.0.0.1/32"]
    with pytest.raises(ValueError, match="not a host name or a network"):
        TargetPolicy.from_hosts(["http://hooks.corp/"])
    with pytest.raises(WebhookTargetError, match="http:// or https://"):
        TargetPolicy.from_hosts([]).resolve("file:///etc/passwd")
