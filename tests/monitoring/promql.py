"""Just enough PromQL reading for the monitoring tests: the series selectors of an expression
(metric names with their label matchers), and the series longtake and Flower really export."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "ops" / "monitoring"

FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg", "avg_over_time", "bottomk", "ceil",
    "changes", "clamp_max", "clamp_min", "count", "count_over_time", "delta", "deriv",
    "floor", "histogram_quantile", "increase", "irate", "label_replace", "last_over_time",
    "max", "max_over_time", "min", "min_over_time", "predict_linear", "quantile", "rate",
    "resets", "round", "scalar", "sort", "sort_desc", "sum", "sum_over_time", "time",
    "timestamp", "topk", "vector",
}  # fmt: skip
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
            "bool", "offset"}  # fmt: skip

# Flower 2's /metrics (flower/events.py, PrometheusMetrics): name -> label names
FLOWER = {
    "flower_events_total": {"worker", "type", "task"},
    "flower_task_runtime_seconds_bucket": {"worker", "task", "le"},
    "flower_task_runtime_seconds_count": {"worker", "task"},
    "flower_task_runtime_seconds_sum": {"worker", "task"},
    "flower_task_prefetch_time_seconds": {"worker", "task"},
    "flower_worker_prefetched_tasks": {"worker", "task"},
    "flower_worker_online": {"worker"},
    "flower_worker_number_of_currently_executing_tasks": {"worker"},
}
# what Prometheus adds to every scrape target: `up`, with the target's labels
TARGET_LABELS = {"job", "instance"}


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[Matcher, ...]


_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')


def selectors(expr: str) -> list[Selector]:
    """Every `metric{label="value", ...}` in an expression."""
    text = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery durations
    # grouping label lists are labels, not metrics
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", text)
    found: list[Selector] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char == '"':  # a string outside a selector (label_replace arguments)
            position = text.index('"', position + 1) + 1
            continue
        match = _NAME.match(text, position)
        if match is None or (
            position and (text[position - 1].isalnum() or text[position - 1] == ".")
        ):
            position += 1
            continue
        name = match.group()
        position = match.end()
        rest = text[position:].lstrip()
        if name in KEYWORDS:
            continue
        if name in FUNCTIONS and (rest.startswith("(") or re.match(r"(by|without)\b", rest)):
            continue  # a call, or an aggregation with its grouping first: sum by (le) (...)
        matchers: list[Matcher] = []
        if rest.startswith("{"):
            start = text.index("{", position)
            end = text.index("}", start)
            body = text[start + 1 : end]
            for m in _MATCHER.finditer(body):
                matchers.append(Matcher(*m.groups()))
            assert "".join(m.group() for m in _MATCHER.finditer(body)).strip() == body.strip(), (
                f"cannot read the matchers {{{body}}} in {expr!r}"
            )
            position = end + 1
        found.append(Selector(name, tuple(matchers)))
    return found


def scrape_configs() -> dict:
    return yaml.safe_load((MONITORING / "prometheus.yml").read_text())


def label_names(families: dict[str, dict[str, set[str]]]) -> dict[str, set[str]]:
    """metric -> its label names (longtake's as exported, Flower's, and `up`)."""
    names = {metric: set(labels) for metric, labels in families.items()}
    names.update({metric: set(labels) for metric, labels in FLOWER.items()})
    names["up"] = set()
    for metric in names:
        names[metric] |= TARGET_LABELS  # Prometheus attaches the target's labels
    return names


def known_values(families: dict[str, dict[str, set[str]]]) -> dict[tuple[str, str], set[str]]:
    """(metric, label) -> the values seen, where they can be known: longtake's own labels as a
    real scrape showed them, and `up`'s `job` (the scrape job names)."""
    values: dict[tuple[str, str], set[str]] = defaultdict(set)
    for metric, labels in families.items():
        for label, seen in labels.items():
            values[(metric, label)] |= seen
    values[("up", "job")] = {c["job_name"] for c in scrape_configs()["scrape_configs"]}
    return values


def check_expression(
    expr: str,
    names: dict[str, set[str]],
    values: dict[tuple[str, str], set[str]],
    open_labels: set[tuple[str, str]],
) -> list[str]:
    """What is wrong with an expression's selectors: unknown metrics, labels the metric does
    not have, label values it never takes. `open_labels` take values nobody can list (HTTP
    status codes, routes): only their matchers' syntax is checked."""
    problems = []
    found = selectors(expr)
    if not found:
        problems.append(f"{expr!r} selects no series")
    for sel in found:
        if sel.metric not in names:
            problems.append(f"{sel.metric} is not exported (in {expr!r})")
            continue
        for m in sel.matchers:
            if m.label not in names[sel.metric]:
                problems.append(f"{sel.metric} has no label {m.label} (in {expr!r})")
                continue
            key = (sel.metric, m.label)
            if m.op in ("=~", "!~"):
                pattern = re.compile(m.value)
                if key in open_labels or m.label in TARGET_LABELS:
                    continue
                seen = values.get(key, set())
                # every alternative of a plain a|b|c must be a real value
                if re.fullmatch(r"[\w|]+", m.value):
                    missing = set(m.value.split("|")) - seen
                    if missing:
                        problems.append(f"{sel.metric}{{{m.label}}} never is {missing}")
                elif not any(pattern.fullmatch(v) for v in seen):
                    problems.append(f"{sel.metric}{{{m.label}=~{m.value!r}}} matches nothing")
            elif key in values and key not in open_labels and m.value not in values[key]:
                problems.append(
                    f"{sel.metric}{{{m.label}={m.value!r}}}: the values are {sorted(values[key])}"
                )
    return problems
