"""Desired children of a DeepSeekInference (pure: typed spec + owner + resolved model -> manifests).

Every child is named `<name>-serve` (one name per kind): a DeepSeekTraining of the same name owns
`<name>-config`, `<name>-progress`, `<name>-worker`, `<name>-train`..., so the two kinds never collide even when
a training and its server share a name (as in examples/quickstart.yaml).

- ServiceAccount (unless spec.serviceAccountName): no API token mounted; the model server needs no API access.
- ConfigMap: the ServeRunConfig at key run.json, mounted at /etc/deepseek/run.json.
- Deployment: `deepseek-worker serve`; zero-downtime roll-outs (maxUnavailable 0, readiness on the server's
  /v2/health/ready, a preStop sleep so endpoints drop the pod before the server drains, a grace period longer
  than preStop + drain); a startup probe on readiness bounds a hanging model load.
- Service, PodDisruptionBudget, HorizontalPodAutoscaler (when autoscaling; it scales the DeepSeekInference
  through its scale subresource), ServiceMonitor (when wanted and the Prometheus Operator API is served).

The ConfigMap and Deployment exist only once the model is resolved (a referenced training has Succeeded);
until then nothing runs. When the model cannot be resolved later (e.g. the spec now names a training that does
not exist), they are left as they are: the running pods keep serving and the status says why nothing rolls out.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Final

from deepseek_workers.runconfig import ServeRunConfig, SourceRef, dump

from deepseek_operator import naming
from deepseek_operator.api import DeepSeekInference, DeepSeekInferenceSpec, ResolvedModel
from deepseek_operator.api.core import GPU_RESOURCE
from deepseek_operator.builders.common import (
    Manifest,
    Owner,
    labels,
    metadata,
    restricted_container_security,
    restricted_pod_security,
)
from deepseek_operator.config import OperatorConfig

COMPONENT: Final = "model-server"
SUFFIX: Final = "serve"
CONTAINER: Final = "server"
HTTP_PORT: Final = 8080
CONFIG_DIR: Final = "/etc/deepseek"
RUN_CONFIG_KEY: Final = "run.json"
MODEL_DIR: Final = "/var/lib/deepseek/model"  # a PVC artifact is mounted here, read-only
READY_PATH: Final = "/v2/health/ready"
LIVE_PATH: Final = "/v2/health/live"
METRICS_PATH: Final = "/metrics"

# Roll-out timing. preStop: long enough for kube-proxy / ingress to drop a terminating pod from the endpoints
# before the server stops taking requests. Drain: the server finishes accepted requests (at least the request
# timeout, capped by ServeRunConfig's bound). Startup: the model must be loaded and warmed within this time, or
# the kubelet restarts the container (a hung load shows as CrashLoopBackOff instead of Pending forever).
PRESTOP_SECONDS: Final = 10
MIN_DRAIN_SECONDS: Final = 20
MAX_DRAIN_SECONDS: Final = 600
GRACE_MARGIN_SECONDS: Final = 5
STARTUP_PERIOD_SECONDS: Final = 5
STARTUP_BUDGET_SECONDS: Final = 600
PROGRESS_DEADLINE_SECONDS: Final = STARTUP_BUDGET_SECONDS + 300

# Pod-template annotations: what a ReplicaSet's pods serve (read back by the status layer).
ANN_CONFIG_HASH: Final = f"{naming.ANNOTATION_PREFIX}/config-hash"
ANN_MODEL_URI: Final = f"{naming.ANNOTATION_PREFIX}/model-uri"
ANN_MODEL_VERSION: Final = f"{naming.ANNOTATION_PREFIX}/model-version"
ANN_MODEL_VARIANT: Final = f"{naming.ANNOTATION_PREFIX}/model-variant"

# Pod metrics an HPA reads through a custom-metrics adapter (e.g. prometheus-adapter) for concurrency and rps.
HPA_POD_METRICS: Final = {
    "concurrency": "deepseek_serve_in_flight_requests",
    "rps": "deepseek_serve_requests_per_second",
}

PVC_SCHEME: Final = "pvc://"


def child_name(name: str) -> str:
    return naming.child_name(name, SUFFIX)


def selector_labels(name: str) -> dict[str, str]:
    """The Deployment's pod selector (immutable, so only labels that never change)."""
    return {naming.LABEL_INFERENCE: name, naming.LABEL_COMPONENT: COMPONENT}


def selector_string(name: str) -> str:
    """status.selector for the scale subresource (an HPA finds the pods with it)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(name).items()))


def service_url(name: str, namespace: str, port: int) -> str:
    host = f"{child_name(name)}.{namespace}.svc.cluster.local"
    return f"http://{host}" if port == 80 else f"http://{host}:{port}"


def desired_replicas(spec: DeepSeekInferenceSpec) -> int:
    """Deployment replicas: spec.replicas (0 stops), kept within the autoscaler's bounds when autoscaling.

    The HPA writes spec.replicas itself (scale subresource); clamping here only avoids running too few or too
    many pods in the seconds before it does.
    """
    if spec.replicas == 0 or spec.autoscaling is None:
        return spec.replicas
    return max(spec.autoscaling.min_replicas, min(spec.autoscaling.max_replicas, spec.replicas))


def drain_seconds(spec: DeepSeekInferenceSpec) -> int:
    return int(min(MAX_DRAIN_SECONDS, max(MIN_DRAIN_SECONDS, math.ceil(spec.batching.request_timeout_seconds))))


def termination_grace_seconds(spec: DeepSeekInferenceSpec) -> int:
    return PRESTOP_SECONDS + drain_seconds(spec) + GRACE_MARGIN_SECONDS


@dataclass(frozen=True)
class ModelLocation:
    """Where the worker finds the artifact: a path it reads (`artifact_uri`) and a PVC to mount, if any."""

    artifact_uri: str
    claim: str | None = None


def pvc_uri(claim: str, path: str) -> str:
    path = path.strip("/")
    return f"{PVC_SCHEME}{claim}/{path}" if path else f"{PVC_SCHEME}{claim}"


def locate(uri: str) -> ModelLocation:
    """pvc://claim/path -> mounted at MODEL_DIR; s3:// and file:// are read by the worker itself."""
    if uri.startswith(PVC_SCHEME):
        claim, _, path = uri[len(PVC_SCHEME) :].partition("/")
        return ModelLocation(f"{MODEL_DIR}/{path}" if path else MODEL_DIR, claim)
    return ModelLocation(uri)


def version_of(uri: str) -> str:
    """An artifact's version is its directory's name (<outputUri>/<version>, docs/architecture.md)."""
    rest = uri.split("://", 1)[-1].rstrip("/")
    return rest.rsplit("/", 1)[-1] or rest


def run_config(inf: DeepSeekInference, owner: Owner, model: ResolvedModel) -> ServeRunConfig:
    spec = inf.spec
    return ServeRunConfig(
        # No generation: scaling changes the generation and must not roll the pods.
        source=SourceRef(kind=owner.kind, namespace=owner.namespace, name=owner.name, uid=owner.uid),
        model_name=spec.model.served_name or owner.name,
        artifact_uri=locate(model.uri).artifact_uri,
        variant=model.variant,
        batching=spec.batching,
        port=HTTP_PORT,
        drain_seconds=float(drain_seconds(spec)),
    )


def config_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ChildRef:
    """A child that must not exist (e.g. the HPA after autoscaling was removed)."""

    api_version: str
    kind: str
    name: str


@dataclass(frozen=True)
class InferencePlan:
    name: str  # of every child
    apply: list[Manifest]
    delete: list[ChildRef]
    replicas: int
    selector: str
    url: str
    config_hash: str | None = None  # None while the model is not resolved (no ConfigMap/Deployment applied)
    service_monitor: bool = False  # a ServiceMonitor is among `apply`
    fingerprint: str = field(default="")  # hash of everything applied, to skip re-applying an unchanged plan


def build(
    inf: DeepSeekInference,
    owner: Owner,
    model: ResolvedModel | None,
    config: OperatorConfig,
    *,
    service_monitor_api: bool,
) -> InferencePlan:
    """Every desired child of `inf`; `model` None leaves the ConfigMap and Deployment out (and untouched)."""
    spec = inf.spec
    name = owner.name
    out: list[Manifest] = []
    delete: list[ChildRef] = []
    if spec.service_account_name is None:
        out.append(service_account(owner))
    else:
        delete.append(ChildRef("v1", "ServiceAccount", child_name(name)))
    digest: str | None = None
    if model is not None:
        text = dump(run_config(inf, owner, model))
        digest = config_hash(text)
        out.append(config_map(owner, text))
        out.append(deployment(inf, owner, model, config, digest))
    out.append(service(inf, owner))
    out.append(pod_disruption_budget(owner))
    if spec.autoscaling is not None:
        out.append(horizontal_pod_autoscaler(inf, owner))
    else:
        delete.append(ChildRef("autoscaling/v2", "HorizontalPodAutoscaler", child_name(name)))
    wants_monitor = spec.monitoring.service_monitor and service_monitor_api
    if wants_monitor:
        out.append(service_monitor(inf, owner))
    elif service_monitor_api:
        delete.append(ChildRef("monitoring.coreos.com/v1", "ServiceMonitor", child_name(name)))
    fingerprint = config_hash(json.dumps([out, [vars(d) for d in delete]], sort_keys=True))
    return InferencePlan(
        name=child_name(name),
        apply=out,
        delete=delete,
        replicas=desired_replicas(spec),
        selector=selector_string(name),
        url=service_url(name, owner.namespace, spec.service.port),
        config_hash=digest,
        service_monitor=wants_monitor,
        fingerprint=fingerprint,
    )


def _meta(owner: Owner, **extra: Any) -> dict[str, Any]:
    return metadata(owner, child_name(owner.name), COMPONENT, naming.LABEL_INFERENCE, **extra)


def service_account(owner: Owner) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(owner),
        "automountServiceAccountToken": False,
    }


def config_map(owner: Owner, run_config_text: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(owner),
        "data": {RUN_CONFIG_KEY: run_config_text},
    }


def _resources(spec: DeepSeekInferenceSpec) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if spec.resources is not None:
        res = spec.resources.model_dump(mode="json", by_alias=True, exclude_none=True)
    if spec.gpus_per_replica:
        res.setdefault("limits", {})[GPU_RESOURCE] = spec.gpus_per_replica
    return res


def _dump_list(items: list[Any] | None) -> list[Any]:
    return [i.model_dump(mode="json", by_alias=True, exclude_none=True) for i in items or []]


def _probe(path: str, period: int, timeout: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http", "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
        "successThreshold": 1,
    }


def pod_template(
    inf: DeepSeekInference, owner: Owner, model: ResolvedModel, config: OperatorConfig, digest: str
) -> Manifest:
    spec = inf.spec
    user_meta = spec.pod_metadata
    pod_labels = {
        **((user_meta.labels if user_meta else None) or {}),
        **labels(owner, COMPONENT, naming.LABEL_INFERENCE),
    }
    annotations = {
        **((user_meta.annotations if user_meta else None) or {}),
        ANN_CONFIG_HASH: digest,
        ANN_MODEL_URI: model.uri,
        ANN_MODEL_VERSION: model.version,
        ANN_MODEL_VARIANT: model.variant,
    }
    location = locate(model.uri)
    mounts: list[dict[str, Any]] = [
        {"name": "run-config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {
            "name": "run-config",
            "configMap": {"name": child_name(owner.name), "items": [{"key": RUN_CONFIG_KEY, "path": RUN_CONFIG_KEY}]},
        },
        {"name": "tmp", "emptyDir": {}},
    ]
    if location.claim is not None:
        mounts.append({"name": "model", "mountPath": MODEL_DIR, "readOnly": True})
        volumes.append({"name": "model", "persistentVolumeClaim": {"claimName": location.claim, "readOnly": True}})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image or config.worker_image,
        "imagePullPolicy": spec.image_pull_policy or config.worker_image_pull_policy,
        "command": ["deepseek-worker", "serve", "--config", f"{CONFIG_DIR}/{RUN_CONFIG_KEY}"],
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        # A read-only root filesystem: caches and temporary files go to the writable /tmp volume.
        "env": [{"name": "HOME", "value": "/tmp"}, *_dump_list(spec.env)],
        "resources": _resources(spec),
        "startupProbe": _probe(READY_PATH, STARTUP_PERIOD_SECONDS, 3, STARTUP_BUDGET_SECONDS // STARTUP_PERIOD_SECONDS),
        "readinessProbe": _probe(READY_PATH, 5, 3, 2),
        "livenessProbe": _probe(LIVE_PATH, 10, 5, 3),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
        "volumeMounts": mounts,
        "securityContext": restricted_container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.env_from:
        container["envFrom"] = _dump_list(spec.env_from)
    pod: dict[str, Any] = {
        "serviceAccountName": spec.service_account_name or child_name(owner.name),
        "automountServiceAccountToken": spec.service_account_name is not None,
        "enableServiceLinks": False,
        "securityContext": restricted_pod_security(),
        "terminationGracePeriodSeconds": termination_grace_seconds(spec),
        "containers": [container],
        "volumes": volumes,
    }
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    tolerations = _dump_list(spec.tolerations)
    if spec.gpus_per_replica:
        # The usual taint of GPU nodes; harmless where GPU nodes are not tainted.
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    if tolerations:
        pod["tolerations"] = tolerations
    if spec.affinity is not None:
        pod["affinity"] = spec.affinity.model_dump(mode="json", by_alias=True, exclude_none=True)
    if spec.priority_class_name:
        pod["priorityClassName"] = spec.priority_class_name
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = _dump_list(spec.image_pull_secrets)
    return {"metadata": {"labels": pod_labels, "annotations": annotations}, "spec": pod}


def deployment(
    inf: DeepSeekInference, owner: Owner, model: ResolvedModel, config: OperatorConfig, digest: str
) -> Manifest:
    spec = inf.spec
    # Surge one pod at a time where each needs GPUs (scarce); a quarter of the replicas on CPU.
    surge: int | str = 1 if spec.gpus_per_replica else "25%"
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(owner),
        "spec": {
            "replicas": desired_replicas(spec),
            "selector": {"matchLabels": selector_labels(owner.name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": surge}},
            "revisionHistoryLimit": 5,
            "progressDeadlineSeconds": PROGRESS_DEADLINE_SECONDS,
            "template": pod_template(inf, owner, model, config, digest),
        },
    }


def service(inf: DeepSeekInference, owner: Owner) -> Manifest:
    svc = inf.spec.service
    meta = _meta(owner)
    if svc.annotations:
        meta["annotations"] = dict(svc.annotations)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": svc.type,
            "selector": selector_labels(owner.name),
            "ports": [{"name": "http", "port": svc.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def pod_disruption_budget(owner: Owner) -> Manifest:
    # One pod at a time may be evicted (node drains proceed, never all replicas at once); a pod that is not
    # ready anyway never blocks a drain.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(owner),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(owner.name)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def horizontal_pod_autoscaler(inf: DeepSeekInference, owner: Owner) -> Manifest:
    auto = inf.spec.autoscaling
    assert auto is not None
    metric: dict[str, Any]
    if auto.metric in ("cpu", "memory"):
        metric = {
            "type": "Resource",
            "resource": {"name": auto.metric, "target": {"type": "Utilization", "averageUtilization": auto.target}},
        }
    else:
        metric = {
            "type": "Pods",
            "pods": {
                "metric": {"name": HPA_POD_METRICS[auto.metric]},
                "target": {"type": "AverageValue", "averageValue": str(auto.target)},
            },
        }
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(owner),
        "spec": {
            # The DeepSeekInference itself (scale subresource): spec.replicas stays the one source of replicas.
            "scaleTargetRef": {"apiVersion": owner.api_version, "kind": owner.kind, "name": owner.name},
            "minReplicas": auto.min_replicas,
            "maxReplicas": auto.max_replicas,
            "metrics": [metric],
        },
    }


def service_monitor(inf: DeepSeekInference, owner: Owner) -> Manifest:
    mon = inf.spec.monitoring
    meta = _meta(owner)
    meta["labels"] = {**(mon.labels or {}), **meta["labels"]}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": selector_labels(owner.name)},
            "namespaceSelector": {"matchNames": [owner.namespace]},
            "endpoints": [{"port": "http", "path": METRICS_PATH, "interval": mon.interval, "scheme": "http"}],
        },
    }
