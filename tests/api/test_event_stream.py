"""GET /v1/jobs/{id}/events as Server-Sent Events: live state changes, progress,
checkpoints and segments; a reconnect with Last-Event-ID replays exactly what was missed."""

from __future__ import annotations

import json
import threading
import time
import uuid

import httpx

from api.client import LongtakeClient
from db import job_store, leases
from db.segments import Segment
from storage import keys
from tests.factories import lease_for


def read_events(response: httpx.Response, until) -> list[dict]:
    """Parse the stream until `until(events)` says stop (or the server ends it)."""
    events, current = [], {}
    for line in response.iter_lines():
        if not line:
            if "data" in current:
                events.append(current)
                if until(events):
                    return events
            current = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(": ")
            current[field] = json.loads(value) if field == "data" else value
    return events


def render(db, job_id: uuid.UUID, *, pause: float = 0.0, clips: int = 4) -> None:
    """What a worker records while rendering `clips` clips, one checkpoint every 2."""
    with db.transaction() as s:
        lease = leases.claim(s, job_id, "gpu-1", 60)
    for clip in range(1, clips + 1):
        time.sleep(pause)
        with db.transaction() as s:
            leases.update_progress(s, lease_for(job_id, "gpu-1", lease.attempt), clips_done=clip,
                fps=24.0, clip_s=2.0,
            )  # fmt: skip
            if clip % 2 == 0:
                index = clip // 2 - 1
                seg = Segment(index, keys.segment_key(job_id, index), clip - 2, 2, 96, 10, "a" * 64)
                leases.record_segment(s, lease_for(job_id, "gpu-1", lease.attempt), seg)
                leases.record_checkpoint(
                    s, lease_for(job_id, "gpu-1", lease.attempt), clip, duration_s=0.2
                )
    with db.transaction() as s:
        leases.mark_stitching(s, lease_for(job_id, "gpu-1", lease.attempt))
        leases.mark_succeeded(s, lease_for(job_id, "gpu-1", lease.attempt), keys.output_key(job_id))


def test_stream_reconnect_and_replay(live_api, api_key, api_services, create_job):
    db = api_services.database
    job = create_job(db, clips_total=4)
    headers = {"Authorization": f"Bearer {api_key}", "Accept": "text/event-stream"}
    url = f"{live_api.url}/v1/jobs/{job.id}/events"
    worker = threading.Thread(target=render, args=(db, job.id), kwargs={"pause": 0.15})

    with httpx.stream("GET", url, headers=headers, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        worker.start()
        # read until the first checkpoint, then drop the connection
        first = read_events(r, lambda ev: ev[-1].get("event") == "checkpoint")
    worker.join()
    with_ids = [e for e in first if "id" in e]
    assert [e["event"] for e in with_ids][:2] == ["created", "claimed"]
    assert {"progress", "segment", "checkpoint"} <= {e["event"] for e in with_ids}
    snapshots = [e["data"] for e in first if e["event"] == "job"]
    assert snapshots and snapshots[0]["id"] == str(job.id)  # the job as GET returns it
    last_id = with_ids[-1]["id"]
    assert with_ids[-1]["data"]["data"] == {
        "clip": 2, "tier": "remote", "node": None, "duration_s": 0.2, "bytes": None,
    }  # fmt: skip

    # the job finished while we were away: reconnecting replays the rest, then ends
    with httpx.stream("GET", url, headers={**headers, "Last-Event-ID": last_id}, timeout=30) as r:
        rest = read_events(r, lambda ev: False)
    replayed = [e for e in rest if "id" in e]
    with db.transaction() as s:
        history = [(str(e.id), e.event) for e in job_store.list_events(s, job.id)]
    assert [(e["id"], e["event"]) for e in with_ids + replayed] == history  # none lost or twice
    assert replayed[-1]["event"] == "succeeded"
    assert rest[-1]["event"] == "job" and rest[-1]["data"]["status"] == "succeeded"
    progress = [e["data"]["data"] for e in with_ids + replayed if e["event"] == "progress"]
    assert progress[0]["clips_done"] == 1 and progress[-1]["clips_done"] == 4


def test_the_client_follows_a_job_across_dropped_connections(
    proxy, api_key, api_services, create_job
):
    db = api_services.database
    job = create_job(db, clips_total=4)
    seen = []
    with LongtakeClient(proxy.url, api_key=api_key) as client:
        stream = client.follow(str(job.id), timeout=30, reconnect_delay=0.05)
        for name, data in stream:
            if name != "job":
                seen.append(data["id"])
            if name == "created":
                proxy.drop_all()  # the network drops under the client...
                render(db, job.id)  # ...while the job runs to its end
            if name == "job" and data["status"] == "succeeded":
                break
    assert proxy.connections >= 2
    with db.transaction() as s:
        assert seen == [e.id for e in job_store.list_events(s, job.id)]  # none lost or twice


def test_history_as_json_and_bad_ids(api_client, api_services, create_job):
    job = create_job(api_services.database)
    with api_services.database.transaction() as s:
        job_store.request_cancel(s, job.id)
    events = api_client.get(f"/v1/jobs/{job.id}/events").json()["events"]
    assert [e["event"] for e in events] == ["created", "canceled"]
    after = api_client.get(f"/v1/jobs/{job.id}/events", params={"after": events[0]["id"]})
    assert [e["event"] for e in after.json()["events"]] == ["canceled"]
    r = api_client.get(f"/v1/jobs/{job.id}/events", headers={"Last-Event-ID": "x"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_last_event_id")
    # a final job's stream replays and ends at once
    r = api_client.get(f"/v1/jobs/{job.id}/events", headers={"Accept": "text/event-stream"})
    assert r.status_code == 200 and r.text.count("\nevent: ") == 3  # created, canceled, job
