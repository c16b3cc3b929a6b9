"""`helm lint` and `helm template` of charts/deepseek-operator: defaults, every switch, both RBAC modes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from deepseek_operator.config import OperatorConfig

from tests.chart.helm import ALL_ON_VALUES, CHART, NAMESPACED_VALUES, Helm, by_kind, kinds, one

MONITORING = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())


def deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(one(docs, "Deployment"))


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = deployment(docs)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    return dict(containers[0])


def env(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container(docs)["env"] if "value" in e}


@pytest.mark.parametrize("values", [None, ALL_ON_VALUES, NAMESPACED_VALUES], ids=["defaults", "all-on", "namespaced"])
def test_helm_lint_strict(helm: Helm, values: Path | None) -> None:
    args = ["lint", str(CHART), "--strict"] + (["-f", str(values)] if values else [])
    out = helm.run(*args).stdout
    assert "0 chart(s) failed" in out


def test_lint_fails_on_a_broken_template(helm: Helm, tmp_path: Path) -> None:
    """The lint gate is real: a chart copy with a template error fails it."""
    import shutil

    copy = tmp_path / "deepseek-operator"
    shutil.copytree(CHART, copy)
    (copy / "templates" / "broken.yaml").write_text("{{ .Values.nope.missing }}\n")
    res = helm.run("lint", str(copy), "--strict", check=False)
    assert res.returncode != 0
    assert "nil pointer" in res.stdout + res.stderr


def test_defaults_render_the_operator_and_nothing_optional(rendered_defaults: list[dict[str, Any]]) -> None:
    assert kinds(rendered_defaults) == {
        "ServiceAccount",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "Deployment",
    }
    assert not MONITORING & kinds(rendered_defaults)
    assert not by_kind(rendered_defaults, "ConfigMap")  # no dashboards
    assert {d["metadata"]["name"] for d in by_kind(rendered_defaults, "CustomResourceDefinition")} == {
        "deepseektrainings.deepseek.ai",
        "deepseekinferences.deepseek.ai",
    }
    for doc in rendered_defaults:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "ds"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        if doc["kind"] not in {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}:
            assert doc["metadata"]["namespace"] == "deepseek-system"


def test_all_switches_on_render_every_object(rendered_all_on: list[dict[str, Any]]) -> None:
    assert kinds(rendered_all_on) >= MONITORING
    dashboards = by_kind(rendered_all_on, "ConfigMap")
    assert dashboards, "dashboards.enabled renders ConfigMaps"
    for cm in dashboards:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "DeepSeek"}
    names = {d["metadata"]["name"] for d in by_kind(rendered_all_on, "ClusterRole")}
    assert {"ds-deepseek-operator", "ds-deepseek-operator-edit", "ds-deepseek-operator-view"} <= names
    for kind in MONITORING:
        assert one(rendered_all_on, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_deployment_runs_one_restricted_kopf_instance(rendered_defaults: list[dict[str, Any]]) -> None:
    dep = deployment(rendered_defaults)
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ds-deepseek-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(rendered_defaults)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    c = container(rendered_defaults)
    assert c["image"] == f"ghcr.io/deepseek-operator/operator:{CHART_META['appVersion']}"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "readinessProbe" not in c
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    # The pod selector matches the metrics Service's selector.
    svc = one(rendered_defaults, "Service")
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"


def test_operator_reads_what_the_chart_sets(rendered_all_on: list[dict[str, Any]]) -> None:
    """The environment the chart gives the container is parsed by the operator's own config loader."""
    values = yaml.safe_load(ALL_ON_VALUES.read_text())
    config = OperatorConfig.from_env(env(rendered_all_on))
    assert config.namespaces == []
    assert config.worker_image == f"ghcr.io/deepseek-operator/worker@{values['workerImage']['digest']}"
    assert config.worker_image_pull_policy == "Always"
    assert config.resync_seconds == 15
    assert config.max_concurrent_reconciles == 8
    assert config.metrics_port == 8080
    assert config.liveness_port == 8081
    c = container(rendered_all_on)
    assert c["args"] == ["--log-format=plain", "--verbose"]
    pod_ns = next(e for e in c["env"] if e["name"] == "POD_NAMESPACE")
    assert pod_ns["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_default_worker_image_is_the_operators_default(rendered_defaults: list[dict[str, Any]]) -> None:
    """Chart and code agree on the worker image when nothing is configured (docker/worker.Dockerfile's tag)."""
    assert env(rendered_defaults)["DEEPSEEK_WORKER_IMAGE"] == OperatorConfig().worker_image
    assert OperatorConfig().worker_image == f"ghcr.io/deepseek-operator/worker:{CHART_META['appVersion']}"


def test_pod_settings_from_values(rendered_all_on: list[dict[str, Any]]) -> None:
    values = yaml.safe_load(ALL_ON_VALUES.read_text())
    tpl = deployment(rendered_all_on)["spec"]["template"]
    pod = tpl["spec"]
    assert pod["nodeSelector"] == values["nodeSelector"]
    assert pod["tolerations"] == values["tolerations"]
    assert pod["affinity"] == values["affinity"]
    assert pod["priorityClassName"] == values["priorityClassName"]
    assert pod["imagePullSecrets"] == values["imagePullSecrets"]
    assert tpl["metadata"]["annotations"]["example.com/team"] == "ml-platform"
    assert tpl["metadata"]["labels"]["example.com/tier"] == "platform"
    c = container(rendered_all_on)
    assert c["image"] == "ghcr.io/deepseek-operator/operator:0.1.0-test"
    assert {"name": "HTTPS_PROXY", "value": "http://proxy.example.com:3128"} in c["env"]
    sa = one(rendered_all_on, "ServiceAccount")
    assert sa["metadata"]["annotations"] == values["serviceAccount"]["annotations"]


def test_replicas_zero_pauses(helm: Helm, tmp_path: Path) -> None:
    assert deployment(helm.render(tmp_path, {"replicas": 0}))["spec"]["replicas"] == 0


@pytest.mark.parametrize(
    ("values", "absent", "present"),
    [
        ({"crds": {"install": False}}, {"CustomResourceDefinition"}, {"Deployment"}),
        ({"rbac": {"create": False}}, {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}, {"Deployment"}),
        ({"serviceAccount": {"create": False, "name": "existing"}}, {"ServiceAccount"}, {"Deployment"}),
        ({"metrics": {"service": {"enabled": False}}}, {"Service"}, {"Deployment"}),
        ({"serviceMonitor": {"enabled": True}}, {"PodMonitor", "PrometheusRule"}, {"ServiceMonitor"}),
        ({"trainingPodMonitor": {"enabled": True}}, {"ServiceMonitor", "PrometheusRule"}, {"PodMonitor"}),
        ({"prometheusRule": {"enabled": True}}, {"ServiceMonitor", "PodMonitor"}, {"PrometheusRule"}),
        ({"dashboards": {"enabled": True}}, MONITORING, {"ConfigMap"}),
    ],
    ids=["crds", "rbac", "service-account", "metrics-service", "service-monitor", "pod-monitor", "rule", "dashboards"],
)
def test_each_switch(helm: Helm, tmp_path: Path, values: dict[str, Any], absent: set[str], present: set[str]) -> None:
    docs = helm.render(tmp_path, values)
    assert not absent & kinds(docs)
    assert present <= kinds(docs)


def test_existing_service_account_is_used(helm: Helm, tmp_path: Path) -> None:
    docs = helm.render(tmp_path, {"serviceAccount": {"create": False, "name": "existing"}})
    assert deployment(docs)["spec"]["template"]["spec"]["serviceAccountName"] == "existing"
    binding = one(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "existing", "namespace": "deepseek-system"}]


def test_crds_keep_policy_switch(helm: Helm, tmp_path: Path, rendered_defaults: list[dict[str, Any]]) -> None:
    for crd in by_kind(rendered_defaults, "CustomResourceDefinition"):
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for crd in by_kind(helm.render(tmp_path, {"crds": {"keep": False}}), "CustomResourceDefinition"):
        assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})


def test_aggregated_roles_switch(helm: Helm, tmp_path: Path, rendered_defaults: list[dict[str, Any]]) -> None:
    edit = one(rendered_defaults, "ClusterRole", "ds-deepseek-operator-edit")
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    view = one(rendered_defaults, "ClusterRole", "ds-deepseek-operator-view")
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in view["rules"])
    names = {
        d["metadata"]["name"]
        for d in by_kind(helm.render(tmp_path, {"rbac": {"aggregateToDefaultRoles": False}}), "ClusterRole")
    }
    assert names == {"ds-deepseek-operator"}


def test_cluster_wide_rbac(rendered_defaults: list[dict[str, Any]]) -> None:
    role = one(rendered_defaults, "ClusterRole", "ds-deepseek-operator")
    binding = one(rendered_defaults, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "ds-deepseek-operator", "namespace": "deepseek-system"}
    ]
    assert not by_kind(rendered_defaults, "Role")
    assert env(rendered_defaults)["DEEPSEEK_WATCH_NAMESPACES"] == ""


def test_namespaced_rbac(helm: Helm, tmp_path: Path) -> None:
    docs = helm.render(tmp_path, files=[NAMESPACED_VALUES])
    roles = by_kind(docs, "Role")
    bindings = by_kind(docs, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["roleRef"]["kind"] == "Role"
        assert b["subjects"][0]["namespace"] == "deepseek-system"
    # Cluster-wide, only reads of CRDs and namespaces (kopf's discovery) and the aggregated user roles.
    cluster_roles = {d["metadata"]["name"]: d for d in by_kind(docs, "ClusterRole")}
    discovery = cluster_roles.pop("ds-deepseek-operator-discovery")
    assert discovery["rules"] == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["get", "list", "watch"],
        },
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
    ]
    assert set(cluster_roles) == {"ds-deepseek-operator-edit", "ds-deepseek-operator-view"}
    assert [b["roleRef"]["name"] for b in by_kind(docs, "ClusterRoleBinding")] == ["ds-deepseek-operator-discovery"]
    assert OperatorConfig.from_env(env(docs)).namespaces == ["team-a", "team-b"]
    pm = one(docs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def test_operator_rules_never_grant_secrets_or_wildcards(rendered_defaults: list[dict[str, Any]]) -> None:
    role = one(rendered_defaults, "ClusterRole", "ds-deepseek-operator")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"]
        assert "*" not in rule["resources"]
        assert "*" not in rule.get("apiGroups", [])
        assert "secrets" not in rule["resources"]
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
        if rule["resources"] == ["pods"]:
            assert set(rule["verbs"]) == {"get", "list", "watch"}


def test_names_fit_kubernetes_limits(helm: Helm, tmp_path: Path) -> None:
    release = "a-very-long-release-name-that-goes-on-for-53-characters"[:53]  # helm's maximum
    docs = helm.render(tmp_path, files=[ALL_ON_VALUES], release=release)
    for doc in docs:
        assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]
    keys = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), "two objects got the same name after truncation"
