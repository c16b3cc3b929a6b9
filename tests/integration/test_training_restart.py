"""The operator stopped and started again mid-run: it finds what it made (deterministic names, indexes filled
before any reconcile), creates no duplicate child, and reaches the same end state. A stage that ended while
the operator was away is picked up on restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepseek_testbed import ControlPlane, wait_until

from tests.fixtures import training as tr
from tests.fixtures.operator import OperatorRunner

KINDS = "jobs,configmaps,serviceaccounts,roles,rolebindings,services"


def _children(kube: ControlPlane, ns: str, name: str) -> dict[str, str]:
    """kind/name -> uid of every child (pods excluded: they belong to the Jobs)."""
    out = kube.kubectl(
        "get",
        KINDS,
        "-n",
        ns,
        "-l",
        f"deepseek.ai/training={name}",
        "-o",
        "jsonpath={range .items[*]}{.kind}/{.metadata.name}={.metadata.uid}{'\\n'}{end}",
    ).stdout
    return dict(line.split("=", 1) for line in out.split())


def test_operator_restarted_mid_run_creates_no_duplicates_and_finishes(
    kube_cluster: ControlPlane, namespace: str, operator: OperatorRunner, tmp_path: Path, monkeypatch: Any
) -> None:
    ns, name = namespace, "durable"
    tr.apply(kube_cluster, ns, tr.training_manifest(name, fate=tr.run_forever()))
    tr.wait_phase(kube_cluster, ns, name, "Running")
    before = _children(kube_cluster, ns, name)
    assert len(before) == 6  # 2 ConfigMaps, ServiceAccount, Role, RoleBinding, train Job

    operator.restart()  # a restart while nothing changed: nothing may be re-created
    wait_until(lambda: tr.status(kube_cluster, ns, name).get("phase") == "Running", timeout=30, what="still Running")
    assert _children(kube_cluster, ns, name) == before

    # While the operator is away, the train stage ends (worker's closing report, then the pod completes).
    operator.stop()
    worker = tr.WorkerSide(kube_cluster, ns, name, tmp_path, monkeypatch)
    worker.report(stage="train", state="succeeded", step=50, totalSteps=50, metrics={"accuracy": 0.9})
    tr.finish_pods(kube_cluster, ns, name, "train")
    wait_until(
        lambda: all(p["status"].get("phase") == "Succeeded" for p in tr.pods(kube_cluster, ns, name, "train")),
        timeout=30,
        what="the train pod to complete while the operator is down",
    )
    assert tr.status(kube_cluster, ns, name)["phase"] == "Running"  # nobody looked yet

    operator.start()
    tr.wait_phase(kube_cluster, ns, name, "Quantizing")
    wait_until(lambda: tr.pods(kube_cluster, ns, name, "quantize"), timeout=30, what="the quantize pod")
    during = _children(kube_cluster, ns, name)
    assert {k: v for k, v in during.items() if k in before} == before  # the same objects, not new ones
    assert sorted(set(during) - set(before)) == [f"Job/{name}-quantize"]

    operator.restart()
    worker.report(
        stage="quantize",
        state="succeeded",
        step=6,
        totalSteps=6,
        metrics={"fp32Accuracy": 0.9, "int8Accuracy": 0.89, "accuracyDrop": 0.01},
        overBudget=False,
    )
    wait_until(
        lambda: any(p["status"].get("phase") == "Running" for p in tr.pods(kube_cluster, ns, name, "quantize")),
        timeout=30,
        what="the quantize pod to run",
    )
    tr.finish_pods(kube_cluster, ns, name, "quantize")
    st = tr.wait_phase(kube_cluster, ns, name, "Succeeded")
    assert st["restarts"] == 0
    assert st["metrics"]["accuracy"] == 0.89
    assert _children(kube_cluster, ns, name) == during
    assert tr.event_reasons(kube_cluster, ns, name).count("JobCreated") == 2
