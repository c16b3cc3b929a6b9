"""DeepSeekTraining -> desired child manifests (pure: no I/O, no kopf).

Children of a training `<name>` (docs/architecture.md, docs/operator.md):

- ConfigMap `<name>-config`: the worker run config (`run.json`, a TrainRunConfig), mounted at /etc/deepseek.
- ConfigMap `<name>-progress`: rank 0 writes its ProgressReport under `progress.json`.
- ServiceAccount `<name>-worker` (unless spec.serviceAccountName names one), Role + RoleBinding
  `<name>-progress` allowing only get/patch of that one ConfigMap.
- Service `<name>-train` (headless) when workers > 1: pod 0 of the indexed Job hosts torchrun's rendezvous.
- Job `<name>-train` (Indexed when workers > 1), then Job `<name>-quantize` once training succeeded.

Each child carries the standard labels, an owner reference (garbage collection on delete) and a hash of its
own content (annotation `deepseek.ai/config-hash`), so the controller re-applies only what is missing or
out of date.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final, Literal

from deepseek_workers.runconfig import (
    DatasetSpec,
    Location,
    ModelSpec,
    ProgressSink,
    PVCPath,
    SourceRef,
    TrainRunConfig,
    dump,
)
from deepseek_workers.training.launch import (
    DEFAULT_MASTER_PORT,
    NUM_THREADS_ENV,
    master_address,
    torchrun_command,
)
from pydantic import BaseModel

from deepseek_operator import naming
from deepseek_operator.api import DeepSeekTraining
from deepseek_operator.api.core import GPU_RESOURCE, parse_quantity
from deepseek_operator.builders.common import (
    Manifest,
    Owner,
    labels,
    metadata,
    restricted_container_security,
    restricted_pod_security,
)
from deepseek_operator.config import OperatorConfig

Stage = Literal["train", "quantize"]
TRAIN: Final = "train"
QUANTIZE: Final = "quantize"

CONFIG_DIR: Final = "/etc/deepseek"
RUN_CONFIG_KEY: Final = "run.json"
RUN_CONFIG_PATH: Final = f"{CONFIG_DIR}/{RUN_CONFIG_KEY}"
PROGRESS_KEY: Final = "progress.json"
PVC_ROOT: Final = "/mnt/pvc"
MODEL_CACHE: Final = "/var/cache/deepseek"
METRICS_PORT: Final = 9400
RENDEZVOUS_PORT: Final = DEFAULT_MASTER_PORT
WORKER_CONTAINER: Final = "worker"
PROGRESS_INTERVAL_SECONDS: Final = 10.0
# A stopped worker (suspend, deadline, preemption) finishes its step and writes a checkpoint before it exits
# (docs/training.md); Kubernetes' default of 30 s is short for a large model's checkpoint on an object store.
TERMINATION_GRACE_SECONDS: Final = 120
# torchrun forwards SIGTERM to its workers but SIGKILLs them after its own shutdown timeout (30 s by default):
# keep it inside the pod's grace period, with time left for torchrun itself to exit.
TORCHRUN_SHUTDOWN_SECONDS: Final = TERMINATION_GRACE_SECONDS - 10
# Worker exit codes that no retry can fix (runconfig.EXIT_BAD_*): the Job fails at once.
PERMANENT_EXIT_CODES: Final = (64, 65, 66)

ANNOTATION_HASH: Final = f"{naming.ANNOTATION_PREFIX}/config-hash"
ANNOTATION_ATTEMPT: Final = f"{naming.ANNOTATION_PREFIX}/attempt"
ANNOTATION_VERSION: Final = f"{naming.ANNOTATION_PREFIX}/artifact-version"


@dataclass(frozen=True)
class TrainingNames:
    config: str
    progress: str
    service_account: str
    role: str
    train_job: str
    quantize_job: str
    service: str

    def job(self, stage: Stage) -> str:
        return self.train_job if stage == TRAIN else self.quantize_job


def names(name: str) -> TrainingNames:
    return TrainingNames(
        config=naming.child_name(name, "config"),
        progress=naming.child_name(name, "progress"),
        service_account=naming.child_name(name, "worker"),
        role=naming.child_name(name, "progress"),
        train_job=naming.child_name(name, TRAIN),
        quantize_job=naming.child_name(name, QUANTIZE),
        service=naming.child_name(name, TRAIN),
    )


def owner_of(training: DeepSeekTraining) -> Owner:
    meta = training.metadata
    return Owner(
        api_version=naming.API_VERSION,
        kind=naming.TRAINING_KIND,
        name=meta.name,
        namespace=meta.namespace or "default",
        uid=meta.uid or "",
        generation=meta.generation or 0,
    )


def new_artifact_version(training: DeepSeekTraining) -> str:
    """`v<generation>-<uid prefix>`: readable, and unique per resource, so a training deleted and created again
    with the same name and output never finds (and silently reuses) its predecessor's published artifact."""
    meta = training.metadata
    uid = (meta.uid or "").replace("-", "")[:8]
    return f"v{meta.generation or 1}-{uid}" if uid else f"v{meta.generation or 1}"


def worker_service_account(training: DeepSeekTraining) -> str:
    return training.spec.service_account_name or names(training.metadata.name).service_account


def with_hash(manifest: Manifest) -> Manifest:
    """Stamp the manifest with a hash of its content (stable JSON), under ANNOTATION_HASH."""
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    manifest.setdefault("metadata", {}).setdefault("annotations", {})[ANNOTATION_HASH] = digest
    return manifest


def _meta(owner: Owner, name: str, component: str, **extra: Any) -> dict[str, Any]:
    return metadata(owner, name, component, naming.LABEL_TRAINING, **extra)


# ---------------------------------------------------------------------------------------------------------
# Volumes and locations


@dataclass(frozen=True)
class ClaimMount:
    claim: str
    volume: str
    mount_path: str
    read_only: bool


def claim_mounts(training: DeepSeekTraining) -> dict[str, ClaimMount]:
    """One volume per distinct PVC the spec names (model, dataset, eval data, output), each mounted at
    /mnt/pvc/<claim>; read-only unless the output goes there."""
    spec = training.spec
    claims: list[str] = []
    for pvc in (spec.model.pvc, spec.dataset.pvc, spec.dataset.eval.pvc if spec.dataset.eval else None):
        if pvc is not None and pvc.claim_name not in claims:
            claims.append(pvc.claim_name)
    out_claim = spec.output.pvc.claim_name if spec.output.pvc else None
    if out_claim is not None and out_claim not in claims:
        claims.append(out_claim)
    return {c: ClaimMount(c, f"pvc-{i}", f"{PVC_ROOT}/{c}", read_only=c != out_claim) for i, c in enumerate(claims)}


def pvc_local_path(pvc: PVCPath) -> str:
    return f"{PVC_ROOT}/{pvc.claim_name}/{pvc.path}".rstrip("/")


def output_root(spec_output: Location) -> str:
    """Where the worker writes (the run config's outputUri): the mounted PVC path, or the URI itself."""
    if spec_output.pvc is not None:
        return pvc_local_path(spec_output.pvc)
    assert spec_output.uri is not None
    return spec_output.uri.rstrip("/")


def output_display_root(spec_output: Location) -> str:
    """The output root as other resources can use it: `pvc://<claim>/<path>` for a PVC (what a
    DeepSeekInference mounts), else the s3:// or file:// URI."""
    if spec_output.pvc is not None:
        return f"pvc://{spec_output.pvc.claim_name}/{spec_output.pvc.path}".rstrip("/")
    assert spec_output.uri is not None
    return spec_output.uri.rstrip("/")


def artifact_uri(training: DeepSeekTraining, version: str) -> str:
    return f"{output_display_root(training.spec.output)}/{version}"


# ---------------------------------------------------------------------------------------------------------
# Run config


def run_config(training: DeepSeekTraining, version: str) -> TrainRunConfig:
    """The worker's run config: the spec's ML fields, resolved local paths of PVC inputs, progress sink."""
    spec, meta = training.spec, training.metadata
    dataset: DatasetSpec = spec.dataset
    model: ModelSpec = spec.model
    return TrainRunConfig(
        source=SourceRef(
            kind=naming.TRAINING_KIND,
            namespace=meta.namespace or "default",
            name=meta.name,
            uid=meta.uid or "",
            generation=meta.generation or 0,
        ),
        model=model,
        dataset=dataset,
        training=spec.training,
        quantization=spec.quantization,
        output_uri=output_root(spec.output),
        artifact_version=version,
        model_path=pvc_local_path(model.pvc) if model.pvc else None,
        dataset_path=pvc_local_path(dataset.pvc) if dataset.pvc else None,
        eval_dataset_path=pvc_local_path(dataset.eval.pvc) if dataset.eval and dataset.eval.pvc else None,
        progress=ProgressSink(
            config_map=names(meta.name).progress,
            namespace=meta.namespace,
            interval_seconds=PROGRESS_INTERVAL_SECONDS,
        ),
        metrics_port=METRICS_PORT,
    )


# ---------------------------------------------------------------------------------------------------------
# Supporting children


def config_map(training: DeepSeekTraining, owner: Owner, version: str) -> Manifest:
    n = names(owner.name)
    return with_hash(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(owner, n.config, "config", annotations={ANNOTATION_VERSION: version}),
            "data": {RUN_CONFIG_KEY: dump(run_config(training, version))},
        }
    )


def progress_config_map(owner: Owner) -> Manifest:
    # No `data`: the worker owns progress.json (merge-patched by rank 0); the operator never overwrites it.
    return with_hash(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(owner, names(owner.name).progress, "progress")}
    )


def service_account(owner: Owner) -> Manifest:
    return with_hash(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(owner, names(owner.name).service_account, "worker"),
            "automountServiceAccountToken": True,
        }
    )


def progress_role(owner: Owner) -> Manifest:
    n = names(owner.name)
    return with_hash(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(owner, n.role, "progress"),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [n.progress],
                    "verbs": ["get", "patch"],
                }
            ],
        }
    )


def progress_role_binding(owner: Owner, service_account_name: str) -> Manifest:
    n = names(owner.name)
    return with_hash(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(owner, n.role, "progress"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": n.role},
            "subjects": [{"kind": "ServiceAccount", "name": service_account_name, "namespace": owner.namespace}],
        }
    )


def rendezvous_service(owner: Owner) -> Manifest:
    """Headless Service giving each indexed pod a DNS name `<job>-<index>.<service>` (torchrun's rendezvous)."""
    n = names(owner.name)
    return with_hash(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(owner, n.service, TRAIN),
            "spec": {
                "clusterIP": "None",
                # Workers must resolve each other before any of them is ready.
                "publishNotReadyAddresses": True,
                "selector": {naming.LABEL_TRAINING: owner.name, naming.LABEL_COMPONENT: TRAIN},
                "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
            },
        }
    )


def support_children(training: DeepSeekTraining, owner: Owner, version: str) -> list[Manifest]:
    """Everything but the Jobs: run config, progress ConfigMap, RBAC for progress, rendezvous Service."""
    out = [config_map(training, owner, version), progress_config_map(owner)]
    if not training.spec.service_account_name:
        out.append(service_account(owner))
    out += [progress_role(owner), progress_role_binding(owner, worker_service_account(training))]
    if training.spec.distributed.workers > 1:
        out.append(rendezvous_service(owner))
    return out


# ---------------------------------------------------------------------------------------------------------
# Jobs


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def _quantity(value: int | str) -> str:
    return str(value)


def _resources(training: DeepSeekTraining, gpus: int) -> dict[str, Any]:
    res = training.spec.resources
    requests = {k: _quantity(v) for k, v in ((res.requests if res else None) or {}).items()}
    limits = {k: _quantity(v) for k, v in ((res.limits if res else None) or {}).items()}
    if gpus:
        # Extended resources: the request must equal the limit (Kubernetes fills the request in if omitted).
        limits[GPU_RESOURCE] = str(gpus)
        requests[GPU_RESOURCE] = str(gpus)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def cpu_threads(training: DeepSeekTraining, processes: int) -> int | None:
    """CPU threads per worker process: the pod's CPU limit shared among its processes (at least 1); None
    without a CPU limit. torch would otherwise start one thread per core of the node and be throttled."""
    res = training.spec.resources
    limit = ((res.limits if res else None) or {}).get("cpu")
    if limit is None:
        return None
    return max(1, int(parse_quantity(limit)) // max(1, processes))


def _env(training: DeepSeekTraining, processes: int) -> list[dict[str, Any]]:
    ours = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        # The root filesystem is read-only: caches and HOME go to emptyDirs.
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/tmp/huggingface"},
        {"name": "DEEPSEEK_MODEL_CACHE", "value": f"{MODEL_CACHE}/models"},
        {"name": "TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "value": str(TORCHRUN_SHUTDOWN_SECONDS)},
    ]
    threads = cpu_threads(training, processes)
    if threads is not None:
        ours.append({"name": NUM_THREADS_ENV, "value": str(threads)})
    user = [_dump(e) for e in training.spec.env or []]
    taken = {e["name"] for e in user}
    # A user's variable of the same name wins (the Pod API refuses duplicates).
    return [e for e in ours if e["name"] not in taken] + user


def _volumes(training: DeepSeekTraining, shm: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    n = names(training.metadata.name)
    volumes: list[dict[str, Any]] = [
        {
            "name": "run-config",
            "configMap": {"name": n.config, "items": [{"key": RUN_CONFIG_KEY, "path": RUN_CONFIG_KEY}]},
        },
        {"name": "tmp", "emptyDir": {}},
        {"name": "model-cache", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "run-config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "model-cache", "mountPath": MODEL_CACHE},
    ]
    if shm:
        # torch's data loader workers and NCCL share tensors through /dev/shm (64 MiB by default in a pod).
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    for mount in claim_mounts(training).values():
        volumes.append(
            {"name": mount.volume, "persistentVolumeClaim": {"claimName": mount.claim, "readOnly": mount.read_only}}
        )
        mounts.append({"name": mount.volume, "mountPath": mount.mount_path, "readOnly": mount.read_only})
    return volumes, mounts


def worker_command(training: DeepSeekTraining, stage: Stage) -> list[str]:
    if stage == QUANTIZE:
        return ["deepseek-worker", "quantize", "--config", RUN_CONFIG_PATH]
    n = names(training.metadata.name)
    dist = training.spec.distributed
    return torchrun_command(
        nnodes=dist.workers,
        nproc_per_node=max(1, dist.gpus_per_worker),
        master_addr=master_address(n.train_job, n.service) if dist.workers > 1 else None,
        master_port=RENDEZVOUS_PORT,
        config_path=RUN_CONFIG_PATH,
    )


def job(
    training: DeepSeekTraining,
    owner: Owner,
    config: OperatorConfig,
    stage: Stage,
    *,
    attempt: int,
    version: str,
    suspend: bool = False,
) -> Manifest:
    """The Job of one stage and attempt.

    backoffLimit 0: one failed pod fails the attempt, and the operator starts the next attempt as a whole
    (every worker resumes from the newest checkpoint; a DDP group cannot replace one member). Exit codes
    64/65/66 (bad config, data, artifact) fail it at once; evicted or preempted pods (DisruptionTarget) are
    replaced without counting as a failure.
    """
    spec = training.spec
    n = names(owner.name)
    workers = spec.distributed.workers if stage == TRAIN else 1
    gpus = spec.distributed.gpus_per_worker if stage == TRAIN else 0
    indexed = workers > 1
    pod_meta = spec.pod_metadata
    pod_labels = {
        **(pod_meta.labels if pod_meta and pod_meta.labels else {}),
        **labels(owner, stage, naming.LABEL_TRAINING),
    }
    pod_annotations = {
        **(pod_meta.annotations if pod_meta and pod_meta.annotations else {}),
        ANNOTATION_ATTEMPT: str(attempt),
    }
    volumes, mounts = _volumes(training, shm=stage == TRAIN and (gpus > 0 or workers > 1))
    ports = [{"name": "metrics", "containerPort": METRICS_PORT}] if stage == TRAIN else []
    if indexed:
        ports.append({"name": "rendezvous", "containerPort": RENDEZVOUS_PORT})
    container: dict[str, Any] = {
        "name": WORKER_CONTAINER,
        "image": spec.image or config.worker_image,
        "imagePullPolicy": spec.image_pull_policy or config.worker_image_pull_policy,
        "command": worker_command(training, stage),
        "env": _env(training, max(1, gpus)),
        "resources": _resources(training, gpus),
        "securityContext": restricted_container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    if spec.env_from:
        container["envFrom"] = [_dump(e) for e in spec.env_from]
    if ports:
        container["ports"] = ports
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "serviceAccountName": worker_service_account(training),
        "automountServiceAccountToken": True,
        "securityContext": restricted_pod_security(),
        "containers": [container],
        "volumes": volumes,
    }
    if indexed:
        pod_spec["subdomain"] = n.service
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [_dump(t) for t in spec.tolerations]
    if spec.affinity:
        pod_spec["affinity"] = _dump(spec.affinity)
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    job_spec: dict[str, Any] = {
        "suspend": suspend,
        "backoffLimit": 0,
        "completions": workers,
        "parallelism": workers,
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": WORKER_CONTAINER,
                        "operator": "In",
                        "values": list(PERMANENT_EXIT_CODES),
                    },
                },
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": {"metadata": {"labels": pod_labels, "annotations": pod_annotations}, "spec": pod_spec},
    }
    if indexed:
        job_spec["completionMode"] = "Indexed"
    return with_hash(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": _meta(
                owner,
                n.job(stage),
                stage,
                annotations={ANNOTATION_ATTEMPT: str(attempt), ANNOTATION_VERSION: version},
            ),
            "spec": job_spec,
        }
    )
