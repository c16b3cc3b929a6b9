"""The operator's own API client, with the Helm chart's credentials, is refused what the chart does not grant.

The controller integration tests run the operator with these credentials (tests/fixtures/operator.py) and show
that the chart grants enough; this shows it grants no more than it should: no Secrets, no pods created
directly, no other namespaces in namespaced mode, no cluster-wide writes, no privilege escalation.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from deepseek_operator import k8s
from deepseek_testbed import ControlPlane
from lightkube import ApiError, AsyncClient
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.rbac_v1 import PolicyRule
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.core_v1 import ConfigMap, Node, Pod, Secret
from lightkube.resources.rbac_authorization_v1 import ClusterRole, Role

from tests.fixtures.chart_rbac import ChartRbac

Training = create_namespaced_resource("deepseek.ai", "v1alpha1", "DeepSeekTraining", "deepseektrainings")


@pytest.fixture
def operator_kubeconfig(chart_rbac: ChartRbac, project_crds: list[str], namespace: str) -> str:
    """The chart's ServiceAccount token, with the chart's Role in `namespace` (namespaced mode)."""
    return str(chart_rbac.kubeconfig([namespace]))


@contextlib.asynccontextmanager
async def operator_client(kubeconfig: str) -> AsyncIterator[AsyncClient]:
    """The operator's own API client (deepseek_operator.k8s) logged in with `kubeconfig`."""
    k8s.configure(kubeconfig)
    try:
        yield k8s.client()
    finally:
        close = getattr(k8s, "close", None)
        await (close() if close is not None else k8s.client().close())


async def forbidden(coro: object) -> str:
    with pytest.raises(ApiError) as err:
        await coro  # type: ignore[misc]
    assert err.value.status.code == 403, err.value.status
    return str(err.value.status.message)


async def test_operator_credentials_are_refused_secrets(
    kube_api: ControlPlane, namespace: str, operator_kubeconfig: str
) -> None:
    kube_api.client().create(
        Secret(metadata=ObjectMeta(name="s3-credentials"), stringData={"key": "x"}), namespace=namespace
    )
    async with operator_client(operator_kubeconfig) as client:
        await _secrets_refused(client, namespace)


async def _secrets_refused(client: AsyncClient, namespace: str) -> None:
    # What it needs works: its resources and children in the watched namespace.
    assert [t async for t in client.list(Training, namespace=namespace)] == []
    await client.create(ConfigMap(metadata=ObjectMeta(name="probe"), data={"a": "b"}), namespace=namespace)
    # Secrets: neither by name nor by listing.
    message = await forbidden(client.get(Secret, "s3-credentials", namespace=namespace))
    assert 'cannot get resource "secrets"' in message
    assert ":deepseek-operator" in message  # refused as the chart's ServiceAccount, not some other identity
    await forbidden(_first(client.list(Secret, namespace=namespace)))


async def test_operator_credentials_are_refused_everything_else(
    kube_api: ControlPlane, namespace: str, operator_kubeconfig: str
) -> None:
    other = kube_api.create_namespace("not-watched")
    try:
        async with operator_client(operator_kubeconfig) as client:
            await _everything_else_refused(client, namespace, other)
    finally:
        kube_api.delete_namespace(other)


async def _everything_else_refused(client: AsyncClient, namespace: str, other: str) -> None:
    # Pods only through Jobs and Deployments, never directly (a pod could mount any Secret).
    pod = Pod(metadata=ObjectMeta(name="direct"), spec=PodSpec(containers=[Container(name="c", image="busybox")]))
    await forbidden(client.create(pod, namespace=namespace))
    # Nothing in a namespace it does not watch.
    await forbidden(_first(client.list(Training, namespace=other)))
    await forbidden(client.create(ConfigMap(metadata=ObjectMeta(name="x")), namespace=other))
    # No cluster-wide writes: nodes, CRDs, cluster roles.
    await forbidden(client.delete(Node, "gpu-node-0"))
    await forbidden(client.delete(CustomResourceDefinition, "deepseektrainings.deepseek.ai"))
    await forbidden(client.create(ClusterRole(metadata=ObjectMeta(name=f"{namespace}-x"), rules=[])))
    # No escalation: a Role granting what the operator lacks (Secrets) is refused, although it may create
    # Roles (the workers' progress Role).
    escalating = Role(
        metadata=ObjectMeta(name="escalate"),
        rules=[PolicyRule(apiGroups=[""], resources=["secrets"], verbs=["get"])],
    )
    message = await forbidden(client.create(escalating, namespace=namespace))
    assert "escalat" in message
    allowed = Role(
        metadata=ObjectMeta(name="progress"),
        rules=[PolicyRule(apiGroups=[""], resources=["configmaps"], resourceNames=["p"], verbs=["get", "patch"])],
    )
    await client.create(allowed, namespace=namespace)


async def _first(iterator: object) -> object:
    async for item in iterator:  # type: ignore[attr-defined]
        return item
    return None
