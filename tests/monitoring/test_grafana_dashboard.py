"""The Grafana dashboard (ops/monitoring/grafana-dashboard.json): it imports anywhere (the
Prometheus data source is a variable), its panels tile the grid, and every query reads
metrics, labels and label values that /metrics really exports."""

from __future__ import annotations

import json
import subprocess

import yaml

from tests.monitoring.promql import MONITORING, check_expression, known_values, label_names
from tests.monitoring.test_alert_rules import OPEN_LABELS, PROMTOOL, needs_promtool

DASHBOARD = MONITORING / "grafana-dashboard.json"


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    return dashboard()["panels"]


def queries() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels() for t in p["targets"]]


def as_promql(expr: str) -> str:
    """What Grafana sends: its interval variables replaced."""
    return expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")


def test_it_imports_into_any_grafana():
    board = dashboard()
    assert board["uid"] == "longtake" and board["title"] == "longtake"
    (variable,) = board["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    source = {"type": "prometheus", "uid": "${datasource}"}
    for panel in panels():
        assert panel["datasource"] == source, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == source, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_it_shows_what_operators_watch():
    titles = {p["title"] for p in panels()}
    for needed in (
        "Jobs by status",
        "Queue depth",
        "Oldest queued job",
        "Render speed",
        "Clip time",
        "Checkpoint time",
        "Uploads",
        "Failure rate",
        "Webhook delivery failures",
        "Workers",
        "Storage errors",
    ):
        assert needed in titles


def test_the_panels_tile_the_grid_without_overlapping():
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids))
    taken: dict[tuple[int, int], str] = {}
    for panel in panels():
        g = panel["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_every_query_reads_metrics_that_exist(exported):
    names, values = label_names(exported), known_values(exported)
    problems = [
        f"{title}: {problem}"
        for title, expr in queries()
        for problem in check_expression(as_promql(expr), names, values, OPEN_LABELS)
    ]
    assert problems == []


@needs_promtool
def test_every_query_is_valid_promql(tmp_path):
    # promtool parses expressions in rule files: each query as a recording rule
    records = [
        {"record": f"dashboard:query_{i}", "expr": as_promql(expr)}
        for i, (_title, expr) in enumerate(queries())
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def query(title: str) -> str:
    (panel,) = [p for p in panels() if p["title"] == title]
    return as_promql(panel["targets"][0]["expr"])


@needs_promtool
def test_replicas_are_not_counted_twice_and_the_failure_rate_is_a_rate(tmp_path):
    """Two API replicas report the same database; with 1 failure and 3 successes a minute
    the failure rate is 25 %, and the job counts are the database's, not doubled."""
    replicas = (
        'instance="api-1:8000",job="longtake-api"',
        'instance="api-2:8000",job="longtake-api"',
    )
    series = []
    for api in replicas:
        series += [
            {"series": f'longtake_job_events_total{{event="failed",{api}}}', "values": "0+1x90"},
            {"series": f'longtake_job_events_total{{event="succeeded",{api}}}', "values": "0+3x90"},
            {"series": f'longtake_jobs{{status="queued",{api}}}', "values": "7x90"},
            {"series": f"longtake_queue_depth{{{api}}}", "values": "7x90"},
        ]
    tests = {
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": query("Failure rate"),
                        "eval_time": "80m",
                        "exp_samples": [{"labels": "{}", "value": 0.25}],
                    },
                    {
                        "expr": query("Jobs by status"),
                        "eval_time": "80m",
                        "exp_samples": [{"labels": '{status="queued"}', "value": 7}],
                    },
                    {
                        "expr": query("Queue depth"),
                        "eval_time": "80m",
                        "exp_samples": [{"labels": "{}", "value": 7}],
                    },
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
