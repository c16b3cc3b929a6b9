"""The Argo CD health checks on objects the real operator wrote (chart RBAC, real control plane, kwok pods).

test_argocd_health.py covers every phase with samples; this makes sure the samples are not wishful: the
statuses the DeepSeekInference controller actually writes get the health Argo CD should show.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from deepseek_operator.k8s import DeepSeekInference
from deepseek_testbed import ControlPlane, fate_annotations, wait_until
from lightkube import Client, codecs
from lightkube.types import PatchType

from tests.chart.test_argocd_health import ARGOCD, run_lua54
from tests.fixtures.operator import OperatorRunner

pytestmark = pytest.mark.timeout(240)


def inference(name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("model", {"uri": "s3://artifacts/r8/v1"})
    return {"apiVersion": "deepseek.ai/v1alpha1", "kind": "DeepSeekInference", "metadata": {"name": name}, "spec": spec}


def health(client: Client, namespace: str, name: str, tmp_path: Path) -> dict[str, str]:
    obj = client.get(DeepSeekInference, name, namespace=namespace).to_dict()
    return run_lua54(ARGOCD / "DeepSeekInference" / "health.lua", obj, tmp_path)


def wait_health(client: Client, namespace: str, name: str, status: str, tmp_path: Path) -> dict[str, str]:
    def probe() -> dict[str, str] | None:
        got = health(client, namespace, name, tmp_path)
        return got if got["status"] == status else None

    result: dict[str, str] = wait_until(probe, timeout=90, what=f"{name} to be {status} for Argo CD")
    return result


def test_live_inference_health(
    kube_cluster: ControlPlane, namespace: str, operator: OperatorRunner, tmp_path: Path
) -> None:
    client = kube_cluster.client()
    ns = namespace
    client.create(codecs.from_dict(inference("good", replicas=2)), namespace=ns)
    client.create(
        codecs.from_dict(
            inference("crashing", podMetadata={"annotations": fate_annotations("crash-loop", exit_code=66)})
        ),
        namespace=ns,
    )
    client.create(codecs.from_dict(inference("orphan", model={"trainingRef": {"name": "missing"}})), namespace=ns)

    healthy = wait_health(client, ns, "good", "Healthy", tmp_path)
    assert healthy["message"].startswith("Ready: 2/2 replicas, model v1 (int8) at http://good-serve.")
    degraded = wait_health(client, ns, "crashing", "Degraded", tmp_path)
    assert "exit code 66" in degraded["message"], degraded
    orphan = wait_health(client, ns, "orphan", "Degraded", tmp_path)
    assert orphan["message"] == "DeepSeekTraining missing does not exist in this namespace"

    client.patch(DeepSeekInference, "good", {"spec": {"replicas": 0}}, namespace=ns, patch_type=PatchType.MERGE)
    suspended = wait_health(client, ns, "good", "Suspended", tmp_path)
    assert "0" in suspended["message"]
