"""The training controller works with least-privilege credentials (the rules docs/operator.md lists).

The operator runs in-process with a ServiceAccount token (TokenRequest, as a pod gets it) bound to exactly the
rules in tests/fixtures/rbac.py instead of admin: a missing permission shows up as a stuck resource and a 403 in
the log. The operator process runs every controller, so the inference controller's rules are granted too. The
Helm chart's ClusterRole must grant at least the union.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from deepseek_testbed import ControlPlane, fate_annotations, wait_until

from tests.fixtures import training as tr
from tests.fixtures.operator import OperatorFactory
from tests.fixtures.rbac import TRAINING_RULES, bound_service_account
from tests.integration.test_inference_rbac import INFERENCE_RULES


@pytest.fixture
def operator_account(kube_cluster: ControlPlane, namespace: str) -> Iterator[str]:
    """A ServiceAccount bound (cluster-wide) to the documented rules only; its kubeconfig path."""
    rules = TRAINING_RULES + list(INFERENCE_RULES)
    name = f"{namespace}-training-operator"
    with bound_service_account(kube_cluster, namespace, name, rules, ("create", "rolebindings")) as kubeconfig:
        yield kubeconfig


def test_the_training_controller_needs_only_the_documented_rules(
    kube_cluster: ControlPlane,
    namespace: str,
    operator_account: str,
    operator_factory: OperatorFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    ns = namespace
    operator_factory(ns, kubeconfig=operator_account)
    # Both stages, a retry (Job deletion) and the TTL (self-deletion), all with the operator's own credentials.
    tr.apply(
        kube_cluster,
        ns,
        tr.training_manifest("least", fate=fate_annotations(run_seconds=0.5), runPolicy={"ttlSecondsAfterFinished": 8}),
    )
    tr.apply(
        kube_cluster,
        ns,
        tr.training_manifest("retried", fate=fate_annotations("fail", run_seconds=0.5), runPolicy={"backoffLimit": 1}),
    )
    tr.wait_phase(kube_cluster, ns, "least", "Succeeded", timeout=90)
    st = tr.wait_phase(kube_cluster, ns, "retried", "Failed", timeout=90)
    assert st["restarts"] == 1
    wait_until(lambda: tr.get(kube_cluster, ns, "least") is None, timeout=60, what="the TTL deletion")
    assert "JobCreated" in tr.event_reasons(kube_cluster, ns, "retried")
    denied = [
        r.getMessage() for r in caplog.records if "forbidden" in r.getMessage().lower() or " 403" in r.getMessage()
    ]
    assert denied == []
