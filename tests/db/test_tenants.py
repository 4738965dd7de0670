"""Tenants and API keys: tokens stored only as digests, revocation, limits, quota counts."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from db import job_store, leases, tenants
from db.models import ApiKey


def test_keys_authenticate_until_revoked(db):
    with db.transaction() as s:
        new = tenants.create_key(s, "acme", name="ci", rate_limit_per_s=5)
        other = tenants.create_key(s, "acme")
    assert new.token.startswith(f"lt_{new.key.id.removeprefix('key_')}_")
    with db.transaction() as s:
        stored = s.scalars(sa.select(ApiKey.token_sha256)).all()
        assert new.token not in stored and tenants.token_sha256(new.token) in stored
        key, tenant = tenants.authenticate(s, new.token)
        assert (key.id, key.name, key.rate_limit_per_s, tenant.name) == (
            new.key.id, "ci", 5, "acme",
        )  # fmt: skip
        assert tenants.authenticate(s, new.token + "x") is None
        assert tenants.revoke_key(s, new.key.id).revoked_at is not None
        assert tenants.revoke_key(s, "key_missing") is None
    with db.transaction() as s:
        assert tenants.authenticate(s, new.token) is None
        assert tenants.authenticate(s, other.token)[0].id == other.key.id
        listed = {k.id: k.revoked_at is not None for k in tenants.list_keys(s, tenant="acme")}
        assert listed == {new.key.id: True, other.key.id: False}


def test_tenants_are_created_once_with_a_webhook_secret(db):
    with db.transaction() as s:
        first = tenants.ensure_tenant(s, "acme").webhook_secret
    with db.transaction() as s:
        assert tenants.ensure_tenant(s, "acme").webhook_secret == first
        assert first.startswith("whsec_")
        with pytest.raises(tenants.InvalidTenantName):
            tenants.ensure_tenant(s, "../etc")


def test_limits_and_quota_counts(db, create_job):
    with db.transaction() as s:
        t = tenants.set_limits(s, "acme", {"max_queued_jobs": 2, "max_audio_seconds": 600.0})
        assert (t.max_queued_jobs, t.max_audio_seconds, t.max_image_bytes) == (2, 600.0, None)
        t = tenants.set_limits(s, "acme", {"max_queued_jobs": None})
        assert t.max_queued_jobs is None and t.max_audio_seconds == 600.0
        with pytest.raises(ValueError, match="unknown limits"):
            tenants.set_limits(s, "acme", {"max_gpus": 1})
        with pytest.raises(ValueError, match="at least 1"):
            tenants.set_limits(s, "acme", {"max_queued_jobs": 0})

    a, b, c = (create_job(db, tenant="acme") for _ in range(3))
    create_job(db, tenant="other")
    with db.transaction() as s:
        leases.claim(s, a.id, "w", 60)
        job_store.request_cancel(s, b.id)
        assert tenants.count_unfinished(s, "acme") == 2  # running a, queued c
        assert tenants.count_unfinished(s, "nobody") == 0
