"""Dashboards and alerts: promtool checks the rules, runs their unit tests and parses every dashboard query.

promtool comes from the Debian package `prometheus` (`apt-get install --no-install-recommends prometheus`);
these tests fail, not skip, without it, so CI cannot pass them by accident.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
FILES = ROOT / "helm" / "tolk" / "files"
ALERTS = FILES / "alerts.yaml"
ALERTS_TEST = FILES / "alerts_test.yaml"
DASHBOARDS = {"tolk-overview": FILES / "dashboards" / "tolk-overview.json",
              "tolk-actors": FILES / "dashboards" / "tolk-actors.json"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# The metrics Tolk exposes (edge, actors, exporter). A query may use nothing else, so a misspelt name fails here
# instead of drawing an empty panel. Histograms are queried through their `_bucket`, `_sum` and `_count` series.
GAUGES_AND_COUNTERS = {
    "connected_clients", "open_streams", "channel_listeners", "tolk_sessions_started_total", "tolk_client_errors_total",
    "tolk_audio_seconds_total", "tolk_segments_total",
    "tolk_stt_audio_seconds_total",
    "tolk_translations_total", "tolk_translation_errors_total",
    "tolk_results_total",
    "tolk_actor_ready", "tolk_messages_total", "tolk_redeliveries_total", "tolk_errors_total",
    "tolk_jetstream_consumer_pending_messages", "tolk_jetstream_consumer_ack_pending_messages",
    "tolk_jetstream_consumer_redelivered_messages", "tolk_jetstream_stream_messages", "tolk_jetstream_stream_bytes",
    "tolk_dead_letters_total", "tolk_actor_instances", "tolk_stt_pool_instances", "tolk_stt_pool_info",
    "tolk_stt_final_decodes_total", "tolk_stt_busy_seconds_total",
}
HISTOGRAMS = {
    "channel_delivery_lag_seconds", "tolk_stt_latency_seconds", "tolk_stt_batch_size", "tolk_stt_real_time_factor",
    "tolk_translation_latency_seconds", "tolk_result_latency_seconds",
}
KNOWN_METRICS = GAUGES_AND_COUNTERS | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}

# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "${namespace}": "tolk",
                     "$namespace": "tolk"}

PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "atan2",
    "inf", "nan",
}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found on PATH: install it with `apt-get install -y --no-install-recommends "
                    "prometheus` (Debian/Ubuntu; the package's service need not run)")
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=60, check=False)


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{' '.join(result.args)} failed:\n{result.stdout}\n{result.stderr}"


def load_dashboard(name: str) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARDS[name].read_text(encoding="utf-8"))
    return board


def queries() -> Iterator[tuple[str, str, str]]:
    """(dashboard, panel title, expr) for every query of both dashboards."""
    for name in DASHBOARDS:
        for panel in load_dashboard(name)["panels"]:
            for t in panel.get("targets", []):
                yield name, panel["title"], t["expr"]


def substitute(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable left in {expr!r}"
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a small lexer, enough for the queries we write)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values, label_replace args)
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range and subquery durations
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        word, call = m.group(1), m.group(2)
        if not call and word.lower() not in PROMQL_WORDS:
            names.add(word)
    return names


def check_queries(exprs: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Write queries as recording rules `tolk:check:N` and let `promtool check rules` parse them."""
    rules = {"groups": [{"name": "dashboard-queries",
                         "rules": [{"record": f"tolk:check:{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    return promtool("check", "rules", path)


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


# ---------------------------------------------------------------- alerts


def test_alert_rules_pass_promtool_check() -> None:
    assert_ok(promtool("check", "rules", ALERTS))


def test_alert_unit_tests_pass() -> None:
    assert_ok(promtool("test", "rules", ALERTS_TEST))


def test_every_alert_is_tested_firing_and_quiet() -> None:
    rules = alert_rules()
    names = {r["alert"] for r in rules}
    assert {"TolkFinalLatencyHigh", "TolkConsumerLagHigh", "TolkErrorRateHigh", "TolkDeadLetters", "TolkActorDown",
            "TolkDeliveryLagHigh"} <= names
    for r in rules:
        assert r["labels"].get("severity") in {"warning", "critical"}, r["alert"]
        assert "$labels" in r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        assert metric_names(r["expr"]) <= KNOWN_METRICS, (r["alert"], metric_names(r["expr"]) - KNOWN_METRICS)
    fires: set[str] = set()
    quiet: set[str] = set()
    for test in yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))["tests"]:
        for case in test.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert names - fires == set(), "alerts without a test where they fire"
    assert names - quiet == set(), "alerts without a test where they stay quiet"


# ---------------------------------------------------------------- dashboards


def test_dashboards_are_generated() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "helm" / "dashboards.py"), "--check"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    found = list(queries())
    assert len(found) > 40
    result = check_queries([substitute(expr) for _, _, expr in found], tmp_path)
    if result.returncode != 0:
        where = "\n".join(f"  tolk:check:{i} = {board} / {title}: {expr}" for i, (board, title, expr) in
                          enumerate(found))
        pytest.fail(f"promtool rejected a dashboard query:\n{result.stdout}\n{result.stderr}\nqueries:\n{where}")


def test_dashboard_queries_use_known_metrics_in_the_namespace() -> None:
    for board, title, expr in queries():
        names = metric_names(expr)
        assert names, f"{board} / {title}: no metric in {expr!r}"
        assert names <= KNOWN_METRICS, f"{board} / {title}: unknown metric(s) {names - KNOWN_METRICS} in {expr!r}"
        for matchers in re.findall(r"\{([^}]*)\}", expr):
            assert 'namespace="$namespace"' in matchers, f"{board} / {title}: selector without namespace: {expr!r}"


def test_query_checks_catch_typos(tmp_path: Path) -> None:
    """The checks above must fail on a broken query: a syntax error (promtool) and a misspelt metric (names)."""
    broken = 'sum by (kind) (rate(tolk_results_total{namespace="tolk"}[5m])'
    assert check_queries([broken], tmp_path).returncode != 0
    assert check_queries([substitute(expr) for _, _, expr in list(queries())[:1]], tmp_path).returncode == 0
    assert metric_names('sum(rate(tolk_result_total{namespace="x"}[5m]))') == {"tolk_result_total"}
    assert metric_names('histogram_quantile(0.95, sum by (le) (rate(a_bucket{le="1"}[5m]))) > 2 or b') == {
        "a_bucket", "b"}
    assert metric_names("label_replace(rate(x[5m]), \"src\", \"c\", \"\", \"\") or max_over_time(y[1h])") == {"x", "y"}


def test_dashboards_are_well_formed() -> None:
    for uid, path in DASHBOARDS.items():
        board = load_dashboard(uid)
        assert board["uid"] == uid and board["title"] and board["schemaVersion"] >= 36, path
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        assert variables["namespace"]["datasource"] == DATASOURCE
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{uid}: duplicate panel ids"
        cells: set[tuple[int, int]] = set()
        for panel in board["panels"]:
            pos = panel["gridPos"]
            assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, f"{uid} / {panel['title']}: off the grid"
            mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
            assert not cells & mine, f"{uid} / {panel['title']}: overlaps another panel"
            cells |= mine
            if panel["type"] == "row":
                continue
            assert panel["type"] in {"timeseries", "stat"}, panel["type"]
            assert panel["title"] and panel["datasource"] == DATASOURCE, f"{uid} / {panel['title']}"
            assert panel["targets"], f"{uid} / {panel['title']}: no queries"
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), f"{uid} / {panel['title']}: duplicate refIds"
            for t in panel["targets"]:
                assert t["datasource"] == DATASOURCE and t["expr"].strip(), f"{uid} / {panel['title']}"
