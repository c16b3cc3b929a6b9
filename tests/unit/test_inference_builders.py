"""Children of a DeepSeekInference: pure builders, checked field by field."""

from __future__ import annotations

from typing import Any

import pytest
from deepseek_operator import naming
from deepseek_operator.api import DeepSeekInference, ResolvedModel, parse_inference
from deepseek_operator.builders import inference as b
from deepseek_operator.builders.common import Owner
from deepseek_operator.config import OperatorConfig
from deepseek_workers.runconfig import parse_serve_config

CONFIG = OperatorConfig(worker_image="registry.example/worker:1.2.3")
OWNER = Owner(naming.API_VERSION, naming.INFERENCE_KIND, "r8", "ml", "uid-1", 3)
MODEL = ResolvedModel(uri="s3://bucket/r8/v1", version="v1", variant="int8")


def inference(**spec: Any) -> DeepSeekInference:
    spec.setdefault("model", {"uri": "s3://bucket/r8/v1"})
    return parse_inference(
        {
            "apiVersion": naming.API_VERSION,
            "kind": naming.INFERENCE_KIND,
            "metadata": {"name": "r8", "namespace": "ml", "uid": "uid-1", "generation": 3},
            "spec": spec,
        }
    )


def plan(inf: DeepSeekInference, model: ResolvedModel | None = MODEL, sm: bool = False) -> b.InferencePlan:
    return b.build(inf, OWNER, model, CONFIG, service_monitor_api=sm)


def child(p: b.InferencePlan, kind: str) -> dict[str, Any]:
    found = [m for m in p.apply if m["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[m['kind'] for m in p.apply]}"
    return found[0]


def kinds(p: b.InferencePlan) -> list[str]:
    return sorted(m["kind"] for m in p.apply)


def test_every_child_is_named_serve_owned_and_labelled() -> None:
    p = plan(inference(autoscaling={"maxReplicas": 4, "metric": "concurrency"}), sm=True)
    assert kinds(p) == sorted(
        [
            "ServiceAccount",
            "ConfigMap",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
            "ServiceMonitor",
        ]
    )
    for m in p.apply:
        meta = m["metadata"]
        assert meta["name"] == "r8-serve"
        assert meta["namespace"] == "ml"
        (ref,) = meta["ownerReferences"]
        assert ref == {
            "apiVersion": "deepseek.ai/v1alpha1",
            "kind": "DeepSeekInference",
            "name": "r8",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert meta["labels"][naming.LABEL_INFERENCE] == "r8"
        assert meta["labels"][naming.LABEL_MANAGED_BY] == "deepseek-operator"
    assert p.delete == []


def test_names_do_not_collide_with_a_training_of_the_same_name() -> None:
    # A DeepSeekTraining owns <name>-config, <name>-progress, <name>-worker, <name>-train, <name>-quantize.
    p = plan(inference())
    assert {m["metadata"]["name"] for m in p.apply} == {"r8-serve"}


def test_run_config_is_a_valid_serve_run_config() -> None:
    inf = inference(model={"uri": "s3://bucket/r8/v1", "servedName": "reuters"}, batching={"maxBatchSize": 8})
    cm = child(plan(inf), "ConfigMap")
    cfg = parse_serve_config(cm["data"]["run.json"])
    assert cfg.model_name == "reuters"
    assert cfg.artifact_uri == "s3://bucket/r8/v1"
    assert cfg.variant == "int8"
    assert cfg.batching.max_batch_size == 8
    assert cfg.port == b.HTTP_PORT
    assert (cfg.source.kind, cfg.source.namespace, cfg.source.name, cfg.source.uid) == (
        "DeepSeekInference",
        "ml",
        "r8",
        "uid-1",
    )


def test_served_name_defaults_to_the_resource_name() -> None:
    cfg = parse_serve_config(child(plan(inference()), "ConfigMap")["data"]["run.json"])
    assert cfg.model_name == "r8"


def test_deployment_rolls_out_without_dropping_requests() -> None:
    inf = inference(batching={"requestTimeoutSeconds": 45})
    dep = child(plan(inf), "Deployment")["spec"]
    assert dep["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}}
    pod = dep["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["deepseek-worker", "serve", "--config", "/etc/deepseek/run.json"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # a generous bound on model loading
    prestop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    cfg = parse_serve_config(child(plan(inf), "ConfigMap")["data"]["run.json"])
    assert cfg.drain_seconds >= 45  # the longest request may finish
    assert pod["terminationGracePeriodSeconds"] > prestop + cfg.drain_seconds
    # A rollout stuck on a slow model load is reported only after the startup probe had its chance.
    assert dep["progressDeadlineSeconds"] > startup["periodSeconds"] * startup["failureThreshold"]


def test_gpu_replicas_surge_one_pod_and_request_gpus() -> None:
    dep = child(plan(inference(gpusPerReplica=2, resources={"limits": {"memory": "4Gi"}})), "Deployment")["spec"]
    assert dep["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    pod = dep["template"]["spec"]
    assert pod["containers"][0]["resources"] == {"limits": {"memory": "4Gi", "nvidia.com/gpu": 2}}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_pods_are_restricted() -> None:
    pod = child(plan(inference()), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in pod["containers"][0]["volumeMounts"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "r8-serve"


def test_users_service_account_is_used_and_ours_removed() -> None:
    p = plan(inference(serviceAccountName="s3-reader"))
    assert "ServiceAccount" not in kinds(p)
    assert b.ChildRef("v1", "ServiceAccount", "r8-serve") in p.delete
    pod = child(p, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "s3-reader"
    assert pod["automountServiceAccountToken"] is True


def test_pvc_artifact_is_mounted_read_only() -> None:
    model = ResolvedModel(uri="pvc://artifacts/minilm/v3", version="v3", variant="fp32")
    p = plan(inference(), model=model)
    pod = child(p, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "artifacts", "readOnly": True}} in pod["volumes"]
    assert {"name": "model", "mountPath": b.MODEL_DIR, "readOnly": True} in pod["containers"][0]["volumeMounts"]
    cfg = parse_serve_config(child(p, "ConfigMap")["data"]["run.json"])
    assert cfg.artifact_uri == f"{b.MODEL_DIR}/minilm/v3"
    assert cfg.variant == "fp32"


def test_pod_template_carries_user_metadata_and_what_it_serves() -> None:
    inf = inference(
        podMetadata={"labels": {"team": "nlp"}, "annotations": {"testbed.deepseek.ai/fate": "crash-loop"}},
        env=[{"name": "AWS_REGION", "value": "eu-west-1"}],
        envFrom=[{"secretRef": {"name": "s3-credentials"}}],
    )
    p = plan(inf)
    tmpl = child(p, "Deployment")["spec"]["template"]
    assert tmpl["metadata"]["labels"]["team"] == "nlp"
    assert tmpl["metadata"]["labels"][naming.LABEL_INFERENCE] == "r8"
    ann = tmpl["metadata"]["annotations"]
    assert ann["testbed.deepseek.ai/fate"] == "crash-loop"
    assert ann[b.ANN_CONFIG_HASH] == p.config_hash
    assert (ann[b.ANN_MODEL_URI], ann[b.ANN_MODEL_VERSION], ann[b.ANN_MODEL_VARIANT]) == (
        "s3://bucket/r8/v1",
        "v1",
        "int8",
    )
    c = tmpl["spec"]["containers"][0]
    assert {"name": "AWS_REGION", "value": "eu-west-1"} in c["env"]
    assert c["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    # The selector never includes user labels (it is immutable on a Deployment).
    assert child(p, "Deployment")["spec"]["selector"] == {
        "matchLabels": {naming.LABEL_INFERENCE: "r8", naming.LABEL_COMPONENT: b.COMPONENT}
    }


def test_a_model_change_changes_the_template_but_scaling_does_not() -> None:
    base = plan(inference(replicas=1))
    scaled = plan(inference(replicas=5))
    other_model = plan(inference(), model=ResolvedModel(uri="s3://bucket/r8/v2", version="v2", variant="int8"))
    other_variant = plan(inference(), model=ResolvedModel(uri="s3://bucket/r8/v1", version="v1", variant="fp32"))
    assert base.config_hash == scaled.config_hash
    assert child(base, "Deployment")["spec"]["template"] == child(scaled, "Deployment")["spec"]["template"]
    assert len({base.config_hash, other_model.config_hash, other_variant.config_hash}) == 3
    assert base.fingerprint != scaled.fingerprint  # the Deployment's replicas changed: re-apply


@pytest.mark.parametrize(
    ("replicas", "autoscaling", "expected"),
    [
        (3, None, 3),
        (0, None, 0),
        (1, {"minReplicas": 2, "maxReplicas": 5}, 2),
        (9, {"minReplicas": 2, "maxReplicas": 5}, 5),
        (4, {"minReplicas": 2, "maxReplicas": 5}, 4),
        (0, {"minReplicas": 2, "maxReplicas": 5}, 0),  # 0 stops serving even with an HPA (it then pauses)
    ],
)
def test_deployment_replicas(replicas: int, autoscaling: dict[str, int] | None, expected: int) -> None:
    spec: dict[str, Any] = {"replicas": replicas}
    if autoscaling:
        spec["autoscaling"] = {**autoscaling, "metric": "concurrency"}
    p = plan(inference(**spec))
    assert p.replicas == expected
    assert child(p, "Deployment")["spec"]["replicas"] == expected


def test_hpa_scales_the_inference_through_its_scale_subresource() -> None:
    inf = inference(
        autoscaling={"minReplicas": 2, "maxReplicas": 6, "metric": "cpu", "target": 70},
        resources={"requests": {"cpu": "1"}},
    )
    hpa = child(plan(inf), "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "deepseek.ai/v1alpha1", "kind": "DeepSeekInference", "name": "r8"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    assert hpa["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
    ]


@pytest.mark.parametrize(
    ("metric", "name"),
    [("rps", "deepseek_serve_requests_per_second"), ("concurrency", "deepseek_serve_in_flight_requests")],
)
def test_hpa_on_server_metrics(metric: str, name: str) -> None:
    hpa = child(
        plan(inference(autoscaling={"maxReplicas": 3, "metric": metric, "target": 20})), "HorizontalPodAutoscaler"
    )
    assert hpa["spec"]["metrics"] == [
        {"type": "Pods", "pods": {"metric": {"name": name}, "target": {"type": "AverageValue", "averageValue": "20"}}}
    ]


def test_no_autoscaling_removes_the_hpa() -> None:
    p = plan(inference())
    assert "HorizontalPodAutoscaler" not in kinds(p)
    assert b.ChildRef("autoscaling/v2", "HorizontalPodAutoscaler", "r8-serve") in p.delete


def test_service_monitor_only_where_the_api_is_served() -> None:
    inf = inference(monitoring={"interval": "15s", "labels": {"release": "prometheus"}})
    absent = plan(inf, sm=False)
    assert "ServiceMonitor" not in kinds(absent)
    assert not absent.service_monitor
    assert all(d.kind != "ServiceMonitor" for d in absent.delete)  # nothing to delete where the kind is unknown
    present = plan(inf, sm=True)
    sm = child(present, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s", "scheme": "http"}]
    assert sm["spec"]["selector"]["matchLabels"] == child(present, "Service")["spec"]["selector"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= child(present, "Service")["metadata"]["labels"].items()
    off = plan(inference(monitoring={"serviceMonitor": False}), sm=True)
    assert b.ChildRef("monitoring.coreos.com/v1", "ServiceMonitor", "r8-serve") in off.delete


def test_unresolved_model_leaves_configmap_and_deployment_alone() -> None:
    p = plan(inference(), model=None)
    assert "ConfigMap" not in kinds(p)
    assert "Deployment" not in kinds(p)
    assert all(d.kind not in ("ConfigMap", "Deployment") for d in p.delete)
    assert p.config_hash is None


def test_service_port_url_and_selector() -> None:
    p = plan(inference(service={"type": "LoadBalancer", "port": 8000, "annotations": {"a.example/x": "y"}}))
    svc = child(p, "Service")
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    assert svc["metadata"]["annotations"] == {"a.example/x": "y"}
    assert p.url == "http://r8-serve.ml.svc.cluster.local:8000"
    assert plan(inference()).url == "http://r8-serve.ml.svc.cluster.local"
    assert p.selector == "app.kubernetes.io/component=model-server,deepseek.ai/inference=r8"


def test_pdb_never_blocks_drains_of_unhealthy_pods() -> None:
    pdb = child(plan(inference()), "PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


@pytest.mark.parametrize(
    ("uri", "location", "version"),
    [
        ("s3://bucket/a/v1", b.ModelLocation("s3://bucket/a/v1"), "v1"),
        ("file:///models/r8/v2/", b.ModelLocation("file:///models/r8/v2/"), "v2"),
        ("pvc://claim/x/v3", b.ModelLocation(f"{b.MODEL_DIR}/x/v3", "claim"), "v3"),
        ("pvc://claim", b.ModelLocation(b.MODEL_DIR, "claim"), "claim"),
    ],
)
def test_locate_and_version(uri: str, location: b.ModelLocation, version: str) -> None:
    assert b.locate(uri) == location
    assert b.version_of(uri) == version
