"""The chart's rules and the operator dashboard in a real Prometheus, scraping the real operator.

The operator runs in-process with the chart's RBAC and reconciles a DeepSeekInference on the real control
plane; its metrics (prometheus-client's default registry, what `deepseek-operator` serves on :8080) are
served on 127.0.0.1 and scraped every second by Debian's Prometheus server with the chart's alert rules
loaded, labelled the way the chart's ServiceMonitor labels them. Every operator-dashboard query must run
without error and the core ones must return data; every alert rule must evaluate without error, and
DeepSeekOperatorDown must stay quiet while the operator is up.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deepseek_testbed import ControlPlane, wait_until
from lightkube import codecs
from prometheus_client import start_http_server

from tests.chart.helm import CHART, Helm, one
from tests.chart.metrics_catalog import GRAFANA_INTERVALS, dashboard_queries
from tests.fixtures.operator import OperatorRunner

pytestmark = pytest.mark.timeout(240)

JOB = "ds-deepseek-operator-metrics"  # the metrics Service's name for release "ds" (the ServiceMonitor's job)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]


@pytest.fixture
def prometheus(helm: Helm, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: scripts/setup.sh installs Debian's prometheus package"
    metrics_server, _thread = start_http_server(free_port(), addr="127.0.0.1")
    target = f"127.0.0.1:{metrics_server.server_port}"
    docs = helm.render(tmp_path, {"prometheusRule": {"enabled": True}})
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(one(docs, "PrometheusRule")["spec"]))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yaml")],
        "scrape_configs": [
            {
                "job_name": JOB,
                "honor_labels": True,
                "static_configs": [{"targets": [target], "labels": {"namespace": "deepseek-system"}}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(tmp_path / 'prometheus.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as resp:
                    return resp.status == 200
            except OSError:
                return False

        wait_until(ready, timeout=60, what="Prometheus to be ready")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        metrics_server.shutdown()
        metrics_server.server_close()


def instant(base: str, expr: str) -> list[dict[str, Any]]:
    data = api(base, "/api/v1/query", query=expr)
    result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else [data["result"]]
    return result


def test_operator_dashboard_and_rules_in_prometheus(
    kube_cluster: ControlPlane, namespace: str, operator: OperatorRunner, prometheus: str
) -> None:
    client = kube_cluster.client()
    manifest = {
        "apiVersion": "deepseek.ai/v1alpha1",
        "kind": "DeepSeekInference",
        "metadata": {"name": "scraped", "namespace": namespace},
        "spec": {"model": {"uri": "s3://artifacts/r8/v1"}},
    }
    client.create(codecs.from_dict(manifest))

    def scraped() -> bool:
        up = instant(prometheus, f'up{{job="{JOB}"}}')
        done = instant(prometheus, 'deepseek_operator_resources{kind="DeepSeekInference", phase="Ready"} > 0')
        return bool(up) and up[0]["value"][1] == "1" and bool(done)

    wait_until(scraped, timeout=120, what="Prometheus to scrape the operator with a Ready inference")
    time.sleep(3)  # a few more samples, so that rate() over the window has two points

    must_have_data = {
        "Operator up",
        "Reconciles / s",
        "Inferences",
        "Reconciles by kind and result",
        "Resources by phase",
    }
    board = CHART / "dashboards" / "deepseek-operator.json"
    seen: set[str] = set()
    for query in dashboard_queries(board):
        expr = GRAFANA_INTERVALS.sub("30s", query.expr).replace("$job", ".*")
        if expr.startswith("label_values("):
            values = api(prometheus, "/api/v1/label/job/values")
            assert JOB in values
            continue
        result = instant(prometheus, expr)  # raises on a query Prometheus refuses
        title = query.source.split("'")[1]
        if result:
            seen.add(title)
    assert must_have_data <= seen, f"no data for {must_have_data - seen}"

    def evaluated() -> list[dict[str, Any]] | None:
        groups = api(prometheus, "/api/v1/rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules) else None

    rules = wait_until(evaluated, timeout=30, what="every rule to be evaluated")
    assert {r["health"] for r in rules} == {"ok"}, [(r["name"], r.get("lastError")) for r in rules]
    down = [r for r in rules if r["name"] == "DeepSeekOperatorDown"]
    assert down
    assert all(r["state"] == "inactive" for r in down)
