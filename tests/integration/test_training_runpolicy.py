"""Run policy on the cluster fixture: suspend and resume, TTL after finishing (the resource deletes itself and
garbage collection takes every child), and changes after the start (refused, or taking effect)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepseek_operator.builders import training as build
from deepseek_testbed import ControlPlane, fate_annotations, wait_until

from tests.fixtures import training as tr
from tests.fixtures.operator import OperatorRunner

CHILD_KINDS = "jobs,pods,configmaps,services,serviceaccounts,roles,rolebindings"


def _children(kube: ControlPlane, ns: str, name: str) -> list[str]:
    out = kube.kubectl("get", CHILD_KINDS, "-n", ns, "-l", f"deepseek.ai/training={name}", "-o", "name").stdout
    return out.split()


def _patch(kube: ControlPlane, ns: str, name: str, patch: str, check: bool = True) -> Any:
    return kube.kubectl("patch", "dstrain", name, "-n", ns, "--type=merge", "-p", patch, check=check)


def test_suspend_then_resume_continues_the_same_run(
    kube_cluster: ControlPlane, namespace: str, operator: OperatorRunner, tmp_path: Path, monkeypatch: Any
) -> None:
    ns, name = namespace, "pausable"
    tr.apply(kube_cluster, ns, tr.training_manifest(name, fate=tr.run_forever()))
    tr.wait_phase(kube_cluster, ns, name, "Running")
    (job,) = tr.jobs(kube_cluster, ns, name)
    first_pod = {p["metadata"]["name"] for p in tr.pods(kube_cluster, ns, name)}
    worker = tr.WorkerSide(kube_cluster, ns, name, tmp_path, monkeypatch)
    worker.report(stage="train", step=40, totalSteps=100, loss=0.7)
    wait_until(
        lambda: tr.status(kube_cluster, ns, name).get("progress", {}).get("step") == 40, timeout=30, what="progress"
    )

    _patch(kube_cluster, ns, name, '{"spec":{"runPolicy":{"suspend":true}}}')
    st = tr.wait_phase(kube_cluster, ns, name, "Suspended")
    assert tr.condition(st, "Suspended")["status"] == "True"
    wait_until(lambda: not tr.pods(kube_cluster, ns, name), timeout=30, what="the worker pods to be stopped")
    (suspended_job,) = tr.jobs(kube_cluster, ns, name)
    assert suspended_job["spec"]["suspend"] is True
    assert suspended_job["metadata"]["uid"] == job["metadata"]["uid"]  # the same Job, not a new attempt
    assert tr.status(kube_cluster, ns, name)["progress"]["step"] == 40  # progress is kept

    _patch(kube_cluster, ns, name, '{"spec":{"runPolicy":{"suspend":false}}}')
    st = tr.wait_phase(kube_cluster, ns, name, "Running")
    assert tr.condition(st, "Suspended")["status"] == "False"
    assert tr.condition(st, "Suspended")["reason"] == "Resumed"
    assert st["restarts"] == 0  # suspension is not a failure
    second_pod = {p["metadata"]["name"] for p in tr.pods(kube_cluster, ns, name)}
    assert second_pod
    assert second_pod.isdisjoint(first_pod)
    # The worker resumes from its newest checkpoint and says so; the status shows it.
    worker.report(stage="train", step=41, totalSteps=100, resumedFromStep=40)
    wait_until(
        lambda: tr.status(kube_cluster, ns, name).get("progress", {}).get("resumedFromStep") == 40,
        timeout=30,
        what="resumedFromStep in status",
    )
    reasons = tr.event_reasons(kube_cluster, ns, name)
    seq = [r for r in reasons if r in ("Running", "Suspended", "Resumed")]
    # Resumed, then Running once the new pod runs (one event if the pod ran before the operator looked).
    assert seq[:3] == ["Running", "Suspended", "Resumed"]
    assert seq[3:] in ([], ["Running"])


def test_spec_is_fixed_after_the_start_but_run_policy_is_not(
    kube_cluster: ControlPlane, namespace: str, operator: OperatorRunner
) -> None:
    ns, name = namespace, "fixed"
    tr.apply(kube_cluster, ns, tr.training_manifest(name, fate=tr.run_forever()))
    tr.wait_phase(kube_cluster, ns, name, "Running")
    refused = _patch(kube_cluster, ns, name, '{"spec":{"training":{"epochs":7}}}', check=False)
    assert refused.returncode != 0
    assert "spec.training cannot change once the run has started" in refused.stderr
    _patch(kube_cluster, ns, name, '{"spec":{"runPolicy":{"ttlSecondsAfterFinished":3600,"backoffLimit":5}}}')
    st = wait_until(
        lambda: (s := tr.status(kube_cluster, ns, name)).get("observedGeneration") == 2 and s,
        timeout=30,
        what="the new generation observed",
    )
    assert st["phase"] == "Running"


def test_ttl_deletes_the_finished_resource_and_every_child(
    kube_cluster: ControlPlane, namespace: str, operator: OperatorRunner
) -> None:
    ns, name = namespace, "short-lived"
    manifest = tr.training_manifest(
        name,
        fate=fate_annotations(run_seconds=0.5),
        quantization={"enabled": False},
        runPolicy={"ttlSecondsAfterFinished": 3600},
    )
    tr.apply(kube_cluster, ns, manifest)
    wait_until(lambda: len(_children(kube_cluster, ns, name)) >= 6, timeout=30, what="the children")
    # Without a worker report the run concludes after the report grace period.
    st = tr.wait_phase(kube_cluster, ns, name, "Succeeded", timeout=60)
    assert st["artifacts"]["defaultVariant"] == "fp32"
    assert tr.condition(st, "Quantized")["reason"] == "QuantizationDisabled"

    # The TTL may change after the finish, and the new one takes effect.
    _patch(kube_cluster, ns, name, '{"spec":{"runPolicy":{"ttlSecondsAfterFinished":2}}}')
    wait_until(lambda: tr.get(kube_cluster, ns, name) is None, timeout=60, what="the TTL to delete the resource")
    wait_until(
        lambda: not _children(kube_cluster, ns, name),
        timeout=90,
        what="garbage collection of every child",
        describe=lambda: " ".join(_children(kube_cluster, ns, name)),
    )


def test_a_resource_created_suspended_starts_nothing_until_resumed(
    kube_cluster: ControlPlane, namespace: str, operator: OperatorRunner
) -> None:
    ns, name = namespace, "queued"
    tr.apply(kube_cluster, ns, tr.training_manifest(name, fate=tr.run_forever(), runPolicy={"suspend": True}))
    st = tr.wait_phase(kube_cluster, ns, name, "Suspended")
    assert "startTime" not in st  # not started: the spec may still change
    assert not tr.jobs(kube_cluster, ns, name)
    _patch(kube_cluster, ns, name, '{"spec":{"training":{"epochs":2}}}')  # allowed before the start
    wait_until(
        lambda: (
            '"epochs": 2'
            in kube_cluster.kubectl(
                "get", "configmap", build.names(name).config, "-n", ns, "-o", "jsonpath={.data.run\\.json}"
            ).stdout
        ),
        timeout=30,
        what="the run config to follow the spec before the start",
    )
    _patch(kube_cluster, ns, name, '{"spec":{"runPolicy":{"suspend":false}}}')
    st = tr.wait_phase(kube_cluster, ns, name, "Running")
    assert st["startTime"]


def test_deleting_a_running_distributed_training_removes_every_child(
    kube_cluster: ControlPlane, namespace: str, operator: OperatorRunner
) -> None:
    """kubectl delete while its pods run: the resource goes (no finalizer left behind) and garbage collection
    takes every child, the rendezvous Service and the worker pods included."""
    ns, name = namespace, "doomed"
    manifest = tr.training_manifest(name, fate=tr.run_forever(), distributed={"workers": 2, "gpusPerWorker": 1})
    tr.apply(kube_cluster, ns, manifest)
    tr.wait_phase(kube_cluster, ns, name, "Running")
    kinds = {c.split("/")[0] for c in _children(kube_cluster, ns, name)}
    assert kinds == {
        "job.batch",
        "pod",
        "configmap",
        "service",
        "serviceaccount",
        "role.rbac.authorization.k8s.io",
        "rolebinding.rbac.authorization.k8s.io",
    }
    kube_cluster.kubectl("delete", "dstrain", name, "-n", ns, "--wait=false")
    wait_until(lambda: tr.get(kube_cluster, ns, name) is None, timeout=60, what="the resource to be deleted")
    wait_until(
        lambda: not _children(kube_cluster, ns, name),
        timeout=90,
        what="garbage collection of every child",
        describe=lambda: " ".join(_children(kube_cluster, ns, name)),
    )
