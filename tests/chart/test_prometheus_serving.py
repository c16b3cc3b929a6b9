"""The inference dashboard and the model-server alerts in a real Prometheus, scraping a real model server.

`deepseek-worker serve` (the worker image's command) serves the shared fine-tuned MiniLM (Reuters R8) on
127.0.0.1; Prometheus scrapes its /metrics with the target labels the operator's ServiceMonitor gives a model
server (namespace, service, pod) while the test sends concurrent classification requests. Every inference-
dashboard query must run, the traffic, latency, batching and queue panels must show data, every rule must
evaluate without error and DeepSeekInferenceNotReady must stay quiet while the server is ready.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from deepseek_testbed import wait_until

from tests.chart.helm import CHART, Helm
from tests.chart.metrics_catalog import GRAFANA_INTERVALS, GRAFANA_VARIABLE, dashboard_queries
from tests.chart.prom import api, evaluated_rules, free_port, instant, prometheus
from tests.fixtures.ml import FineTunedClassifier

# Generous: on a cold cache the first test using finetuned_minilm_r8 trains the shared model (minutes).
pytestmark = pytest.mark.timeout(1200)


def test_inference_dashboard_and_rules_on_a_real_server(
    finetuned_minilm_r8: FineTunedClassifier, helm: Helm, tmp_path: Path
) -> None:
    port = free_port()
    config = {
        "kind": "ServeRun",
        "source": {"kind": "DeepSeekInference", "namespace": "ml", "name": "r8"},
        "modelName": "r8",
        "artifactUri": str(finetuned_minilm_r8.path),
        "variant": "fp32",
        "host": "127.0.0.1",
        "port": port,
        "batching": {"maxBatchSize": 8, "maxQueueDelayMs": 20, "maxQueueSize": 64, "requestTimeoutSeconds": 60},
    }
    (tmp_path / "run.json").write_text(json.dumps(config))
    log = (tmp_path / "server.log").open("w")
    worker = str(Path(sys.executable).parent / "deepseek-worker")
    server = subprocess.Popen(
        [worker, "serve", "--config", str(tmp_path / "run.json")], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    scrape = {
        "job_name": "r8-serve",
        "static_configs": [
            {
                "targets": [f"127.0.0.1:{port}"],
                "labels": {"namespace": "ml", "service": "r8-serve", "pod": "r8-serve-0"},
            }
        ],
    }
    try:

        def ready() -> bool:
            if server.poll() is not None:
                raise RuntimeError(f"the model server exited: {(tmp_path / 'server.log').read_text()[-2000:]}")
            try:
                return httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout=240, what="the model server to be ready")
        with prometheus(helm, tmp_path, [scrape]) as base:
            # One text, 32 times per burst: equal lengths, so length grouping never splits a formed batch and the
            # mean batch size shows the batching itself (distinct texts may rightly run as singletons on a CPU).
            texts = [finetuned_minilm_r8.eval_rows[0].text] * 32
            with ThreadPoolExecutor(16) as pool:
                for _ in range(2):  # two bursts a scrape apart, so that rate() has two points
                    codes = list(
                        pool.map(
                            lambda t: httpx.post(f"{url}/classify", json={"text": t}, timeout=60).status_code, texts
                        )
                    )
                    assert set(codes) == {200}
                    time.sleep(1.5)

            wait_until(
                lambda: instant(base, 'deepseek_serve_requests_total{endpoint="/classify", status="200"} >= 64'),
                timeout=60,
                what="Prometheus to scrape the served requests",
            )
            # rate() needs two samples of a series: fast bursts may all land before the second scrape.
            wait_until(
                lambda: instant(base, 'count_over_time(deepseek_serve_requests_total{endpoint="/classify"}[1m]) >= 2'),
                timeout=30,
                what="a second scrape of the served requests",
            )
            must_have_data = {
                "Ready replicas",
                "Requests / s",
                "p99 latency",
                "Queued",
                "Requests / s by status",
                "Request latency",
                "Queue wait and model time",
                "Batch size",
                "Queue depth",
                "Padding",
                "Served models",
            }
            seen: set[str] = set()
            for query in dashboard_queries(CHART / "dashboards" / "deepseek-inference.json"):
                expr = GRAFANA_VARIABLE.sub(".*", GRAFANA_INTERVALS.sub("1m", query.expr))
                if expr.startswith("label_values("):
                    assert "r8" in api(base, "/api/v1/label/model/values")
                    continue
                if instant(base, expr):
                    seen.add(query.source.split("'")[1])
            assert must_have_data <= seen, f"no data for {must_have_data - seen}"
            batches = instant(base, "max(deepseek_serve_batch_size_sum) / max(deepseek_serve_batch_size_count)")
            assert float(batches[0]["value"][1]) > 1.0, "concurrent requests should have been batched"

            rules = evaluated_rules(base)
            assert {r["health"] for r in rules} == {"ok"}, [(r["name"], r.get("lastError")) for r in rules]
            not_ready = [r for r in rules if r["name"] == "DeepSeekInferenceNotReady"]
            assert not_ready
            assert all(r["state"] == "inactive" for r in not_ready)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
