"""A real Prometheus server (Debian's package, the one scripts/setup.sh installs) for tests: loopback only,
a free port, 1 s scrape and rule evaluation, the chart's rules loaded; stopped when the context ends."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from deepseek_testbed import wait_until

from tests.chart.helm import Helm, one


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


def instant(base: str, expr: str) -> list[dict[str, Any]]:
    """An instant query; a query Prometheus refuses raises (HTTP 400)."""
    data = api(base, "/api/v1/query", query=expr)
    result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else [data["result"]]
    return result


def evaluated_rules(base: str) -> list[dict[str, Any]]:
    """Every rule once each has been evaluated at least once."""

    def probe() -> list[dict[str, Any]] | None:
        groups = api(base, "/api/v1/rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules) else None

    result: list[dict[str, Any]] = wait_until(probe, timeout=30, what="every rule to be evaluated")
    return result


@contextlib.contextmanager
def prometheus(helm: Helm, tmp_path: Path, scrape_configs: Sequence[dict[str, Any]]) -> Iterator[str]:
    """Run Prometheus with `scrape_configs` and the chart's alert rules (defaults); yield its base URL."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: scripts/setup.sh installs Debian's prometheus package"
    docs = helm.render(tmp_path, {"prometheusRule": {"enabled": True}})
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(one(docs, "PrometheusRule")["spec"]))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": list(scrape_configs),
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = tmp_path / "prometheus.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {log_path.read_text()[-2000:]}")
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
