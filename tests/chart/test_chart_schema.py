"""values.schema.json: wrong values fail `helm template` and `helm lint` with a message naming the value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helm import CHART, Helm

# (values, what the error must say): each names the offending path and, where the schema knows, what is valid.
REFUSED: list[tuple[str, dict[str, Any], list[str]]] = [
    ("two-replicas", {"replicas": 2}, ["at '/replicas'", "must be one of 0, 1"]),
    ("replicas-string", {"replicas": "1"}, ["at '/replicas'", "got string, want integer"]),
    ("misspelt-top-level-key", {"replica": 1}, ["additional properties 'replica' not allowed"]),
    (
        "misspelt-nested-key",
        {"serviceMonitor": {"intervall": "30s"}},
        ["at '/serviceMonitor'", "'intervall' not allowed"],
    ),
    (
        "pull-policy",
        {"image": {"pullPolicy": "Sometimes"}},
        ["at '/image/pullPolicy'", "'Always', 'IfNotPresent', 'Never'"],
    ),
    ("digest", {"workerImage": {"digest": "sha256:abc"}}, ["at '/workerImage/digest'", "does not match pattern"]),
    ("namespace-name", {"watchNamespaces": ["Team_A"]}, ["at '/watchNamespaces/0'", "'Team_A' does not match pattern"]),
    ("duplicate-namespace", {"watchNamespaces": ["a", "a"]}, ["at '/watchNamespaces'", "items at 0 and 1 are equal"]),
    ("log-format", {"operator": {"logFormat": "xml"}}, ["at '/operator/logFormat'", "'json', 'plain'"]),
    ("port-range", {"operator": {"metricsPort": 70000}}, ["at '/operator/metricsPort'", "maximum"]),
    ("resync-zero", {"operator": {"resyncSeconds": 0}}, ["at '/operator/resyncSeconds'", "minimum"]),
    (
        "concurrency-zero",
        {"operator": {"maxConcurrentReconciles": 0}},
        ["at '/operator/maxConcurrentReconciles'", "minimum"],
    ),
    ("duration", {"serviceMonitor": {"interval": "soon"}}, ["at '/serviceMonitor/interval'", "does not match pattern"]),
    (
        "queue-depth-zero",
        {"prometheusRule": {"alerts": {"queueSaturation": {"depth": 0}}}},
        ["at '/prometheusRule/alerts/queueSaturation/depth'", "minimum"],
    ),
    (
        "latency-zero",
        {"prometheusRule": {"alerts": {"latencyP99": {"thresholdSeconds": 0}}}},
        ["at '/prometheusRule/alerts/latencyP99/thresholdSeconds'"],
    ),
    (
        "unknown-alert",
        {"prometheusRule": {"alerts": {"gpuOnFire": {"enabled": True}}}},
        ["at '/prometheusRule/alerts'", "'gpuOnFire' not allowed"],
    ),
    ("env-without-name", {"extraEnv": [{"value": "x"}]}, ["at '/extraEnv/0'", "missing property 'name'"]),
    ("env-number", {"extraEnv": [{"name": "X", "value": 3}]}, ["at '/extraEnv/0/value'", "want string"]),
    ("node-selector-value", {"nodeSelector": {"gpu": True}}, ["at '/nodeSelector/gpu'", "want string"]),
    (
        "toleration-operator",
        {"tolerations": [{"key": "k", "operator": "Maybe"}]},
        ["at '/tolerations/0/operator'", "'Exists', 'Equal'"],
    ),
    (
        "quantity",
        {"resources": {"limits": {"memory": "lots"}}},
        ["at '/resources/limits/memory'", "does not match pattern"],
    ),
    ("privileged", {"securityContext": {"privileged": True}}, ["at '/securityContext/privileged'"]),
    ("security-typo", {"securityContext": {"readOnlyRootFileSystem": True}}, ["'readOnlyRootFileSystem' not allowed"]),
    (
        "seccomp-type",
        {"podSecurityContext": {"seccompProfile": {"type": "Default"}}},
        ["at '/podSecurityContext/seccompProfile/type'"],
    ),
    (
        "dashboard-label-value",
        {"dashboards": {"labels": {"grafana_dashboard": 1}}},
        ["at '/dashboards/labels/grafana_dashboard'", "want string"],
    ),
    ("runbook-url", {"prometheusRule": {"runbookUrl": "docs/operations.md"}}, ["at '/prometheusRule/runbookUrl'"]),
]

# Cross-field rules a JSON schema cannot express well: the templates fail with a sentence.
FAILED_BY_TEMPLATE: list[tuple[str, dict[str, Any], str]] = [
    (
        "service-account-without-name",
        {"serviceAccount": {"create": False}},
        "serviceAccount.name is required when serviceAccount.create is false",
    ),
    (
        "service-monitor-without-service",
        {"serviceMonitor": {"enabled": True}, "metrics": {"service": {"enabled": False}}},
        "serviceMonitor.enabled needs metrics.service.enabled",
    ),
]


@pytest.mark.parametrize(("values", "expected"), [pytest.param(v, e, id=i) for i, v, e in REFUSED])
def test_schema_refuses(helm: Helm, tmp_path: Path, values: dict[str, Any], expected: list[str]) -> None:
    res = helm.template(tmp_path, values, check=False)
    assert res.returncode != 0, f"accepted: {values}"
    assert "values don't meet the specifications of the schema" in res.stderr
    for text in expected:
        assert text in res.stderr, res.stderr


@pytest.mark.parametrize(("values", "expected"), [pytest.param(v, e, id=i) for i, v, e in FAILED_BY_TEMPLATE])
def test_template_refuses(helm: Helm, tmp_path: Path, values: dict[str, Any], expected: str) -> None:
    res = helm.template(tmp_path, values, check=False)
    assert res.returncode != 0
    assert expected in res.stderr


def test_lint_refuses_too(helm: Helm, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"replicas": 3}))
    res = helm.run("lint", str(CHART), "-f", str(path), check=False)
    assert res.returncode != 0
    assert "at '/replicas'" in res.stdout + res.stderr


def test_defaults_and_examples_satisfy_the_schema(helm: Helm, tmp_path: Path) -> None:
    """Every key of values.yaml is described by the schema (nothing slips through additionalProperties)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict[str, Any], value: Any, path: str) -> None:
        if not isinstance(value, dict) or node.get("type") != "object" or "properties" not in node:
            return
        assert node.get("additionalProperties") is False, f"{path or '/'} accepts unknown keys"
        for key, sub in value.items():
            assert key in node["properties"], f"{path}/{key} is in values.yaml but not in the schema"
            walk(node["properties"][key], sub, f"{path}/{key}")

    walk(schema, values, "")
    for key, node in schema["properties"].items():
        assert node.get("description") or node.get("properties"), f"/{key} has no description"
