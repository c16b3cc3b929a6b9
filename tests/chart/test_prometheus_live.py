"""The chart's rules and the operator dashboard in a real Prometheus, scraping the real operator.

The operator runs in-process with the chart's RBAC and reconciles a DeepSeekInference on the real control
plane; its metrics (prometheus-client's default registry, what `deepseek-operator` serves on :8080) are
served on 127.0.0.1 and scraped every second by Debian's Prometheus server with the chart's alert rules
loaded, labelled the way the chart's ServiceMonitor labels them. Every operator-dashboard query must run
without error and the core ones must return data; every alert rule must evaluate without error, and
DeepSeekOperatorDown must stay quiet while the operator is up.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from deepseek_testbed import ControlPlane, wait_until
from lightkube import codecs
from prometheus_client import start_http_server

from tests.chart.helm import CHART, Helm
from tests.chart.metrics_catalog import GRAFANA_INTERVALS, dashboard_queries
from tests.chart.prom import api, evaluated_rules, free_port, instant, prometheus
from tests.fixtures.operator import OperatorRunner

pytestmark = pytest.mark.timeout(240)

JOB = "ds-deepseek-operator-metrics"  # the metrics Service's name for release "ds" (the ServiceMonitor's job)


def test_operator_dashboard_and_rules_in_prometheus(
    kube_cluster: ControlPlane, namespace: str, operator: OperatorRunner, helm: Helm, tmp_path: Path
) -> None:
    metrics_server, _thread = start_http_server(free_port(), addr="127.0.0.1")
    scrape = {
        "job_name": JOB,
        "honor_labels": True,
        "static_configs": [
            {"targets": [f"127.0.0.1:{metrics_server.server_port}"], "labels": {"namespace": "deepseek-system"}}
        ],
    }
    try:
        with prometheus(helm, tmp_path, [scrape]) as base:
            check_operator(kube_cluster, namespace, base)
    finally:
        metrics_server.shutdown()
        metrics_server.server_close()


def check_operator(kube_cluster: ControlPlane, namespace: str, base: str) -> None:
    client = kube_cluster.client()
    manifest = {
        "apiVersion": "deepseek.ai/v1alpha1",
        "kind": "DeepSeekInference",
        "metadata": {"name": "scraped", "namespace": namespace},
        "spec": {"model": {"uri": "s3://artifacts/r8/v1"}},
    }
    client.create(codecs.from_dict(manifest))

    def scraped() -> bool:
        up = instant(base, f'up{{job="{JOB}"}}')
        done = instant(base, 'deepseek_operator_resources{kind="DeepSeekInference", phase="Ready"} > 0')
        return bool(up) and up[0]["value"][1] == "1" and bool(done)

    wait_until(scraped, timeout=120, what="Prometheus to scrape the operator with a Ready inference")

    must_have_data = {
        "Operator up",
        "Reconciles / s",
        "Inferences",
        "Reconciles by kind and result",
        "Resources by phase",
    }

    def panels_with_data() -> set[str]:
        seen: set[str] = set()
        for query in dashboard_queries(CHART / "dashboards" / "deepseek-operator.json"):
            expr = GRAFANA_INTERVALS.sub("30s", query.expr).replace("$job", ".*")
            if expr.startswith("label_values("):
                assert JOB in api(base, "/api/v1/label/job/values")
                continue
            if instant(base, expr):
                seen.add(query.source.split("'")[1])
        return seen

    # rate() needs two samples of a series in its window: poll until the scrapes after Ready provide them.
    wait_until(
        lambda: must_have_data <= panels_with_data(),
        timeout=60,
        what="every core operator panel to have data",
        describe=lambda: f"no data for {sorted(must_have_data - panels_with_data())}",
    )

    rules = evaluated_rules(base)
    assert {r["health"] for r in rules} == {"ok"}, [(r["name"], r.get("lastError")) for r in rules]
    down = [r for r in rules if r["name"] == "DeepSeekOperatorDown"]
    assert down
    assert all(r["state"] == "inactive" for r in down)
