"""DeepSeekInference reconciliation on the real control plane, operator in-process (issue 5, "done when").

kube-apiserver, kube-controller-manager (Deployments, ReplicaSets, HPA, garbage collector), kube-scheduler and
kwok's fake nodes are real; only the kubelet is simulated (kwok marks pods Running/Ready, or applies the fate
chosen with the testbed's pod annotations, which the CR's podMetadata copies onto the pods). No training
controller runs here: a DeepSeekTraining's progress is written to its status subresource the way the training
controller writes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from deepseek_operator import naming
from deepseek_operator.k8s import DeepSeekInference, DeepSeekTraining, ServiceMonitor
from deepseek_testbed import ControlPlane, fate_annotations, wait_until
from lightkube import ApiError, Client, codecs
from lightkube.core.resource import NamespacedResource
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.apps_v1 import Deployment, ReplicaSet
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.resources.core_v1 import (
    ConfigMap,
    Event,
    Namespace,
    PersistentVolume,
    Pod,
    Service,
    ServiceAccount,
)
from lightkube.resources.policy_v1 import PodDisruptionBudget
from lightkube.types import PatchType
from prometheus_client import REGISTRY

from tests.fixtures.operator import OperatorFactory, OperatorRunner

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def operator(operator_factory: OperatorFactory, namespace: str) -> OperatorRunner:
    """Only the inference controller: these tests write the referenced trainings' status themselves (what the
    training controller reports), so that controller must not run those trainings and overwrite it."""
    return operator_factory(namespace, controllers=frozenset({"inference"}))


TIMEOUT = 60.0
KIND = "DeepSeekInference"


@pytest.fixture
def client(kube_cluster: ControlPlane) -> Iterator[Client]:
    c = kube_cluster.client()
    yield c
    c.close()


@pytest.fixture
def artifacts_pvc(client: Client, namespace: str) -> Iterator[str]:
    """PVC `artifacts` bound to a PersistentVolume, as the training output and the served artifact's home."""
    pv_name = f"{namespace}-artifacts"
    client.create(
        codecs.from_dict(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": pv_name},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteMany"],
                    "hostPath": {"path": f"/tmp/{pv_name}"},
                    "claimRef": {"namespace": namespace, "name": "artifacts"},
                    "storageClassName": "",
                },
            }
        )
    )
    create(
        client,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "artifacts"},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "1Gi"}},
                "storageClassName": "",
                "volumeName": pv_name,
            },
        },
    )
    yield "artifacts"
    client.delete(PersistentVolume, pv_name)


# ---------------------------------------------------------------------------------------------------------
# helpers


def create(client: Client, namespace: str, manifest: dict[str, Any]) -> None:
    manifest.setdefault("metadata", {})["namespace"] = namespace
    client.create(codecs.from_dict(manifest))


def inference(name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("model", {"uri": "s3://artifacts/r8/v1"})
    return {"apiVersion": naming.API_VERSION, "kind": "DeepSeekInference", "metadata": {"name": name}, "spec": spec}


def training(name: str) -> dict[str, Any]:
    return {
        "apiVersion": naming.API_VERSION,
        "kind": "DeepSeekTraining",
        "metadata": {"name": name},
        "spec": {
            "model": {"builtin": {"name": "all-minilm-l6-v2"}},
            "dataset": {"builtin": "reuters-r8"},
            "output": {"pvc": {"claimName": "artifacts", "path": name}},
        },
    }


SUCCEEDED = {
    "phase": "Succeeded",
    "artifacts": {
        "version": "v1",
        "uri": "/var/lib/deepseek/output/minilm/v1",
        "fp32": "/var/lib/deepseek/output/minilm/v1/fp32",
        "int8": "/var/lib/deepseek/output/minilm/v1/int8",
        "onnx": "/var/lib/deepseek/output/minilm/v1/onnx",
        "defaultVariant": "int8",
    },
}


def set_training_status(client: Client, namespace: str, name: str, status: dict[str, Any]) -> None:
    client.patch(DeepSeekTraining.Status, name, {"status": status}, namespace=namespace, patch_type=PatchType.MERGE)


def get(client: Client, namespace: str, name: str) -> dict[str, Any]:
    return dict(client.get(DeepSeekInference, name, namespace=namespace))


def status(client: Client, namespace: str, name: str) -> dict[str, Any]:
    return dict(get(client, namespace, name).get("status") or {})


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), {})


def wait_status(client: Client, namespace: str, name: str, predicate: Any, what: str, timeout: float = TIMEOUT) -> Any:
    def probe() -> dict[str, Any] | None:
        st = status(client, namespace, name)
        return st if predicate(st) else None

    return wait_until(
        probe, timeout=timeout, what=what, describe=lambda: json.dumps(status(client, namespace, name), indent=1)
    )


def is_ready(st: dict[str, Any]) -> bool:
    return condition(st, "Ready").get("status") == "True"


def exists(client: Client, resource: type[NamespacedResource], name: str, namespace: str) -> bool:
    try:
        client.get(resource, name, namespace=namespace)
    except ApiError as err:
        if err.status.code == 404:
            return False
        raise
    return True


def serving_pods(client: Client, namespace: str, name: str) -> list[Pod]:
    return list(client.list(Pod, namespace=namespace, labels={naming.LABEL_INFERENCE: name}))


def event_reasons(client: Client, namespace: str, name: str) -> set[str]:
    return {
        str(e.reason)
        for e in client.list(Event, namespace=namespace)
        if e.involvedObject.kind == "DeepSeekInference" and e.involvedObject.name == name
    }


def wait_events(client: Client, namespace: str, name: str, reasons: set[str]) -> None:
    """Events are posted right after the status they describe: wait for them rather than race them."""
    wait_until(
        lambda: reasons <= event_reasons(client, namespace, name),
        timeout=TIMEOUT,
        what=f"events {sorted(reasons)} on {name}",
        describe=lambda: str(sorted(event_reasons(client, namespace, name))),
    )


def replica_sets(client: Client, namespace: str, name: str) -> list[ReplicaSet]:
    return list(client.list(ReplicaSet, namespace=namespace, labels={naming.LABEL_INFERENCE: name}))


# ---------------------------------------------------------------------------------------------------------
# tests


def test_waits_for_the_training_then_serves_it_and_survives_its_deletion(
    kube_cluster: ControlPlane, client: Client, namespace: str, artifacts_pvc: str, operator: OperatorRunner
) -> None:
    # The pods must pass Pod Security "restricted" (ReplicaSet pod creation would fail otherwise).
    client.patch(Namespace, namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    create(client, namespace, training("minilm"))
    create(client, namespace, inference("minilm", model={"trainingRef": {"name": "minilm"}}, replicas=2))

    st = wait_status(
        client,
        namespace,
        "minilm",
        lambda s: condition(s, "ModelReady").get("reason") == "TrainingNotSucceeded",
        "ModelReady=False TrainingNotSucceeded",
    )
    assert condition(st, "ModelReady")["status"] == "False"
    assert st["phase"] == "Pending"
    assert condition(st, "Ready")["status"] == "False"
    set_training_status(
        client, namespace, "minilm", {"phase": "Running", "progress": {"step": 3, "totalSteps": 10, "percent": 30}}
    )
    wait_status(
        client,
        namespace,
        "minilm",
        lambda s: "30% done" in condition(s, "ModelReady").get("message", ""),
        "the training's progress in the message",
    )
    assert not exists(client, Deployment, "minilm-serve", namespace)
    assert serving_pods(client, namespace, "minilm") == []

    set_training_status(client, namespace, "minilm", SUCCEEDED)
    st = wait_status(client, namespace, "minilm", is_ready, "Ready once the training succeeded")
    assert st["phase"] == "Ready"
    assert (st["replicas"], st["readyReplicas"]) == (2, 2)
    assert (st["servedModelVersion"], st["servedVariant"]) == ("v1", "int8")
    assert st["modelUri"] == "pvc://artifacts/minilm/v1"
    assert st["resolvedModel"]["training"] == "minilm"
    assert st["url"] == f"http://minilm-serve.{namespace}.svc.cluster.local"
    assert st["selector"] == "app.kubernetes.io/component=model-server,deepseek.ai/inference=minilm"
    dep = client.get(Deployment, "minilm-serve", namespace=namespace)
    volumes = {v.name: v for v in dep.spec.template.spec.volumes}
    assert volumes["model"].persistentVolumeClaim.claimName == "artifacts"
    run = json.loads(client.get(ConfigMap, "minilm-serve", namespace=namespace).data["run.json"])
    assert (run["artifactUri"], run["variant"], run["modelName"]) == (
        "/var/lib/deepseek/model/minilm/v1",
        "int8",
        "minilm",
    )
    wait_events(client, namespace, "minilm", {"TrainingNotSucceeded", "ArtifactResolved", "AllReplicasReady"})
    rs_before = {rs.metadata.name for rs in replica_sets(client, namespace, "minilm")}

    # The training goes away: its artifact stays where it is, the service keeps running and says so.
    client.delete(DeepSeekTraining, "minilm", namespace=namespace)
    st = wait_status(
        client,
        namespace,
        "minilm",
        lambda s: condition(s, "ModelReady").get("reason") == "TrainingDeleted",
        "ModelReady reason TrainingDeleted",
    )
    assert condition(st, "ModelReady")["status"] == "True"
    assert is_ready(st)
    assert st["servedModelVersion"] == "v1"
    assert {rs.metadata.name for rs in replica_sets(client, namespace, "minilm")} == rs_before
    wait_events(client, namespace, "minilm", {"TrainingDeleted"})


def test_scaling_through_kubectl_scale_and_the_spec(
    kube_cluster: ControlPlane, client: Client, namespace: str, operator: OperatorRunner
) -> None:
    create(client, namespace, inference("r8", replicas=1))
    wait_status(client, namespace, "r8", lambda s: is_ready(s) and s["readyReplicas"] == 1, "1 ready replica")

    # The operator's own metrics (served on its /metrics; the in-process operator shares this registry).
    assert (
        REGISTRY.get_sample_value("deepseek_operator_reconcile_total", {"kind": KIND, "result": "success"}) or 0
    ) > 0
    assert (REGISTRY.get_sample_value("deepseek_operator_reconcile_duration_seconds_count", {"kind": KIND}) or 0) > 0
    assert (REGISTRY.get_sample_value("deepseek_operator_resources", {"kind": KIND, "phase": "Ready"}) or 0) >= 1

    kube_cluster.kubectl("scale", "-n", namespace, "dsinfer/r8", "--replicas=3")
    st = wait_status(
        client, namespace, "r8", lambda s: is_ready(s) and s["readyReplicas"] == 3, "3 replicas via kubectl scale"
    )
    assert st["replicas"] == 3
    assert client.get(Deployment, "r8-serve", namespace=namespace).spec.replicas == 3
    scale = json.loads(
        kube_cluster.kubectl(
            "get", "--raw", f"/apis/deepseek.ai/v1alpha1/namespaces/{namespace}/deepseekinferences/r8/scale"
        ).stdout
    )
    assert scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == st["selector"]
    # Scaling does not roll the pods: still one ReplicaSet.
    assert len(replica_sets(client, namespace, "r8")) == 1

    # A restarted operator finds what it made: nothing is duplicated or rolled, the status stays.
    operator.restart()
    client.patch(DeepSeekInference, "r8", {"spec": {"replicas": 2}}, namespace=namespace, patch_type=PatchType.MERGE)
    st = wait_status(client, namespace, "r8", lambda s: is_ready(s) and s["replicas"] == 2, "2 replicas via the spec")
    assert len(replica_sets(client, namespace, "r8")) == 1
    assert len(list(client.list(Deployment, namespace=namespace))) == 1

    client.patch(DeepSeekInference, "r8", {"spec": {"replicas": 0}}, namespace=namespace, patch_type=PatchType.MERGE)
    st = wait_status(client, namespace, "r8", lambda s: s.get("phase") == "Stopped" and s["replicas"] == 0, "Stopped")
    assert condition(st, "Stopped")["status"] == "True"
    assert condition(st, "Ready")["reason"] == "Stopped"
    wait_until(lambda: not serving_pods(client, namespace, "r8"), timeout=TIMEOUT, what="pods gone")
    assert (REGISTRY.get_sample_value("deepseek_operator_resources", {"kind": KIND, "phase": "Stopped"}) or 0) >= 1
    wide = kube_cluster.kubectl("get", "dsinfer", "r8", "-n", namespace, "-o", "wide").stdout
    assert "Stopped" in wide

    client.patch(DeepSeekInference, "r8", {"spec": {"replicas": 1}}, namespace=namespace, patch_type=PatchType.MERGE)
    st = wait_status(client, namespace, "r8", lambda s: is_ready(s) and s["readyReplicas"] == 1, "serving again")
    assert condition(st, "Stopped")["status"] == "False"


def test_autoscaling_creates_an_owned_hpa_that_drives_the_replicas(
    kube_cluster: ControlPlane, client: Client, namespace: str, operator: OperatorRunner
) -> None:
    create(
        client,
        namespace,
        inference(
            "auto", replicas=1, autoscaling={"minReplicas": 2, "maxReplicas": 4, "metric": "concurrency", "target": 8}
        ),
    )
    hpa = wait_until(
        lambda: (
            exists(client, HorizontalPodAutoscaler, "auto-serve", namespace)
            and client.get(HorizontalPodAutoscaler, "auto-serve", namespace=namespace)
        ),
        timeout=TIMEOUT,
        what="the HPA",
    )
    (owner,) = hpa.metadata.ownerReferences
    assert (owner.kind, owner.name, owner.controller) == ("DeepSeekInference", "auto", True)
    assert (hpa.spec.scaleTargetRef.kind, hpa.spec.scaleTargetRef.name) == ("DeepSeekInference", "auto")
    assert (hpa.spec.minReplicas, hpa.spec.maxReplicas) == (2, 4)
    # The real HPA controller reads the scale subresource (status.selector) and raises spec.replicas to min.
    wait_until(
        lambda: get(client, namespace, "auto")["spec"]["replicas"] == 2,
        timeout=90,
        what="the HPA to set spec.replicas=2",
    )
    st = wait_status(client, namespace, "auto", lambda s: is_ready(s) and s["readyReplicas"] == 2, "2 ready replicas")
    assert st["replicas"] == 2

    client.patch(
        DeepSeekInference,
        "auto",
        [{"op": "remove", "path": "/spec/autoscaling"}],
        namespace=namespace,
        patch_type=PatchType.JSON,
    )
    wait_until(
        lambda: not exists(client, HorizontalPodAutoscaler, "auto-serve", namespace),
        timeout=TIMEOUT,
        what="the HPA removed with spec.autoscaling",
    )


def test_a_model_change_rolls_out_a_new_replicaset_while_the_old_keeps_serving(
    kube_cluster: ControlPlane, client: Client, namespace: str, operator: OperatorRunner
) -> None:
    create(client, namespace, inference("roll", replicas=2, model={"uri": "s3://artifacts/r8/v1"}))
    wait_status(client, namespace, "roll", lambda s: is_ready(s) and s["servedModelVersion"] == "v1", "v1 served")
    (old_rs,) = replica_sets(client, namespace, "roll")

    # v2 whose pods cannot load the artifact (the server exits 66 and the kubelet restarts it).
    broken = fate_annotations("crash-loop", exit_code=66)
    patch = {"spec": {"model": {"uri": "s3://artifacts/r8/v2"}, "podMetadata": {"annotations": broken}}}
    client.patch(DeepSeekInference, "roll", patch, namespace=namespace, patch_type=PatchType.MERGE)

    def rolled_and_broken(s: dict[str, Any]) -> bool:
        return condition(s, "ModelReady").get("reason") == "ArtifactInvalid"

    st = wait_status(client, namespace, "roll", rolled_and_broken, "ModelReady=False ArtifactInvalid")
    assert condition(st, "Ready")["status"] == "False"
    assert st["phase"] == "NotReady"
    assert st["servedModelVersion"] == "v1"  # the old pods still serve v1
    assert st["readyReplicas"] == 0  # none serves the requested v2
    assert len(replica_sets(client, namespace, "roll")) == 2
    old = client.get(ReplicaSet, old_rs.metadata.name, namespace=namespace)
    assert (old.status.readyReplicas, old.spec.replicas) == (
        2,
        2,
    )  # maxUnavailable 0: the old stays until the new is ready

    # Fix the pods (drop the fate): the new ReplicaSet becomes ready, then the old one is scaled away.
    client.patch(
        DeepSeekInference, "roll", {"spec": {"podMetadata": None}}, namespace=namespace, patch_type=PatchType.MERGE
    )
    available: list[int] = []

    def done(s: dict[str, Any]) -> bool:
        available.append(client.get(Deployment, "roll-serve", namespace=namespace).status.availableReplicas or 0)
        return is_ready(s) and s["servedModelVersion"] == "v2"

    st = wait_status(client, namespace, "roll", done, "v2 served everywhere")
    assert min(available) >= 2  # never fewer available pods than requested during the roll-out
    assert (st["readyReplicas"], st["updatedReplicas"], st["replicas"]) == (2, 2, 2)
    assert condition(st, "ModelReady")["status"] == "True"
    assert client.get(ReplicaSet, old_rs.metadata.name, namespace=namespace).spec.replicas == 0
    wait_events(client, namespace, "roll", {"ArtifactInvalid", "AllReplicasReady"})


def test_missing_reference_failed_training_and_unschedulable_pods_are_reported(
    kube_cluster: ControlPlane, client: Client, namespace: str, artifacts_pvc: str, operator: OperatorRunner
) -> None:
    create(client, namespace, inference("ghost", model={"trainingRef": {"name": "not-yet"}}))
    create(client, namespace, training("broken"))
    set_training_status(
        client,
        namespace,
        "broken",
        {
            "phase": "Failed",
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BadData",
                    "message": "dataset reuters-r8: the label field 'label' is missing",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
        },
    )
    create(client, namespace, inference("doomed", model={"trainingRef": {"name": "broken"}}))
    create(client, namespace, inference("huge", gpusPerReplica=16))

    st = wait_status(
        client,
        namespace,
        "ghost",
        lambda s: condition(s, "ModelReady").get("reason") == "TrainingNotFound",
        "TrainingNotFound",
    )
    assert st["phase"] == "Failed"
    st = wait_status(
        client,
        namespace,
        "doomed",
        lambda s: condition(s, "ModelReady").get("reason") == "TrainingFailed",
        "TrainingFailed",
    )
    assert st["phase"] == "Failed"
    assert "label field 'label' is missing" in condition(st, "ModelReady")["message"]
    st = wait_status(
        client, namespace, "huge", lambda s: condition(s, "Ready").get("reason") == "Unschedulable", "Unschedulable"
    )
    assert "nvidia.com/gpu" in condition(st, "Ready")["message"]
    for name in ("ghost", "doomed"):
        assert not exists(client, Deployment, f"{name}-serve", namespace)
    wait_events(client, namespace, "ghost", {"TrainingNotFound"})

    # The reference appears (and succeeds): the waiting inference notices without being touched.
    create(client, namespace, training("not-yet"))
    set_training_status(client, namespace, "not-yet", SUCCEEDED)
    st = wait_status(client, namespace, "ghost", is_ready, "Ready once the referenced training exists and succeeded")
    assert st["modelUri"] == "pvc://artifacts/not-yet/v1"


SERVICE_MONITOR_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {
            "plural": "servicemonitors",
            "singular": "servicemonitor",
            "kind": "ServiceMonitor",
            "listKind": "ServiceMonitorList",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            }
        ],
    },
}


def test_service_monitor_follows_the_prometheus_operator_api_and_deletion_removes_every_child(
    kube_cluster: ControlPlane, client: Client, namespace: str, operator: OperatorRunner
) -> None:
    create(
        client,
        namespace,
        inference(
            "mon",
            replicas=1,
            autoscaling={"minReplicas": 1, "maxReplicas": 2, "metric": "rps", "target": 50},
            monitoring={"interval": "15s", "labels": {"release": "prometheus"}},
        ),
    )
    st = wait_status(client, namespace, "mon", lambda s: is_ready(s) and condition(s, "ServiceMonitorReady"), "Ready")
    assert (condition(st, "ServiceMonitorReady")["status"], condition(st, "ServiceMonitorReady")["reason"]) == (
        "False",
        "PrometheusOperatorNotInstalled",
    )

    client.create(codecs.from_dict(SERVICE_MONITOR_CRD))
    try:
        st = wait_status(
            client,
            namespace,
            "mon",
            lambda s: condition(s, "ServiceMonitorReady").get("status") == "True",
            "ServiceMonitorReady once the CRD is installed",
        )
        sm = client.get(ServiceMonitor, "mon-serve", namespace=namespace)
        assert sm["metadata"]["labels"]["release"] == "prometheus"
        assert sm["metadata"]["ownerReferences"][0]["name"] == "mon"
        assert sm["spec"]["endpoints"][0]["port"] == "http"
        svc = client.get(Service, "mon-serve", namespace=namespace)
        assert svc.spec.ports[0].name == "http"
        assert sm["spec"]["selector"]["matchLabels"].items() <= (svc.metadata.labels or {}).items()

        children: list[tuple[type[NamespacedResource], str]] = [
            (ConfigMap, "mon-serve"),
            (Deployment, "mon-serve"),
            (Service, "mon-serve"),
            (PodDisruptionBudget, "mon-serve"),
            (HorizontalPodAutoscaler, "mon-serve"),
            (ServiceAccount, "mon-serve"),
            (ServiceMonitor, "mon-serve"),
        ]
        for resource, name in children:
            assert exists(client, resource, name, namespace), resource.__name__
        client.delete(DeepSeekInference, "mon", namespace=namespace)
        for resource, name in children:
            wait_until(
                lambda r=resource, n=name: not exists(client, r, n, namespace),
                timeout=TIMEOUT,
                what=f"{resource.__name__} {name} garbage-collected",
            )
        wait_until(lambda: not serving_pods(client, namespace, "mon"), timeout=TIMEOUT, what="pods gone")
        wait_until(lambda: not exists(client, DeepSeekInference, "mon", namespace), timeout=TIMEOUT, what="the CR gone")
    finally:
        client.delete(CustomResourceDefinition, "servicemonitors.monitoring.coreos.com")
        wait_until(
            lambda: (
                not any(
                    c.metadata.name == "servicemonitors.monitoring.coreos.com"
                    for c in client.list(CustomResourceDefinition)
                )
            ),
            timeout=TIMEOUT,
            what="CRD gone",
        )
