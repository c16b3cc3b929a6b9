"""The inference controller works with least-privilege credentials (the rules docs/operator.md lists).

The operator runs in-process with a ServiceAccount token (TokenRequest, as a pod gets it) bound to exactly the
rules below, instead of admin: a missing permission shows up here as a stuck resource and a 403 in the log.
The Helm chart's ClusterRole must grant at least these (plus what the training controller needs).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from deepseek_operator import naming
from deepseek_testbed import ControlPlane, wait_until
from lightkube import Client

from tests.fixtures.operator import OperatorFactory
from tests.fixtures.rbac import TRAINING_RULES, bound_service_account
from tests.integration.test_inference_controller import condition, create, inference, status, training

pytestmark = pytest.mark.timeout(180)

# What the operator process needs for DeepSeekInference (kopf itself, the watch heartbeat, the controller).
INFERENCE_RULES: list[dict[str, Any]] = [
    # kopf: resource and namespace discovery, the ServiceMonitor CRD watch; events (kopf's and ours).
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    # The custom resources: watched, finalizer patched by kopf, status written; trainings only read.
    {
        "apiGroups": [naming.GROUP],
        "resources": ["deepseekinferences"],
        "verbs": ["get", "list", "watch", "patch"],
    },
    {"apiGroups": [naming.GROUP], "resources": ["deepseekinferences/status"], "verbs": ["get", "patch"]},
    {"apiGroups": [naming.GROUP], "resources": ["deepseektrainings"], "verbs": ["get", "list", "watch"]},
    # Children: server-side applied, watched (Deployments, pods), deleted when no longer wanted.
    {
        "apiGroups": [""],
        "resources": ["configmaps", "services", "serviceaccounts"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {
        "apiGroups": ["apps"],
        "resources": ["deployments"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {
        "apiGroups": ["policy"],
        "resources": ["poddisruptionbudgets"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {
        "apiGroups": ["autoscaling"],
        "resources": ["horizontalpodautoscalers"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {
        "apiGroups": ["monitoring.coreos.com"],
        "resources": ["servicemonitors"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
]


@pytest.fixture
def operator_account(kube_cluster: ControlPlane, namespace: str) -> Iterator[str]:
    """A ServiceAccount bound (cluster-wide) to INFERENCE_RULES only; its kubeconfig path."""
    # The operator process also runs the training controller: its rules too.
    rules = INFERENCE_RULES + TRAINING_RULES
    with bound_service_account(
        kube_cluster, namespace, f"{namespace}-inference-operator", rules, ("patch", "deployments")
    ) as kubeconfig:
        yield kubeconfig


def test_the_inference_controller_needs_only_the_documented_rules(
    kube_cluster: ControlPlane,
    namespace: str,
    operator_account: str,
    operator_factory: OperatorFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    client: Client = kube_cluster.client()
    operator_factory(namespace, kubeconfig=operator_account)
    create(client, namespace, training("src"))
    create(
        client,
        namespace,
        inference(
            "least",
            model={"trainingRef": {"name": "src"}},
            replicas=1,
            autoscaling={"minReplicas": 1, "maxReplicas": 2, "metric": "concurrency"},
        ),
    )
    wait_until(
        lambda: condition(status(client, namespace, "least"), "ModelReady").get("reason") == "TrainingNotSucceeded",
        timeout=60,
        what="the training reference resolved with the operator's own credentials",
    )
    create(client, namespace, {**inference("direct", replicas=1), "metadata": {"name": "direct"}})
    st = wait_until(
        lambda: (s := status(client, namespace, "direct")) and condition(s, "Ready").get("status") == "True" and s,
        timeout=60,
        what="Ready with the operator's own credentials",
    )
    assert st["readyReplicas"] == 1
    assert condition(st, "ServiceMonitorReady")["reason"] == "PrometheusOperatorNotInstalled"
    denied = [
        r.getMessage() for r in caplog.records if "forbidden" in r.getMessage().lower() or " 403" in r.getMessage()
    ]
    assert denied == []
    client.close()
