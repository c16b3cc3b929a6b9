"""The operator cluster-wide (the chart's default mode) with exactly the chart's ClusterRole, on a private API server.

The controller integration tests run the operator namespaced (the chart's Role per watched namespace), so that
leftovers of other tests are never reconciled; this covers the other mode. A control plane of its own holds the
chart's default RBAC (rendered by helm, applied, a bound token of its ServiceAccount); the operator watches every
namespace and must reconcile DeepSeekInference resources in namespaces created after it started, write their
status and children, while the same credentials stay refused Secrets and direct pod creation everywhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deepseek_operator import naming
from deepseek_operator.k8s import DeepSeekInference
from deepseek_testbed import ControlPlane, wait_until
from deepseek_testbed.binaries import ensure_binaries
from lightkube import ApiError, Client, codecs
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import ConfigMap, Service

from tests.chart.helm import Helm
from tests.fixtures.chart_rbac import ChartRbac
from tests.fixtures.operator import CRD_DIR, OperatorRunner, operator_config

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def private_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """An API server of its own with the project's CRDs: a cluster-wide operator sees only this test's objects."""
    cp = ControlPlane(tmp_path_factory.mktemp("cluster-wide"), binaries=ensure_binaries())
    try:
        cp.start()
        files = sorted(CRD_DIR.glob("*.yaml"))
        for f in files:
            cp.kubectl("apply", "--server-side", "-f", str(f))
        names = [f.stem.split("_", 1)[1] + "." + f.stem.split("_", 1)[0] for f in files]
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names])
        for name in names:
            wait_until(
                lambda name=name: cp.kubectl("get", name, "-A", check=False).returncode == 0,
                timeout=60,
                what=f"{name} to be served",
            )
        yield cp
    finally:
        cp.stop()


def inference(name: str) -> dict[str, Any]:
    return {
        "apiVersion": naming.API_VERSION,
        "kind": "DeepSeekInference",
        "metadata": {"name": name},
        "spec": {"model": {"uri": "s3://artifacts/r8/v1"}},
    }


def status_of(client: Client, namespace: str, name: str) -> dict[str, Any]:
    obj = client.get(DeepSeekInference, name, namespace=namespace)
    return dict(obj.get("status") or {})


def test_cluster_wide_operator_with_the_charts_cluster_role(private_api: ControlPlane, tmp_path: Path) -> None:
    cp = private_api
    rbac = ChartRbac(cp, Helm(ensure_binaries()["helm"], tmp_path / "helm-home"), tmp_path)
    kubeconfig = rbac.kubeconfig([])  # the chart's default: ClusterRole + ClusterRoleBinding
    assert rbac.allowed("list", "deepseekinferences", group="deepseek.ai")  # every namespace

    # As the chart's Deployment configures it: no DEEPSEEK_WATCH_NAMESPACES, POD_NAMESPACE the release's.
    config = dataclasses.replace(
        operator_config(rbac.operator_namespace, namespaces=[]), namespace=rbac.operator_namespace
    )
    runner = OperatorRunner(config, str(kubeconfig))
    client = cp.client()
    with runner:
        # Namespaces created after the operator started are watched too.
        teams = [cp.create_namespace("team-a"), cp.create_namespace("team-b")]
        for ns in teams:
            manifest = inference("r8")
            manifest["metadata"]["namespace"] = ns
            client.create(codecs.from_dict(manifest))
        for ns in teams:
            wait_until(
                lambda ns=ns: bool(status_of(client, ns, "r8").get("phase")),
                timeout=60,
                what=f"the operator to write the status of {ns}/r8",
            )
            for kind in (Deployment, Service, ConfigMap):
                child = client.get(kind, "r8-serve", namespace=ns)
                assert child.metadata is not None
                owners = child.metadata.ownerReferences or []
                assert [o.kind for o in owners] == ["DeepSeekInference"], (kind, owners)
            obj = client.get(DeepSeekInference, "r8", namespace=ns)
            assert obj.metadata is not None
            assert naming.FINALIZER in (obj.metadata.finalizers or [])

        # Deletion goes through the operator's finalizer and the garbage of its children.
        client.delete(DeepSeekInference, "r8", namespace=teams[0])

        def deleted() -> bool:
            try:
                client.get(DeepSeekInference, "r8", namespace=teams[0])
            except ApiError as err:
                return err.status.code == 404
            return False

        wait_until(deleted, timeout=60, what="the operator to release its finalizer")

    # Cluster-wide is not "everything": no Secrets, no direct pods, no cluster writes, in any namespace.
    for ns in [*teams, None]:
        assert not rbac.allowed("get", "secrets", namespace=ns)
        assert not rbac.allowed("list", "secrets", namespace=ns)
        assert not rbac.allowed("create", "pods", namespace=ns)
    assert not rbac.allowed("delete", "nodes")
    assert not rbac.allowed("create", "customresourcedefinitions", group="apiextensions.k8s.io")
    assert not rbac.allowed("create", "clusterroles", group="rbac.authorization.k8s.io")
