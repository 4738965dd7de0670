"""The alert rules (ops/monitoring/alerts.yml): each reads metrics that /metrics really exports,
with labels and label values they really have; Prometheus loads them; and, where promtool is
installed, each alert fires on the series that should fire it and not on healthy ones."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.monitoring.promql import (
    MONITORING,
    ROOT,
    check_expression,
    known_values,
    label_names,
    scrape_configs,
    selectors,
)

RULES = MONITORING / "alerts.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus)"
)
# label values nobody can list in advance
OPEN_LABELS = {
    ("longtake_http_requests_total", "status"),
    ("longtake_http_requests_total", "route"),
    ("longtake_http_request_duration_seconds_bucket", "route"),
}


def rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_the_alerts_the_operations_guide_promises_exist():
    names = {rule["alert"] for rule in rules()}
    for needed in (
        "LongtakeJobsStuckQueued",  # jobs stuck queued
        "LongtakeLeaseExpired",  # lease expiries
        "LongtakeLeasesNotReaped",
        "LongtakeNoWorkersOnline",  # worker down
        "LongtakeWorkerHeartbeatStale",
        "LongtakeJobFailureRate",  # failure rate
        "LongtakeWorkerStorageErrors",  # storage errors
        "LongtakeApiStorageErrors",
        "LongtakeWebhookDeliveryFailures",  # webhook failures
    ):
        assert needed in names
    assert len(names) == len(rules()), "alert names repeat"


def test_every_rule_is_complete():
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]


def test_every_expression_reads_metrics_that_exist(exported):
    names, values = label_names(exported), known_values(exported)
    assert values[("longtake_job_events_total", "event")] >= {
        "claimed", "lease_expired", "failed", "succeeded", "retry_scheduled", "released",
    }  # fmt: skip
    problems = [
        p for rule in rules() for p in check_expression(rule["expr"], names, values, OPEN_LABELS)
    ]
    assert problems == []


def test_the_checker_catches_what_it_is_for(exported):
    """A misspelt metric, a label the metric lacks and a value it never takes are found."""
    names, values = label_names(exported), known_values(exported)

    def check(expr: str) -> list[str]:
        return check_expression(expr, names, values, OPEN_LABELS)

    assert check('max(increase(longtake_job_events_total{event="claimed"}[5m])) > 0') == []
    assert "is not exported" in check("longtake_queue_depht > 0")[0]
    assert "has no label" in check('longtake_queue_depth{status="x"} > 0')[0]
    assert "the values are" in check('longtake_job_events_total{event="claimd"}')[0]
    assert "never is" in check('longtake_jobs{status=~"running|runing"}')[0]
    assert "the values are" in check('up{job="longtake"} == 0')[0]
    assert [s.metric for s in selectors('sum by (le) (rate(a_bucket{x="1"}[5m])) / on() b')] == [
        "a_bucket",
        "b",
    ]


def test_prometheus_loads_the_rules_from_its_configuration():
    config = scrape_configs()
    assert config["rule_files"] == ["alerts.yml"]
    # docker/compose.yaml mounts the rules where the configuration names them
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "../ops/monitoring/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert "../ops/monitoring/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


@needs_promtool
def test_promtool_accepts_the_rules_and_the_configuration():
    for args in (
        ["check", "rules", str(RULES)],
        ["check", "config", str(MONITORING / "prometheus.yml")],
    ):
        result = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- alert behaviour
#
# Scenarios for `promtool test rules`: input series (one sample a minute), then whether each
# alert fires at a moment, with the summary it would send. Two API replicas report the same
# database-derived series; the alerts must not count them twice.

API = ('instance="api-1:8000",job="longtake-api"', 'instance="api-2:8000",job="longtake-api"')


def both(metric: str, labels: str, values: str) -> list[dict]:
    sep = "," if labels else ""
    return [{"series": f"{metric}{{{labels}{sep}{api}}}", "values": values} for api in API]


SCENARIOS = [
    # 1. nothing claims queued jobs: fires once the oldest waited 15 min, held 5 min
    {
        "input": [
            *both("longtake_queue_oldest_age_seconds", "", "0+60x40"),
            *both("longtake_job_events_total", 'event="claimed"', "7x40"),
        ],
        "alerts": {
            ("LongtakeJobsStuckQueued", "19m"): [],
            ("LongtakeJobsStuckQueued", "22m"): [
                ("critical", "Jobs have waited 22m 0s and no worker started one in 15 minutes")
            ],
        },
    },
    # 2. the same queue age while workers keep claiming jobs: a long queue, not a stuck one
    {
        "input": [
            *both("longtake_queue_oldest_age_seconds", "", "0+60x40"),
            *both("longtake_job_events_total", 'event="claimed"', "0+1x40"),
        ],
        "alerts": {("LongtakeJobsStuckQueued", "30m"): []},
    },
    # 3. a worker dies: its lease expires once (counted once, not per replica)
    {
        "input": [*both("longtake_job_events_total", 'event="lease_expired"', "0x5 1x20")],
        "alerts": {
            ("LongtakeLeaseExpired", "3m"): [],
            ("LongtakeLeaseExpired", "8m"): [
                ("warning", "1 jobs lost their worker in the last 10 minutes")
            ],
            ("LongtakeLeaseExpired", "20m"): [],
            ("LongtakeLeaseExpiriesRepeated", "8m"): [],
        },
    },
    # 4. expired leases that no reaper requeues
    {
        "input": [*both("longtake_leases_expired", "", "0x2 2x10")],
        "alerts": {
            ("LongtakeLeasesNotReaped", "5m"): [],
            ("LongtakeLeasesNotReaped", "9m"): [
                ("critical", "2 jobs hold expired leases that no reaper returns to the queue")
            ],
        },
    },
    # 5. Flower is up and sees its only worker go offline
    {
        "input": [
            {
                "series": 'flower_worker_online{instance="flower:5555",job="celery",worker="render@gpu-1"}',
                "values": "1x3 0x10",
            },
            {"series": 'up{instance="flower:5555",job="celery"}', "values": "1x13"},
            {"series": 'up{instance="api-1:8000",job="longtake-api"}', "values": "1x13"},
        ],
        "alerts": {
            ("LongtakeNoWorkersOnline", "6m"): [],
            ("LongtakeNoWorkersOnline", "9m"): [
                ("critical", "Flower sees no Celery worker online")
            ],
            ("LongtakeApiDown", "9m"): [],
        },
    },
    # 6. heartbeats stop: warn before the lease (120 s) runs out
    {
        "input": [*both("longtake_heartbeat_oldest_age_seconds", "", "10 20 30 90 150")],
        "alerts": {
            ("LongtakeWorkerHeartbeatStale", "2m"): [],
            ("LongtakeWorkerHeartbeatStale", "4m"): [
                ("warning", "A running job's worker has not heartbeated for 2m 30s")
            ],
        },
    },
    # 7. half the jobs that end fail (an hour of it); and a quiet hour with a single failure
    {
        "input": [
            *both("longtake_job_events_total", 'event="failed"', "0+1x90"),
            *both("longtake_job_events_total", 'event="succeeded"', "0+1x90"),
        ],
        "alerts": {
            ("LongtakeJobFailureRate", "80m"): [
                ("warning", "50% of the jobs that ended in the last hour failed")
            ],
        },
    },
    {
        "input": [
            *both("longtake_job_events_total", 'event="failed"', "0x30 1x60"),
            *both("longtake_job_events_total", 'event="succeeded"', "0x90"),
        ],
        "alerts": {("LongtakeJobFailureRate", "80m"): []},
    },
    # 8. storage: a worker attempt failed on it; the API answered 503 (per process, summed)
    {
        "input": [
            *both("longtake_storage_errors_total", 'source="worker"', "0x3 1x10"),
            {
                "series": f'longtake_storage_errors_total{{source="api",{API[0]}}}',
                "values": "0x3 1x10",
            },
            {
                "series": f'longtake_storage_errors_total{{source="api",{API[1]}}}',
                "values": "0x3 1x10",
            },
        ],
        "alerts": {
            ("LongtakeWorkerStorageErrors", "2m"): [],
            ("LongtakeWorkerStorageErrors", "6m"): [
                ("warning", "1 render attempts failed on storage in 10 minutes")
            ],
            ("LongtakeApiStorageErrors", "6m"): [
                ("warning", "The API answered 2 requests with storage_unavailable in 10 minutes")
            ],
        },
    },
    # 9. webhooks: attempts keep failing; one delivery is given up
    {
        "input": [
            *both("longtake_webhook_delivery_failures_total", "", "0+2x60"),
            *both("longtake_webhook_deliveries", 'status="failed"', "0x30 1x30"),
        ],
        "alerts": {
            ("LongtakeWebhookDeliveryFailures", "10m"): [],
            ("LongtakeWebhookDeliveryFailures", "45m"): [
                ("warning", "30 webhook delivery attempts failed in 15 minutes")
            ],
            ("LongtakeWebhookDeliveriesAbandoned", "45m"): [
                ("warning", "1 webhook deliveries were given up in the last hour")
            ],
        },
    },
]


def promtool_tests(directory: Path) -> Path:
    descriptions = {rule["alert"]: rule["annotations"]["description"] for rule in rules()}
    tests = []
    for scenario in SCENARIOS:
        tests.append(
            {
                "interval": "1m",
                "input_series": scenario["input"],
                "alert_rule_test": [
                    {
                        "eval_time": at,
                        "alertname": name,
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": severity},
                                "exp_annotations": {
                                    "summary": summary,
                                    "description": descriptions[name],
                                },
                            }
                            for severity, summary in expected
                        ],
                    }
                    for (name, at), expected in scenario["alerts"].items()
                ],
            }
        )
    path = directory / "alerts_test.yml"
    path.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "tests": tests}, sort_keys=False))
    return path


def test_the_scenarios_use_real_alerts_and_metrics(exported):
    names, values = label_names(exported), known_values(exported)
    alerts = {rule["alert"] for rule in rules()}
    for scenario in SCENARIOS:
        for name, _at in scenario["alerts"]:
            assert name in alerts
        for series in scenario["input"]:
            problems = check_expression(series["series"], names, values, OPEN_LABELS)
            assert problems == [], series


@needs_promtool
def test_each_alert_fires_when_it_should_and_not_otherwise(tmp_path):
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(promtool_tests(tmp_path))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
