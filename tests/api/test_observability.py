"""/metrics derived from the database (and so moving with what workers record), JSON logs
with job ids, and the OpenAPI description."""

from __future__ import annotations

import json
import logging
import re
import uuid

from api.logs import JsonFormatter, log_context
from api.metrics import Metrics
from db import leases
from db.segments import Segment
from storage import keys
from tests.factories import lease_for


def sample(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{labels} not in the metrics"
    return float(match.group(1))


def test_metrics_are_exposed_and_move(api_client, api_services, create_job):
    db = api_services.database
    before = api_client.get("/metrics")
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
    assert sample(before.text, "longtake_queue_depth") == 0
    assert sample(before.text, "longtake_queue_oldest_age_seconds") == 0
    assert sample(before.text, "longtake_jobs", '{status="running"}') == 0

    jobs = [create_job(db, clips_total=2) for _ in range(3)]
    job = jobs[0]
    with db.transaction() as s:
        lease = leases.claim(s, job.id, "gpu-1", 60)
        leases.update_progress(
            s,
            lease_for(job.id, "gpu-1", lease.attempt),
            clips_done=1,
            fps=21.0,
            clip_s=2.3,
        )
        seg = Segment(0, keys.segment_key(job.id, 0), 0, 2, 96, 4096, "b" * 64)
        leases.record_segment(s, lease_for(job.id, "gpu-1", lease.attempt), seg)
        leases.record_checkpoint(
            s, lease_for(job.id, "gpu-1", lease.attempt), 2, duration_s=0.4, bytes=1000
        )
        leases.mark_stitching(s, lease_for(job.id, "gpu-1", lease.attempt))
        leases.mark_succeeded(
            s,
            lease_for(job.id, "gpu-1", lease.attempt),
            keys.output_key(job.id),
            output={"bytes": 8000},
        )
    api_client.get(f"/v1/jobs/{job.id}")

    after = api_client.get("/metrics").text
    assert sample(after, "longtake_jobs", '{status="queued"}') == 2
    assert sample(after, "longtake_jobs", '{status="succeeded"}') == 1
    assert sample(after, "longtake_queue_depth") == 2
    assert sample(after, "longtake_queue_oldest_age_seconds") > 0
    assert sample(after, "longtake_render_fps_count") == 1
    assert sample(after, "longtake_render_fps_sum") == 21.0
    assert sample(after, "longtake_clip_seconds_sum") == 2.3
    assert sample(after, "longtake_checkpoint_seconds_sum") == 0.4
    assert sample(after, "longtake_upload_bytes_total", '{kind="segment"}') == 4096
    assert sample(after, "longtake_upload_bytes_total", '{kind="checkpoint"}') == 1000
    assert sample(after, "longtake_upload_bytes_total", '{kind="output"}') == 8000
    assert sample(after, "longtake_job_events_total", '{event="created"}') == 3
    route = '{method="GET",route="/v1/jobs/{job_id}",status="200"}'
    assert sample(after, "longtake_http_requests_total", route) == 1

    # a second scrape does not count the same events again
    again = api_client.get("/metrics").text
    assert sample(again, "longtake_render_fps_count") == 1
    assert sample(again, "longtake_job_events_total", '{event="created"}') == 3


def test_events_committed_out_of_id_order_are_counted(pg_db, create_job):
    """An event whose transaction commits after a later event's is still counted once."""
    metrics = Metrics(pg_db)
    job_a, job_b = create_job(pg_db), create_job(pg_db)
    metrics.refresh()
    slow = pg_db.sessions()
    slow.begin()
    leases.claim(slow, job_a.id, "slow", 60)
    slow.flush()  # its event id is taken now, but not visible until the commit
    with pg_db.transaction() as s:
        leases.claim(s, job_b.id, "fast", 60)
    metrics.refresh()
    assert metrics.job_events.labels("claimed")._value.get() == 1
    slow.commit()
    slow.close()
    metrics.refresh()
    metrics.refresh()
    assert metrics.job_events.labels("claimed")._value.get() == 2


def test_access_log_lines_are_json_with_the_job_and_tenant(
    api_client, create_job, api_services, caplog
):
    job = create_job(api_services.database)
    with caplog.at_level(logging.INFO, logger="longtake.access"):
        r = api_client.get(f"/v1/jobs/{job.id}", headers={"X-Request-Id": "req-42"})
        api_client.get(f"/v1/jobs/{uuid.uuid4()}")
    assert r.headers["x-request-id"] == "req-42"
    first, missing = (json.loads(JsonFormatter().format(rec)) for rec in caplog.records[-2:])
    assert first["logger"] == "longtake.access" and first["level"] == "info"
    assert (first["job_id"], first["tenant"], first["status"]) == (str(job.id), "default", 200)
    assert (first["request_id"], first["route"]) == ("req-42", "/v1/jobs/{job_id}")
    assert first["duration_ms"] >= 0
    assert missing["status"] == 404 and len(missing["request_id"]) == 32

    record = logging.LogRecord(
        "longtake.worker", logging.WARNING, "", 0, "slow %s", ("clip",), None
    )
    with log_context(job_id="j-1", attempt=2):
        line = json.loads(JsonFormatter().format(record))
    assert (line["message"], line["job_id"], line["attempt"]) == ("slow clip", "j-1", 2)


def test_openapi_and_docs(api_client):
    schema = api_client.get("/openapi.json").json()
    assert "ApiKey" in schema["components"]["securitySchemes"]
    paths = schema["paths"]
    for path in ("/v1/batches", "/v1/uploads", "/v1/webhooks", "/v1/jobs/{job_id}/segments"):
        assert path in paths
    events = paths["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    assert {"application/json", "text/event-stream"} <= set(events)
    assert "jobs" in schema["components"]["schemas"]["BatchRequest"]["properties"]
    assert api_client.get("/docs").status_code == 200
