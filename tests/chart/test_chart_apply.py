"""The rendered chart against the real API server: server-side apply, Pod Security, and a full Helm life cycle.

Namespaced objects go into the test's namespace and cluster-scoped ones get a release-unique name, so the
shared control plane stays clean; the chart's CRDs are checked there with a server-side dry run only (the
controller tests own the CRDs of the shared control plane). Installing, upgrading and uninstalling the release
(CRDs included) happens on a private control plane.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deepseek_testbed import ControlPlane, TestbedError, wait_until
from deepseek_testbed.binaries import ensure_binaries
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Pod

from tests.chart.access import allowed, wait_allowed
from tests.chart.conftest import install_monitoring_crds
from tests.chart.helm import (
    ALL_ON_VALUES,
    CHART,
    NAMESPACED_VALUES,
    ROOT,
    Helm,
    Yaml12Loader,
    by_kind,
    first_difference,
)

CLUSTER_SCOPED = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}


def dump(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def apply(cp: ControlPlane, docs: list[dict[str, Any]], *extra: str) -> str:
    return cp.kubectl(
        "apply", "--server-side", "--field-manager=chart-test", *extra, "-f", "-", input=dump(docs)
    ).stdout


def delete_cluster_objects(cp: ControlPlane, docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if doc["kind"] in {"ClusterRole", "ClusterRoleBinding"}:
            cp.kubectl("delete", doc["kind"].lower(), doc["metadata"]["name"], "--ignore-not-found")


def pod_of(docs: list[dict[str, Any]], namespace: str, name: str) -> dict[str, Any]:
    """A bare Pod with the operator Deployment's pod template (what the ReplicaSet would create)."""
    template = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }


@pytest.mark.parametrize("values", [None, ALL_ON_VALUES], ids=["defaults", "all-on"])
def test_rendered_manifests_apply_server_side(
    monitoring_crds: ControlPlane, helm: Helm, namespace: str, tmp_path: Path, values: Path | None
) -> None:
    cp = monitoring_crds
    release = f"ds{secrets.token_hex(3)}"
    docs = helm.render(tmp_path, files=[values] if values else [], release=release, namespace=namespace)
    crds = by_kind(docs, "CustomResourceDefinition")
    others = [d for d in docs if d["kind"] != "CustomResourceDefinition"]
    assert len(crds) == 2
    # CRDs: validated and admitted by the API server, without changing the shared control plane's CRDs.
    out = apply(cp, list(crds), "--dry-run=server", "--force-conflicts")
    assert out.count("serverside-applied (server dry run)") == 2, out
    try:
        out = apply(cp, others)
        assert out.count("serverside-applied") == len(others), out
        for doc in others:
            ns = ["-n", doc["metadata"]["namespace"]] if doc["kind"] not in CLUSTER_SCOPED else []
            group = doc["apiVersion"].rpartition("/")[0]
            resource = f"{doc['kind'].lower()}.{group}" if group else doc["kind"].lower()
            got = cp.kubectl("get", resource, doc["metadata"]["name"], *ns, "-o", "yaml").stdout
            stored = yaml.load(got, Loader=Yaml12Loader)
            assert stored["metadata"]["labels"]["app.kubernetes.io/instance"] == release
        # Applying the same manifests again changes nothing (no field fights, stable output).
        versions = cp.kubectl(
            "get",
            "deployment,service,serviceaccount",
            "-n",
            namespace,
            "-o",
            "jsonpath={.items[*].metadata.resourceVersion}",
        ).stdout
        apply(cp, others)
        again = cp.kubectl(
            "get",
            "deployment,service,serviceaccount",
            "-n",
            namespace,
            "-o",
            "jsonpath={.items[*].metadata.resourceVersion}",
        ).stdout
        assert again == versions
    finally:
        delete_cluster_objects(cp, docs)


def test_namespaced_mode_applies_roles_in_each_watched_namespace(
    kube_api: ControlPlane, helm: Helm, namespace: str, tmp_path: Path
) -> None:
    watched = [kube_api.create_namespace("watched-a"), kube_api.create_namespace("watched-b")]
    release = f"ds{secrets.token_hex(3)}"
    try:
        docs = helm.render(
            tmp_path,
            {"watchNamespaces": watched, "trainingPodMonitor": {"enabled": False}},
            files=[NAMESPACED_VALUES],
            release=release,
            namespace=namespace,
        )
        apply(kube_api, [d for d in docs if d["kind"] != "CustomResourceDefinition"])
        sa = f"{release}-deepseek-operator"
        for ns in watched:
            wait_allowed(
                kube_api,
                namespace,
                sa,
                "patch",
                "deepseektrainings",
                group="deepseek.ai",
                namespace=ns,
                subresource="status",
            )
            assert allowed(kube_api, namespace, sa, "create", "jobs", group="batch", namespace=ns)
        # Not in a namespace it does not watch, not cluster-wide; CRDs only readable; never Secrets.
        assert not allowed(kube_api, namespace, sa, "create", "jobs", group="batch", namespace=namespace)
        assert not allowed(kube_api, namespace, sa, "list", "deepseektrainings", group="deepseek.ai")
        assert not allowed(kube_api, namespace, sa, "get", "secrets", namespace=watched[0])
        assert not allowed(kube_api, namespace, sa, "update", "customresourcedefinitions", group="apiextensions.k8s.io")
        assert allowed(kube_api, namespace, sa, "watch", "customresourcedefinitions", group="apiextensions.k8s.io")
    finally:
        delete_cluster_objects(kube_api, docs)
        for ns in watched:
            kube_api.delete_namespace(ns)


def test_operator_pod_passes_pod_security_restricted(kube_api: ControlPlane, helm: Helm, tmp_path: Path) -> None:
    """The API server's Pod Security admission (enforce=restricted) admits the operator's pod as rendered,
    with every pod setting of the all-on values, and refuses it once a restricted setting is undone."""
    ns = kube_api.create_namespace("restricted", labels={"pod-security.kubernetes.io/enforce": "restricted"})
    try:
        docs = helm.render(tmp_path, files=[ALL_ON_VALUES], namespace=ns)
        apply(kube_api, [d for d in docs if d["kind"] == "ServiceAccount"])
        pod = pod_of(docs, ns, "operator-probe")
        out = apply(kube_api, [pod], "--dry-run=server")
        assert "serverside-applied (server dry run)" in out
        bad = yaml.safe_load(yaml.safe_dump(pod))
        bad["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
        with pytest.raises(TestbedError, match=r"violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation"):
            apply(kube_api, [bad], "--dry-run=server")
    finally:
        kube_api.delete_namespace(ns)


# --------------------------------------------------------------------------------------------- life cycle


@pytest.fixture(scope="module")
def private_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane of its own (cluster mode), so that CRDs can be installed, upgraded and uninstalled."""
    cp = ControlPlane(tmp_path_factory.mktemp("chart-cluster"), binaries=ensure_binaries())
    try:
        cp.start()
        cp.start_cluster()
        install_monitoring_crds(cp)
        yield cp
    finally:
        cp.stop()


def old_chart(tmp_path: Path) -> Path:
    """The chart as a previous release would have shipped it: version 0.0.9, and a DeepSeekTraining CRD
    without the `Accuracy` printer column and with an older description."""
    copy = tmp_path / "deepseek-operator"
    shutil.copytree(CHART, copy)
    meta = yaml.safe_load((copy / "Chart.yaml").read_text())
    meta["version"] = "0.0.9"
    (copy / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    path = copy / "files" / "crds" / "deepseek.ai_deepseektrainings.yaml"
    crd = yaml.load(path.read_text(), Loader=Yaml12Loader)
    version = crd["spec"]["versions"][0]
    version["additionalPrinterColumns"] = [c for c in version["additionalPrinterColumns"] if c["name"] != "Accuracy"]
    version["schema"]["openAPIV3Schema"]["description"] = "An older DeepSeekTraining."
    path.write_text(yaml.safe_dump(crd, sort_keys=False))
    return copy


def crd_columns(cp: ControlPlane, name: str) -> list[str]:
    out = cp.kubectl("get", "crd", name, "-o", "jsonpath={.spec.versions[0].additionalPrinterColumns[*].name}")
    return out.stdout.split()


def test_install_upgrade_uninstall(private_cluster: ControlPlane, tmp_path: Path) -> None:
    cp = private_cluster
    ns = "deepseek-system"
    cp.kubectl("create", "namespace", ns)
    cp.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    trainings = "deepseektrainings.deepseek.ai"

    # A wrong value is refused by `helm install` before anything is created.
    res = cp.helm("install", "bad", str(CHART), "-n", ns, "--set", "replicas=2", check=False)
    assert res.returncode != 0
    assert "at '/replicas': value must be one of 0, 1" in res.stderr
    assert "bad" not in cp.helm("list", "-n", ns, "-q").stdout.split()

    # Install the "previous" chart with every switch on; the operator's pod is admitted under `restricted`.
    cp.helm(
        "install",
        "ds",
        str(old_chart(tmp_path)),
        "-n",
        ns,
        "-f",
        str(ALL_ON_VALUES),
        "--set",
        "priorityClassName=",
        "--wait",
        "--timeout",
        "120s",
    )
    assert "Accuracy" not in crd_columns(cp, trainings)
    client = cp.client()
    pods = list(client.list(Pod, namespace=ns, labels={"app.kubernetes.io/component": "operator"}))
    assert len(pods) == 1
    assert pods[0].status is not None
    assert pods[0].status.phase == "Running"
    notes = cp.helm("get", "notes", "ds", "-n", ns).stdout
    assert "kubectl -n deepseek-system rollout status deployment/ds-deepseek-operator" in notes

    # Upgrade: the CRD follows the chart (Helm never upgrades a crds/ folder; templates it does).
    cp.helm(
        "upgrade",
        "ds",
        str(CHART),
        "-n",
        ns,
        "-f",
        str(ALL_ON_VALUES),
        "--set",
        "priorityClassName=",
        "--wait",
        "--timeout",
        "120s",
    )
    assert "Accuracy" in crd_columns(cp, trainings)
    stored = yaml.load(cp.kubectl("get", "crd", trainings, "-o", "yaml").stdout, Loader=Yaml12Loader)
    source = yaml.load((ROOT / "crds" / "deepseek.ai_deepseektrainings.yaml").read_text(), Loader=Yaml12Loader)
    diff = first_difference(stored["spec"]["versions"][0]["schema"], source["spec"]["versions"][0]["schema"])
    assert diff is None, diff
    assert (
        stored["spec"]["versions"][0]["additionalPrinterColumns"]
        == source["spec"]["versions"][0]["additionalPrinterColumns"]
    )
    assert stored["metadata"]["annotations"]["meta.helm.sh/release-name"] == "ds"
    dep = client.get(Deployment, "ds-deepseek-operator", namespace=ns)
    assert dep.spec is not None
    assert dep.spec.strategy is not None
    assert dep.spec.strategy.type == "Recreate"
    for kind in ("servicemonitor", "podmonitor", "prometheusrule"):
        assert cp.kubectl("get", kind, "-n", ns, "-o", "name").stdout.strip()

    # Uninstall: everything goes except the CRDs (resource-policy keep), so no custom resource is lost.
    cp.helm("uninstall", "ds", "-n", ns, "--wait", "--timeout", "120s")
    assert cp.kubectl("get", "crd", trainings, "-o", "name").stdout.strip()
    assert not cp.kubectl("get", "clusterrole", "-l", "app.kubernetes.io/instance=ds", "-o", "name").stdout.strip()

    def gone() -> bool:
        return not cp.kubectl("get", "deployment,service,servicemonitor", "-n", ns, "-o", "name").stdout.strip()

    wait_until(gone, timeout=60, what="the release's namespaced objects to be deleted")
