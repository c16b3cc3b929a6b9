"""Bad manifests, each refused with a message that names the field and the rule.

The same table drives two tests: here, the operator's pydantic models refuse each case on the field the rule
names; in tests/integration/test_crds.py, the real API server refuses it at apply time with `server`, the
message a user sees (docs/api.md lists them all). Server-only cases need the stored object or apply-time
semantics (immutability after start, unknown fields under kubectl's strict validation of names) and have
``field=None`` here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from deepseek_operator.api import ApiSpecError, parse_inference, parse_training

Manifest = dict[str, Any]


def training_manifest(name: str = "r8") -> Manifest:
    """The smallest valid DeepSeekTraining."""
    return {
        "apiVersion": "deepseek.ai/v1alpha1",
        "kind": "DeepSeekTraining",
        "metadata": {"name": name},
        "spec": {
            "model": {"builtin": {"name": "all-minilm-l6-v2"}},
            "dataset": {"builtin": "reuters-r8"},
            "output": {"pvc": {"claimName": "artifacts", "path": "r8"}},
        },
    }


def inference_manifest(name: str = "r8") -> Manifest:
    """The smallest valid DeepSeekInference."""
    return {
        "apiVersion": "deepseek.ai/v1alpha1",
        "kind": "DeepSeekInference",
        "metadata": {"name": name},
        "spec": {"model": {"trainingRef": {"name": "r8"}}},
    }


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (None deletes a key), on a copy."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


@dataclass(frozen=True)
class BadCase:
    id: str
    kind: Literal["training", "inference"]
    patch: Manifest  # merged into the base manifest
    server: str  # what the API server's message must contain (field path and rule)
    field: str | None  # where the operator's models report it; None: only the API server can tell
    what: str  # one line for docs/api.md

    def manifest(self, name: str | None = None) -> Manifest:
        base = training_manifest() if self.kind == "training" else inference_manifest()
        out: Manifest = merge_patch(base, self.patch)
        if name is not None and "name" not in self.patch.get("metadata", {}):
            out["metadata"]["name"] = name
        return out


def _spec(**fields: Any) -> Manifest:
    return {"spec": fields}


CASES: list[BadCase] = [
    # --- wrong types
    BadCase(
        "batch-size-string",
        "training",
        _spec(training={"batchSize": "32x"}),
        'spec.training.batchSize: Invalid value: "string": spec.training.batchSize in body must be of type integer',
        "spec.training.batchSize",
        "training.batchSize is a string",
    ),
    BadCase(
        "learning-rate-string",
        "training",
        _spec(training={"learningRate": "fast"}),
        "spec.training.learningRate in body must be of type number",
        "spec.training.learningRate",
        "training.learningRate is not a number",
    ),
    BadCase(
        "lora-object-as-list",
        "training",
        _spec(training={"lora": ["r", 8]}),
        "spec.training.lora in body must be of type object",
        "spec.training.lora",
        "training.lora is a list",
    ),
    BadCase(
        "replicas-string",
        "inference",
        _spec(replicas="two"),
        "spec.replicas in body must be of type integer",
        "spec.replicas",
        "replicas is a string",
    ),
    # --- out of range
    BadCase(
        "batch-size-zero",
        "training",
        _spec(training={"batchSize": 0}),
        "spec.training.batchSize in body should be greater than or equal to 1",
        "spec.training.batchSize",
        "training.batchSize is 0",
    ),
    BadCase(
        "learning-rate-zero",
        "training",
        _spec(training={"learningRate": 0}),
        "spec.training.learningRate in body should be greater than 0",
        "spec.training.learningRate",
        "training.learningRate is 0 (exclusive minimum)",
    ),
    BadCase(
        "accuracy-budget-above-one",
        "training",
        _spec(quantization={"maxAccuracyDrop": 1.5}),
        "spec.quantization.maxAccuracyDrop in body should be less than or equal to 1",
        "spec.quantization.maxAccuracyDrop",
        "quantization.maxAccuracyDrop is 1.5",
    ),
    BadCase(
        "workers-zero",
        "training",
        _spec(distributed={"workers": 0}),
        "spec.distributed.workers in body should be greater than or equal to 1",
        "spec.distributed.workers",
        "distributed.workers is 0",
    ),
    BadCase(
        "gpus-per-worker-too-many",
        "training",
        _spec(distributed={"gpusPerWorker": 17}),
        "spec.distributed.gpusPerWorker in body should be less than or equal to 16",
        "spec.distributed.gpusPerWorker",
        "distributed.gpusPerWorker is 17",
    ),
    BadCase(
        "lora-rank-zero",
        "training",
        _spec(training={"lora": {"r": 0}}),
        "spec.training.lora.r in body should be greater than or equal to 1",
        "spec.training.lora.r",
        "training.lora.r is 0",
    ),
    BadCase(
        "active-fraction-zero",
        "training",
        _spec(
            model={"builtin": {"name": "dynamic-sparse-transformer"}},
            training={"sparsity": {"activeFraction": 0}},
        ),
        "spec.training.sparsity.activeFraction in body should be greater than 0",
        "spec.training.sparsity.activeFraction",
        "training.sparsity.activeFraction is 0",
    ),
    BadCase(
        "backoff-limit-negative",
        "training",
        _spec(runPolicy={"backoffLimit": -1}),
        "spec.runPolicy.backoffLimit in body should be greater than or equal to 0",
        "spec.runPolicy.backoffLimit",
        "runPolicy.backoffLimit is -1",
    ),
    BadCase(
        "replicas-negative",
        "inference",
        _spec(replicas=-1),
        "spec.replicas in body should be greater than or equal to 0",
        "spec.replicas",
        "replicas is -1",
    ),
    BadCase(
        "batch-size-zero-serving",
        "inference",
        _spec(batching={"maxBatchSize": 0}),
        "spec.batching.maxBatchSize in body should be greater than or equal to 1",
        "spec.batching.maxBatchSize",
        "batching.maxBatchSize is 0",
    ),
    BadCase(
        "service-port-too-high",
        "inference",
        _spec(service={"port": 70000}),
        "spec.service.port in body should be less than or equal to 65535",
        "spec.service.port",
        "service.port is 70000",
    ),
    # --- unknown enum values
    BadCase(
        "precision-fp8",
        "training",
        _spec(training={"precision": "fp8"}),
        'spec.training.precision: Unsupported value: "fp8": supported values: "fp32", "bf16", "fp16"',
        "spec.training.precision",
        "training.precision fp8",
    ),
    BadCase(
        "quantization-int4",
        "training",
        _spec(quantization={"method": "int4"}),
        'spec.quantization.method: Unsupported value: "int4": supported values: "int8-dynamic", "int8-weight-only"',
        "spec.quantization.method",
        "quantization.method int4",
    ),
    BadCase(
        "unknown-builtin-model",
        "training",
        _spec(model={"builtin": {"name": "gpt-5"}}),
        'spec.model.builtin.name: Unsupported value: "gpt-5"',
        "spec.model.builtin.name",
        "model.builtin.name is not a packaged model",
    ),
    BadCase(
        "unknown-task",
        "training",
        _spec(model={"task": "summarization"}),
        'spec.model.task: Unsupported value: "summarization": supported values: "text-classification", "causal-lm"',
        "spec.model.task",
        "model.task summarization",
    ),
    BadCase(
        "unknown-dataset-format",
        "training",
        _spec(dataset={"builtin": None, "uri": "s3://data/train.parquet", "format": "parquet"}),
        'spec.dataset.format: Unsupported value: "parquet": supported values: "jsonl", "csv"',
        "spec.dataset.format",
        "dataset.format parquet",
    ),
    BadCase(
        "unknown-variant",
        "inference",
        _spec(model={"variant": "int4"}),
        'spec.model.variant: Unsupported value: "int4"',
        "spec.model.variant",
        "model.variant int4",
    ),
    BadCase(
        "service-type-external-name",
        "inference",
        _spec(service={"type": "ExternalName"}),
        'spec.service.type: Unsupported value: "ExternalName"',
        "spec.service.type",
        "service.type ExternalName",
    ),
    # --- patterns
    BadCase(
        "model-uri-http",
        "training",
        _spec(model={"builtin": None, "uri": "http://example.com/model"}),
        "spec.model.uri in body should match '^(s3|file)://.+$'",
        "spec.model.uri",
        "model.uri with an unsupported scheme",
    ),
    BadCase(
        "pvc-claim-uppercase",
        "training",
        _spec(output={"pvc": {"claimName": "Artifacts"}}),
        "spec.output.pvc.claimName in body should match",
        "spec.output.pvc.claimName",
        "output.pvc.claimName is not a valid object name",
    ),
    BadCase(
        "pvc-path-parent",
        "training",
        _spec(output={"pvc": {"path": "runs/../../etc"}}),
        "spec.output.pvc.path: Invalid value: path must not contain '..' segments",
        "spec.output.pvc.path",
        "output.pvc.path escapes the volume",
    ),
    BadCase(
        "bad-quantity",
        "training",
        _spec(resources={"requests": {"memory": "lots"}}),
        "spec.resources.requests.memory in body should match",
        "spec.resources.requests.memory",
        "resources.requests.memory is not a quantity",
    ),
    BadCase(
        "scrape-interval",
        "inference",
        _spec(monitoring={"interval": "soon"}),
        "spec.monitoring.interval in body should match '^[1-9][0-9]*(s|m)$'",
        "spec.monitoring.interval",
        "monitoring.interval is not a duration",
    ),
    BadCase(
        "training-ref-name",
        "inference",
        _spec(model={"trainingRef": {"name": "R8_Model"}}),
        "spec.model.trainingRef.name in body should match",
        "spec.model.trainingRef.name",
        "model.trainingRef.name is not a valid name",
    ),
    # --- one source
    BadCase(
        "two-model-sources",
        "training",
        _spec(model={"uri": "s3://models/minilm"}),
        "spec.model: Invalid value: set exactly one model source: builtin, pvc or uri",
        "spec.model",
        "model has builtin and uri",
    ),
    BadCase(
        "no-model-source",
        "training",
        _spec(model={"builtin": None, "task": "text-classification"}),
        "spec.model: Invalid value: set exactly one model source: builtin, pvc or uri",
        "spec.model",
        "model has no source",
    ),
    BadCase(
        "two-dataset-sources",
        "training",
        _spec(dataset={"pvc": {"claimName": "data", "path": "r8.jsonl"}}),
        "spec.dataset: Invalid value: set exactly one dataset source: builtin, pvc or uri",
        "spec.dataset",
        "dataset has builtin and pvc",
    ),
    BadCase(
        "output-two-locations",
        "training",
        _spec(output={"uri": "s3://bucket/r8"}),
        "spec.output: Invalid value: set exactly one of pvc or uri",
        "spec.output",
        "output has pvc and uri",
    ),
    BadCase(
        "output-missing",
        "training",
        _spec(output=None),
        "spec.output: Required value",
        "spec.output",
        "no output",
    ),
    BadCase(
        "inference-two-sources",
        "inference",
        _spec(model={"uri": "s3://bucket/r8/v1"}),
        "spec.model: Invalid value: set exactly one model source: trainingRef, uri or pvc",
        "spec.model",
        "model has trainingRef and uri",
    ),
    BadCase(
        "inference-no-source",
        "inference",
        _spec(model={"trainingRef": None, "variant": "int8"}),
        "spec.model: Invalid value: set exactly one model source: trainingRef, uri or pvc",
        "spec.model",
        "model has no source",
    ),
    # --- cross-field rules
    BadCase(
        "lora-with-sparse-model",
        "training",
        _spec(model={"builtin": {"name": "dynamic-sparse-transformer"}}, training={"lora": {"r": 8}}),
        "spec.training.lora: Invalid value: LoRA does not apply to model.builtin.name dynamic-sparse-transformer",
        "spec.training.lora",
        "LoRA on the dynamic-sparse model",
    ),
    BadCase(
        "sparsity-with-minilm",
        "training",
        _spec(training={"sparsity": {"activeFraction": 0.2}}),
        "spec.training.sparsity: Invalid value: training.sparsity applies only to model.builtin.name "
        "dynamic-sparse-transformer",
        "spec.training.sparsity",
        "sparsity on a dense model",
    ),
    BadCase(
        "architecture-with-minilm",
        "training",
        _spec(model={"builtin": {"name": "all-minilm-l6-v2", "architecture": {"layers": 2}}}),
        "spec.model.builtin.architecture: Invalid value: model.builtin.architecture applies only to",
        "spec.model.builtin.architecture",
        "architecture on a pretrained model",
    ),
    BadCase(
        "causal-lm-with-encoder",
        "training",
        _spec(model={"task": "causal-lm"}, dataset={"builtin": "hamlet"}),
        "spec.model.task: Invalid value: model.task causal-lm needs a causal (decoder) model",
        "spec.model.task",
        "causal-lm on the MiniLM encoder",
    ),
    BadCase(
        "unlabelled-data-for-classification",
        "training",
        _spec(dataset={"builtin": "hamlet"}),
        "spec.dataset.builtin: Invalid value: dataset.builtin hamlet is unlabelled text: it needs model.task causal-lm",
        "spec.dataset.builtin",
        "classification on unlabelled text",
    ),
    BadCase(
        "gpu-in-resources",
        "training",
        _spec(resources={"limits": {"nvidia.com/gpu": 1}}),
        "spec.resources: Invalid value: do not set nvidia.com/gpu in resources: request GPUs with "
        "distributed.gpusPerWorker",
        "spec.resources",
        "GPUs in resources instead of gpusPerWorker",
    ),
    BadCase(
        "request-above-limit",
        "training",
        _spec(resources={"requests": {"cpu": "4"}, "limits": {"cpu": "2"}}),
        "spec.resources.requests: Invalid value: each request must be less than or equal to the limit",
        "spec.resources.requests",
        "request above limit",
    ),
    BadCase(
        "min-above-max-replicas",
        "inference",
        _spec(autoscaling={"minReplicas": 5, "maxReplicas": 2, "metric": "concurrency"}),
        "spec.autoscaling.minReplicas: Invalid value: autoscaling.minReplicas must be less than or equal "
        "to autoscaling.maxReplicas",
        "spec.autoscaling",
        "autoscaling min > max",
    ),
    BadCase(
        "cpu-autoscaling-without-request",
        "inference",
        _spec(autoscaling={"maxReplicas": 4}),
        "spec.autoscaling.metric: Invalid value: autoscaling.metric cpu needs resources.requests.cpu",
        "spec.autoscaling.metric",
        "cpu autoscaling without a cpu request",
    ),
    BadCase(
        "duplicate-target-modules",
        "training",
        _spec(training={"lora": {"targetModules": ["query", "query"]}}),
        'spec.training.lora.targetModules[1]: Duplicate value: "query"',
        "spec.training.lora.targetModules",
        "duplicate LoRA target modules",
    ),
    BadCase(
        "toleration-exists-with-value",
        "training",
        _spec(tolerations=[{"key": "gpu", "operator": "Exists", "value": "yes"}]),
        "spec.tolerations[0].value: Invalid value: a toleration with operator Exists must not set a value",
        "spec.tolerations[0].value",
        "toleration Exists with a value",
    ),
    BadCase(
        "node-selector-bad-key",
        "training",
        _spec(nodeSelector={"gpu type": "a100"}),
        "spec.nodeSelector: Invalid value: nodeSelector keys must be qualified names",
        "spec.nodeSelector",
        "nodeSelector key with a space",
    ),
    BadCase(
        "reserved-pod-label",
        "inference",
        _spec(podMetadata={"labels": {"app.kubernetes.io/name": "mine"}}),
        "spec.podMetadata.labels: Invalid value: label keys under app.kubernetes.io/ and deepseek.ai/ "
        "are reserved for the operator",
        "spec.podMetadata.labels",
        "pod label under a reserved prefix",
    ),
    BadCase(
        "env-value-and-value-from",
        "training",
        _spec(env=[{"name": "TOKEN", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]),
        "spec.env[0]: Invalid value: set value or valueFrom, not both",
        "spec.env[0]",
        "env var with value and valueFrom",
    ),
    BadCase(
        "unknown-field",
        "training",
        _spec(trainng={"epochs": 3}),
        'unknown field "spec.trainng"',
        "spec.trainng",
        "misspelt field (kubectl validates strictly)",
    ),
    BadCase(
        "name-too-long",
        "training",
        {"metadata": {"name": "a-very-long-training-name-that-is-longer-than-48-chars"}},
        'metadata.name: Invalid value: "a-very-long-training-name-that-is-longer-than-48-chars": metadata.name of '
        "a DeepSeekTraining must be at most 48 characters",
        "metadata.name",
        "name longer than 48 characters",
    ),
    BadCase(
        "name-with-dot",
        "inference",
        {"metadata": {"name": "r8.v2"}},
        'metadata.name: Invalid value: "r8.v2": metadata.name of a DeepSeekInference must be at most 48 characters',
        "metadata.name",
        "name with a dot (not a DNS label)",
    ),
]

# Changes refused on a running DeepSeekTraining (status.startTime set): spec patch -> message.
IMMUTABLE_CASES: list[tuple[str, Manifest, str]] = [
    (
        "change-epochs-after-start",
        {"training": {"epochs": 5}},
        "spec.training: Forbidden: spec.training cannot change once the run has started (status.startTime is set)",
    ),
    (
        "change-dataset-after-start",
        {"dataset": {"builtin": "rotten-tomatoes"}},
        "spec.dataset: Forbidden: spec.dataset cannot change once the run has started",
    ),
    (
        "add-node-selector-after-start",
        {"nodeSelector": {"pool": "a100"}},
        "spec.nodeSelector: Forbidden: spec.nodeSelector cannot change once the run has started",
    ),
]


def _parse(case: BadCase) -> None:
    manifest = case.manifest()
    if case.kind == "training":
        parse_training(manifest)
    else:
        parse_inference(manifest)


def test_table_is_large_and_ids_unique() -> None:
    ids = [c.id for c in CASES] + [c[0] for c in IMMUTABLE_CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 30


@pytest.mark.parametrize("case", [c for c in CASES if c.field], ids=lambda c: c.id)
def test_models_refuse_bad_case_on_the_named_field(case: BadCase) -> None:
    with pytest.raises(ApiSpecError) as err:
        _parse(case)
    fields = [path for path, _ in err.value.errors]
    assert case.field in fields, err.value.errors


def test_base_manifests_are_valid() -> None:
    assert parse_training(training_manifest()).spec.training.precision == "bf16"
    assert parse_inference(inference_manifest()).spec.replicas == 1
