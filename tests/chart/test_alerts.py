"""The chart's alert rules: `promtool check rules` and `promtool test rules` (tests/chart/promtool/*_test.yaml,
which fire every alert and keep it quiet in look-alike situations), and the values that tune them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helm import ROOT, Helm, one

PROMTOOL_TESTS = Path(__file__).resolve().parent / "promtool"
ALERTS = {
    "DeepSeekOperatorDown": "operatorDown",
    "DeepSeekOperatorReconcileErrors": "reconcileErrors",
    "DeepSeekTrainingFailed": "trainingFailed",
    "DeepSeekTrainingStalled": "trainingStalled",
    "DeepSeekInferenceNotReady": "inferenceNotReady",
    "DeepSeekInferenceQueueNearSaturation": "queueSaturation",
    "DeepSeekInferenceLatencyHigh": "latencyP99",
}


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: scripts/setup.sh installs Debian's prometheus package"
    return found


def rule_spec(helm: Helm, tmp_path: Path, values: dict[str, Any] | None = None) -> dict[str, Any]:
    merged: dict[str, Any] = {"prometheusRule": {"enabled": True}}
    for key, value in (values or {}).items():
        merged[key] = value
    docs = helm.render(tmp_path, merged)
    return dict(one(docs, "PrometheusRule")["spec"])


def rules(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in spec["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def default_rules(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return rule_spec(helm, tmp_path_factory.mktemp("rules"))


def test_promtool_check_rules(default_rules: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(default_rules))
    res = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(rules(default_rules))} rules found" in res.stdout


@pytest.mark.parametrize("test_file", sorted(p.name for p in PROMTOOL_TESTS.glob("*_test.yaml")))
def test_promtool_unit_tests(default_rules: dict[str, Any], tmp_path: Path, test_file: str) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(default_rules))
    shutil.copy(PROMTOOL_TESTS / test_file, tmp_path / test_file)
    res = subprocess.run(
        [promtool(), "test", "rules", test_file], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_promtool_tests_catch_a_broken_rule(default_rules: dict[str, Any], tmp_path: Path) -> None:
    """The unit tests are not vacuous: a rule with the wrong threshold fails them."""
    broken = yaml.safe_load(yaml.safe_dump(default_rules))
    for rule in rules(broken):
        if rule.get("alert") == "DeepSeekInferenceLatencyHigh":
            rule["expr"] = rule["expr"].replace("> 1", "> 10")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(broken))
    shutil.copy(PROMTOOL_TESTS / "inference_test.yaml", tmp_path / "inference_test.yaml")
    res = subprocess.run(
        [promtool(), "test", "rules", "inference_test.yaml"], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert res.returncode != 0
    assert "DeepSeekInferenceLatencyHigh" in res.stdout + res.stderr


def test_every_alert_is_defined_and_tested_both_ways(default_rules: dict[str, Any]) -> None:
    defined = {r["alert"] for r in rules(default_rules)}
    assert defined == set(ALERTS)
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in PROMTOOL_TESTS.glob("*_test.yaml"):
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert fired == set(ALERTS), f"never fired in a test: {set(ALERTS) - fired}"
    assert quiet == set(ALERTS), f"never checked to stay quiet: {set(ALERTS) - quiet}"
    for rule in rules(default_rules):
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert {"summary", "description"} <= set(rule["annotations"])
        assert "runbook_url" not in rule["annotations"]  # no runbookUrl by default


@pytest.mark.parametrize("alert", list(ALERTS))
def test_each_alert_can_be_turned_off(helm: Helm, tmp_path: Path, alert: str) -> None:
    spec = rule_spec(
        helm, tmp_path, {"prometheusRule": {"enabled": True, "alerts": {ALERTS[alert]: {"enabled": False}}}}
    )
    names = {r["alert"] for r in rules(spec)}
    assert alert not in names
    assert names == set(ALERTS) - {alert}


def test_tuning_values(helm: Helm, tmp_path: Path) -> None:
    spec = rule_spec(
        helm,
        tmp_path,
        {
            "prometheusRule": {
                "enabled": True,
                "runbookUrl": "https://wiki.example.com/deepseek/operations",
                "additionalAlertLabels": {"team": "ml-platform"},
                "operatorJob": "kube-system/deepseek",
                "alerts": {
                    "trainingStalled": {"after": "2h", "severity": "critical"},
                    "latencyP99": {"thresholdSeconds": 2.5, "window": "15m", "endpoints": "/classify"},
                    "queueSaturation": {"depth": 900},
                    "reconcileErrors": {"ratio": 0.25},
                },
            }
        },
    )
    by_name: dict[str, list[dict[str, Any]]] = {}
    for rule in rules(spec):
        by_name.setdefault(rule["alert"], []).append(rule)
        assert rule["labels"]["team"] == "ml-platform"
        anchor = rule["alert"].lower()
        assert rule["annotations"]["runbook_url"] == f"https://wiki.example.com/deepseek/operations#{anchor}"
    stalled = by_name["DeepSeekTrainingStalled"]
    assert "> 7200" in stalled[0]["expr"]
    assert stalled[1]["for"] == "2h"
    assert all(r["labels"]["severity"] == "critical" for r in stalled)
    latency = by_name["DeepSeekInferenceLatencyHigh"][0]["expr"]
    assert "> 2.5" in latency
    assert '{endpoint=~"/classify"}[15m]' in latency
    assert ">= 900" in by_name["DeepSeekInferenceQueueNearSaturation"][0]["expr"]
    assert "> 0.25" in by_name["DeepSeekOperatorReconcileErrors"][0]["expr"]
    assert 'job="kube-system/deepseek"' in by_name["DeepSeekOperatorDown"][0]["expr"]


def test_operator_job_defaults_to_the_metrics_service(helm: Helm, tmp_path: Path) -> None:
    """What DeepSeekOperatorDown looks for is what the ServiceMonitor produces (job = the Service's name)."""
    docs = helm.render(tmp_path, {"prometheusRule": {"enabled": True}, "serviceMonitor": {"enabled": True}})
    service = one(docs, "Service")["metadata"]["name"]
    down = next(r for r in rules(dict(one(docs, "PrometheusRule")["spec"])) if r["alert"] == "DeepSeekOperatorDown")
    assert f'job="{service}"' in down["expr"]
    monitor = one(docs, "ServiceMonitor")
    assert "jobLabel" not in monitor["spec"]  # the default job label is the Service name
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True


def test_docs_describe_every_alert() -> None:
    """docs/operations.md has a section per alert (the runbook_url anchors point at them)."""
    doc = (ROOT / "docs" / "operations.md").read_text()
    for alert in ALERTS:
        assert f"\n#### {alert}\n" in doc, f"docs/operations.md lacks a '#### {alert}' section"
