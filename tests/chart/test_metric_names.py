"""Every metric name (and label) used by the dashboards and alerts exists in the code's metrics.

The code's metrics come from the prometheus-client definitions in operator/ and workers/ (parsed from the
source: see metrics_catalog.py); the queries from the dashboard JSON files and the rendered PrometheusRule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.chart.helm import CHART, one
from tests.chart.metrics_catalog import (
    TARGET_LABELS,
    Catalog,
    Checker,
    Query,
    code_catalog,
    dashboard_queries,
    scan_sources,
)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    found = code_catalog()
    assert not found.problems, found.problems
    return found


@pytest.fixture(scope="module")
def checker(catalog: Catalog, rendered_all_on: list[dict[str, Any]]) -> Checker:
    # The training PodMonitor adds target labels of its own (relabelings).
    monitor = one(rendered_all_on, "PodMonitor")
    added = {r["targetLabel"] for e in monitor["spec"]["podMetricsEndpoints"] for r in e.get("relabelings", [])}
    return Checker(catalog, TARGET_LABELS | added)


def rule_queries(rendered_all_on: list[dict[str, Any]]) -> list[Query]:
    spec = one(rendered_all_on, "PrometheusRule")["spec"]
    return [
        Query(f"PrometheusRule {rule.get('alert') or rule.get('record')}", rule["expr"])
        for group in spec["groups"]
        for rule in group["rules"]
    ]


def test_catalog_reads_the_code(catalog: Catalog) -> None:
    """The scan finds the operator's and the workers' definitions (with their labels), not an empty set."""
    reconcile = catalog.metrics["deepseek_operator_reconcile"]
    assert reconcile.kind == "counter"
    assert reconcile.labels == frozenset({"kind", "result"})
    assert "deepseek_operator_reconcile_total" in catalog.series()
    assert "deepseek_operator_reconcile_duration_seconds_bucket" in catalog.series()
    prefixes = {name.split("_")[1] for name in catalog.metrics if name.startswith("deepseek_")}
    assert {"operator", "training", "serve"} <= prefixes, prefixes


def test_scan_understands_prometheus_client_forms(tmp_path: Path) -> None:
    src = tmp_path / "pkg"
    src.mkdir()
    (src / "m.py").write_text(
        "from prometheus_client import Counter as C, Histogram\n"
        "from prometheus_client.core import GaugeMetricFamily\n"
        "import prometheus_client\n"
        "LABELS = ['a', 'b']\n"
        "x = C('x_requests_total', 'h', ['code'])\n"
        "y = Histogram('y_seconds', 'h', labelnames=LABELS, namespace='ns')\n"
        "z = GaugeMetricFamily('z_ratio', 'h', labels=['gpu'])\n"
        "w = prometheus_client.Gauge('w_bytes', 'h', [*LABELS, 'c'])\n"
        "bad = C(name_from_somewhere, 'h')\n"
    )
    found = scan_sources((src,))
    assert found.metrics["x_requests"].labels == {"code"}
    assert "x_requests_total" in found.series()
    assert found.metrics["ns_y_seconds"].labels == {"a", "b"}
    assert "ns_y_seconds_bucket" in found.series()
    assert found.metrics["z_ratio"].labels == {"gpu"}
    assert found.metrics["w_bytes"].labels == {"a", "b", "c"}
    assert len(found.problems) == 1
    assert "not a string literal" in found.problems[0]


@pytest.mark.parametrize("path", sorted((CHART / "dashboards").glob("*.json")), ids=lambda p: p.name)
def test_dashboard_queries_use_exported_metrics(checker: Checker, path: Path) -> None:
    queries = dashboard_queries(path)
    assert queries
    problems = [p for q in queries for p in checker.check(q)]
    assert not problems, "\n".join(problems)


def test_alert_queries_use_exported_metrics(checker: Checker, rendered_all_on: list[dict[str, Any]]) -> None:
    queries = rule_queries(rendered_all_on)
    assert len(queries) >= 7
    problems = [p for q in queries for p in checker.check(q)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("rate(deepseek_operator_reconciles_total[5m])", "metric 'deepseek_operator_reconciles_total' is not exported"),
        ('deepseek_operator_reconcile_total{reslt="error"}', "has no label 'reslt'"),
        ("sum by (phase) (deepseek_operator_reconcile_total)", "by/without ['phase']"),
        ("deepseek_serve_ready == on (gpu) deepseek_serve_ready", "on/ignoring ['gpu']"),
        ("label_values(deepseek_serve_model_info, versionn)", "label_values() asks for 'versionn'"),
        ("rate(deepseek_serve_requests_total[5m]", "does not parse as PromQL"),
    ],
)
def test_checker_refuses_wrong_queries(checker: Checker, expr: str, expected: str) -> None:
    problems = checker.check(Query("test", expr))
    assert any(expected in p for p in problems), problems


def test_grafana_variables_are_substituted(checker: Checker) -> None:
    query = Query(
        "test",
        "histogram_quantile(0.99, sum by (le) (rate(deepseek_serve_request_duration_seconds_bucket"
        '{namespace=~"$namespace", model=~"${model}"}[$__rate_interval])))',
    )
    assert checker.check(query) == []
