"""The test control plane is real: a real kube-apiserver validates, authorizes and stores; the real
controller-manager and scheduler turn Jobs and Deployments into pods on kwok's fake nodes."""

from __future__ import annotations

import json
from typing import Any

import lightkube
import pytest
from deepseek_testbed import GPU_RESOURCE, ControlPlane, FakeNode, wait_until
from lightkube import codecs
from lightkube.models.meta_v1 import ObjectMeta, OwnerReference
from lightkube.resources.apps_v1 import Deployment, ReplicaSet
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import ConfigMap, Namespace, Node, Pod, Secret

BUSYBOX = "registry.invalid/busybox:1.36"  # never pulled: kwok plays the kubelet


def job_manifest(name: str, *, gpus: int = 0, annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": BUSYBOX, "command": ["true"]}
    if gpus:
        container["resources"] = {"limits": {GPU_RESOURCE: str(gpus)}}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": annotations or {}},
                "spec": {"restartPolicy": "Never", "containers": [container]},
            },
            **spec,
        },
    }


def pod_manifest(
    name: str, *, annotations: dict[str, str] | None = None, restart: str = "Never", **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"restartPolicy": restart, "containers": [{"name": "main", "image": BUSYBOX}], **spec},
    }


def create(client: lightkube.Client, manifest: dict[str, Any], namespace: str) -> Any:
    return client.create(codecs.from_dict(manifest), namespace=namespace)


def job_pods(client: lightkube.Client, job: str, namespace: str) -> list[Pod]:
    return list(client.list(Pod, namespace=namespace, labels={"job-name": job}))


def job_condition(client: lightkube.Client, job: str, namespace: str, kind: str) -> Any:
    status = client.get(Job, job, namespace=namespace).status
    for cond in (status.conditions if status else None) or []:
        if cond.type == kind and cond.status == "True":
            return cond
    return None


def pod_status(client: lightkube.Client, name: str, namespace: str) -> Any:
    return client.get(Pod, name, namespace=namespace).status


# --------------------------------------------------------------------------------------------- API server
def test_namespace_and_configmap_round_trip(kube_api: ControlPlane, namespace: str) -> None:
    client = kube_api.client()
    assert client.get(Namespace, namespace).status.phase == "Active"
    client.create(
        ConfigMap(metadata=ObjectMeta(name="cfg"), data={"model": "minilm", "lr": "3e-5"}), namespace=namespace
    )
    assert client.get(ConfigMap, "cfg", namespace=namespace).data == {"model": "minilm", "lr": "3e-5"}
    out = json.loads(kube_api.kubectl("get", "configmap", "cfg", "-n", namespace, "-o", "json").stdout)
    assert out["data"]["model"] == "minilm"
    # A real, version-stamped API server (not v0.0.0-master).
    assert json.loads(kube_api.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"] == "v1.36.3"
    # Schema validation is the real one: an unknown field is rejected with the field named.
    bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bad"}, "dataa": {}}
    res = kube_api.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(bad), check=False)
    assert res.returncode != 0
    assert 'unknown field "dataa"' in res.stderr


def test_pod_security_restricted_rejects_privileged_pod(kube_api: ControlPlane, namespace: str) -> None:
    client = kube_api.client()
    ns = client.get(Namespace, namespace)
    ns.metadata.labels = {**(ns.metadata.labels or {}), "pod-security.kubernetes.io/enforce": "restricted"}
    client.replace(ns)
    privileged = pod_manifest("privileged")
    privileged["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    with pytest.raises(lightkube.ApiError) as err:
        create(client, privileged, namespace)
    assert err.value.status.code == 403
    assert 'violates PodSecurity "restricted:latest"' in err.value.status.message
    assert "privileged" in err.value.status.message
    # The same pod hardened as the design requires is admitted, so the refusal above was Pod Security's.
    hardened = pod_manifest("hardened")
    hardened["spec"]["securityContext"] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    hardened["spec"]["containers"][0]["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    create(client, hardened, namespace)


def test_rbac_refuses_user_without_permission_and_allows_bound_user_or_group(
    kube_api: ControlPlane, namespace: str
) -> None:
    admin = kube_api.client()
    alice = kube_api.client(kube_api.user_kubeconfig("alice"))
    bob = kube_api.client(kube_api.user_kubeconfig("bob", groups=["ml-team"]))
    for user in (alice, bob):
        with pytest.raises(lightkube.ApiError) as err:
            list(user.list(ConfigMap, namespace=namespace))
        assert err.value.status.code == 403
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "cm-reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
    }
    create(admin, role, namespace)
    for name, subject in (
        ("alice", {"kind": "User", "name": "alice"}),
        ("ml-team", {"kind": "Group", "name": "ml-team"}),
    ):
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": f"cm-reader-{name}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-reader"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", **subject}],
        }
        create(admin, binding, namespace)

    def can_list(client: lightkube.Client) -> bool:
        try:
            list(client.list(ConfigMap, namespace=namespace))
        except lightkube.ApiError:
            return False
        return True

    wait_until(lambda: can_list(alice) and can_list(bob), timeout=30, what="RoleBindings to take effect")
    for user in (alice, bob):
        with pytest.raises(lightkube.ApiError) as err:  # other resources: still refused
            list(user.list(Secret, namespace=namespace))
        assert err.value.status.code == 403
        with pytest.raises(lightkube.ApiError) as err:  # other namespaces: still refused
            list(user.list(ConfigMap, namespace="default"))
        assert err.value.status.code == 403


def test_service_account_token_kubeconfig_is_limited_to_its_rbac(kube_api: ControlPlane, namespace: str) -> None:
    admin = kube_api.client()
    admin.create(ConfigMap(metadata=ObjectMeta(name="run-progress"), data={}), namespace=namespace)
    admin.create(ConfigMap(metadata=ObjectMeta(name="other"), data={"secret": "no"}), namespace=namespace)
    # The shape the operator uses for progress reports: get/patch on one ConfigMap by name.
    create(
        admin,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "progress-writer"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": ["run-progress"],
                    "verbs": ["get", "patch"],
                }
            ],
        },
        namespace,
    )
    create(
        admin,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "progress-writer"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "progress-writer"},
            "subjects": [{"kind": "ServiceAccount", "name": "worker", "namespace": namespace}],
        },
        namespace,
    )
    kubeconfig = kube_api.service_account_kubeconfig(namespace, "worker", create=True)
    who = json.loads(kube_api.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:worker"
    sa = kube_api.client(kubeconfig)

    def patch_progress() -> bool:
        try:
            sa.patch(ConfigMap, "run-progress", {"data": {"progress.json": '{"step": 3}'}}, namespace=namespace)
        except lightkube.ApiError:
            return False
        return True

    wait_until(patch_progress, timeout=30, what="the service account's RoleBinding to take effect")
    assert admin.get(ConfigMap, "run-progress", namespace=namespace).data == {"progress.json": '{"step": 3}'}
    for forbidden in (
        lambda: sa.get(ConfigMap, "other", namespace=namespace),
        lambda: list(sa.list(Secret, namespace=namespace)),
        lambda: sa.delete(ConfigMap, "run-progress", namespace=namespace),
    ):
        with pytest.raises(lightkube.ApiError) as err:
            forbidden()
        assert err.value.status.code == 403


# ------------------------------------------------------------------------------- controllers + scheduler
def test_gpu_job_is_scheduled_on_a_gpu_node_runs_then_completes(kube_cluster: ControlPlane, namespace: str) -> None:
    client = kube_cluster.client()
    create(client, job_manifest("train", gpus=1), namespace)

    def running_pod() -> Pod | None:
        pods = job_pods(client, "train", namespace)
        return next((p for p in pods if p.status and p.status.phase == "Running"), None)

    pod = wait_until(running_pod, timeout=60, what="the Job's pod to be Running")
    assert pod.spec.nodeName is not None
    assert pod.spec.nodeName.startswith("gpu-node-")
    node = client.get(Node, pod.spec.nodeName)
    assert node.status.allocatable[GPU_RESOURCE] == "8"
    wait_until(lambda: job_condition(client, "train", namespace, "Complete"), timeout=60, what="Job Complete")
    job = client.get(Job, "train", namespace=namespace)
    assert job.status.succeeded == 1
    done = client.get(Pod, pod.metadata.name, namespace=namespace)
    assert done.status.phase == "Succeeded"
    assert done.status.containerStatuses[0].state.terminated.exitCode == 0


def test_job_asking_for_nine_gpus_stays_unschedulable(kube_cluster: ControlPlane, namespace: str) -> None:
    client = kube_cluster.client()
    create(client, job_manifest("too-big", gpus=9), namespace)

    def unschedulable() -> Any:
        for pod in job_pods(client, "too-big", namespace):
            for cond in (pod.status.conditions if pod.status else None) or []:
                if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
                    return cond
        return None

    cond = wait_until(unschedulable, timeout=60, what="the scheduler to report the pod Unschedulable")
    assert f"Insufficient {GPU_RESOURCE}" in cond.message
    (pod,) = job_pods(client, "too-big", namespace)
    assert pod.spec.nodeName is None
    assert pod.status.phase == "Pending"


def test_deleting_an_owner_garbage_collects_its_dependents(kube_cluster: ControlPlane, namespace: str) -> None:
    client = kube_cluster.client()
    owner = client.create(ConfigMap(metadata=ObjectMeta(name="owner"), data={}), namespace=namespace)
    ref = OwnerReference(apiVersion="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    client.create(ConfigMap(metadata=ObjectMeta(name="dependent", ownerReferences=[ref]), data={}), namespace=namespace)
    client.create(ConfigMap(metadata=ObjectMeta(name="bystander"), data={}), namespace=namespace)
    client.delete(ConfigMap, "owner", namespace=namespace)

    def gone() -> bool:
        try:
            client.get(ConfigMap, "dependent", namespace=namespace)
        except lightkube.ApiError as e:
            return e.status.code == 404
        return False

    wait_until(gone, timeout=60, what="the garbage collector to delete the dependent ConfigMap")
    assert client.get(ConfigMap, "bystander", namespace=namespace).metadata.name == "bystander"


def test_deployment_pods_become_ready_and_go_away_with_it(kube_cluster: ControlPlane, namespace: str) -> None:
    client = kube_cluster.client()
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "serve"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "serve"}},
            "template": {
                "metadata": {"labels": {"app": "serve"}},
                "spec": {"containers": [{"name": "main", "image": BUSYBOX, "resources": {"requests": {"cpu": "1"}}}]},
            },
        },
    }
    create(client, deployment, namespace)
    wait_until(
        lambda: (client.get(Deployment, "serve", namespace=namespace).status.availableReplicas or 0) == 2,
        timeout=60,
        what="2 available replicas",
    )
    pods = list(client.list(Pod, namespace=namespace, labels={"app": "serve"}))
    assert len(pods) == 2
    for pod in pods:
        assert pod.status.phase == "Running"
        assert pod.status.podIP
        ready = [c for c in pod.status.conditions if c.type == "Ready"]
        assert ready[0].status == "True"
    client.delete(Deployment, "serve", namespace=namespace, cascade=lightkube.types.CascadeType.BACKGROUND)
    wait_until(
        lambda: (
            not list(client.list(ReplicaSet, namespace=namespace))
            and not list(client.list(Pod, namespace=namespace, labels={"app": "serve"}))
        ),
        timeout=60,
        what="the ReplicaSet and its pods to be garbage-collected",
    )


def test_kwok_manages_only_nodes_annotated_fake(kube_cluster: ControlPlane) -> None:
    client = kube_cluster.client()
    suffix = kube_cluster.create_namespace("kwok-scope")
    fake_name, real_name = f"fake-{suffix}", f"real-{suffix}"
    fake = FakeNode(fake_name, taints=[{"key": "testbed.deepseek.ai/scope", "value": suffix, "effect": "NoSchedule"}])
    client.create(codecs.from_dict(fake.manifest(index=200)))
    real = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": real_name, "labels": {"kubernetes.io/hostname": real_name}},
        "spec": {"taints": [{"key": "testbed.deepseek.ai/scope", "value": suffix, "effect": "NoSchedule"}]},
    }
    client.create(codecs.from_dict(real))
    try:
        # Pods bound directly (no scheduler) to each node: kwok starts only the fake node's pod.
        for node in (fake_name, real_name):
            create(client, pod_manifest(node, nodeName=node), suffix)

        def fake_running() -> bool:
            return bool(pod_status(client, fake_name, suffix).phase == "Running")

        wait_until(fake_running, timeout=60, what="kwok to run the pod on the annotated node")
        ready = {c.type: c.status for c in client.get(Node, fake_name).status.conditions or []}
        assert ready.get("Ready") == "True"
        real_status = client.get(Node, real_name).status
        real_conditions = {c.type: c.status for c in (real_status.conditions if real_status else None) or []}
        assert real_conditions.get("Ready") != "True"
        pod = pod_status(client, real_name, suffix)
        assert pod.phase == "Pending"
        assert not pod.containerStatuses
    finally:
        for node in (fake_name, real_name):
            client.delete(Node, node)
        kube_cluster.delete_namespace(suffix)
