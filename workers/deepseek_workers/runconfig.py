"""The run config: the one contract between the operator and the worker pods.

The operator renders a run config from a custom resource (into a ConfigMap mounted at
``/etc/deepseek/run.json``); the worker validates it before doing anything. It imports pydantic only, never
torch, so that the operator (whose image has no torch) and the API models can import it.

The spec sub-models here (model, dataset, training, LoRA, sparsity, quantization, batching) are also the
vocabulary of the custom resources: ``deepseek_operator.api`` composes them into the CRD schemas, so a field
has one definition and one description. Field names are camelCase on the wire, as in Kubernetes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

RUN_CONFIG_VERSION: Final = "deepseek.ai/runconfig-v1"
DEFAULT_RUN_CONFIG_PATH = "/etc/deepseek/run.json"

# Exit codes of `deepseek-worker`, read by the operator from the pod's termination state.
EXIT_OK = 0
EXIT_BAD_CONFIG = 64  # the run config is invalid (EX_USAGE)
EXIT_BAD_DATA = 65  # the dataset is missing, empty or malformed (EX_DATAERR)
EXIT_BAD_ARTIFACT = 66  # an input model or artifact is missing, corrupt or fails verification


class SpecModel(BaseModel):
    """Base for every contract model: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


def _cel(rule: str, message: str, field_path: str = "") -> JsonDict:
    """A CEL rule for the CRD schema (``x-kubernetes-validations``), mirroring a pydantic validator below.

    The CRDs reuse these models (``deepseek_operator.api``); the API server then refuses the same input at
    apply time with the same message.
    """
    out: JsonDict = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


def _cel_rules(*rules: JsonDict) -> ConfigDict:
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": list(rules)})


_ONE_LOCATION = "set exactly one of pvc or uri"
_ONE_MODEL_SOURCE = "set exactly one model source: builtin, pvc or uri"
_ONE_DATASET_SOURCE = "set exactly one dataset source: builtin, pvc or uri"
_NO_PARENT = "must not contain '..' segments"


# ---------------------------------------------------------------------------------------------------------
# Storage locations


class PVCPath(SpecModel):
    """A path inside a PersistentVolumeClaim in the resource's namespace."""

    claim_name: Annotated[
        str,
        Field(
            description="Name of the PersistentVolumeClaim (in the resource's namespace).",
            min_length=1,
            max_length=253,
            pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        ),
    ]
    path: Annotated[
        str,
        Field(
            default="",
            description="Path inside the volume, relative to its root; empty means the root.",
            max_length=1024,
            pattern=r"^([A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*)?$",
        ),
    ]

    model_config = _cel_rules(_cel(r"!self.path.matches(r'(^|/)\.\.(/|$)')", "path " + _NO_PARENT, ".path"))

    @field_validator("path")
    @classmethod
    def _no_parent_segments(cls, value: str) -> str:
        if ".." in value.split("/"):
            raise ValueError(_NO_PARENT)
        return value


class Location(SpecModel):
    """Where data lives: exactly one of a PVC path or a URI (s3://bucket/key or file:///abs/path)."""

    pvc: Annotated[PVCPath | None, Field(default=None, description="A path on a PersistentVolumeClaim.")]
    uri: Annotated[
        str | None,
        Field(
            default=None,
            description="A URI: s3://bucket/prefix (object store) or file:///absolute/path (node-local).",
            pattern=r"^(s3|file)://.+$",
            max_length=2048,
        ),
    ]

    model_config = _cel_rules(_cel("has(self.pvc) != has(self.uri)", _ONE_LOCATION))

    @model_validator(mode="after")
    def _exactly_one(self) -> Location:
        if (self.pvc is None) == (self.uri is None):
            raise ValueError(_ONE_LOCATION)
        return self


# ---------------------------------------------------------------------------------------------------------
# Model

Task = Literal["text-classification", "causal-lm"]
BuiltinModelName = Literal["all-minilm-l6-v2", "smollm2-135m", "dynamic-sparse-transformer"]


class SparseArchitecture(SpecModel):
    """Shape of the built-in dynamic-sparse gated transformer (ignored for pretrained models)."""

    hidden_size: Annotated[int, Field(default=256, ge=32, le=8192, description="Width of the residual stream.")]
    layers: Annotated[int, Field(default=4, ge=1, le=96, description="Number of transformer blocks.")]
    heads: Annotated[int, Field(default=4, ge=1, le=128, description="Attention heads per block.")]
    experts: Annotated[
        int,
        Field(default=16, ge=2, le=1024, description="Feed-forward experts (gated units) per block."),
    ]
    expert_size: Annotated[int, Field(default=256, ge=8, le=65536, description="Hidden width of each expert.")]
    max_positions: Annotated[int, Field(default=512, ge=16, le=32768, description="Longest sequence supported.")]


class BuiltinModel(SpecModel):
    """A model that ships inside the worker image: pretrained weights, or an architecture trained from scratch."""

    name: Annotated[
        BuiltinModelName,
        Field(
            description=(
                "all-minilm-l6-v2 (pretrained sentence encoder, text classification), smollm2-135m (pretrained "
                "causal LM), or dynamic-sparse-transformer (gated mixture-of-experts, trained from scratch)."
            )
        ),
    ]
    architecture: Annotated[
        SparseArchitecture | None,
        Field(default=None, description="Shape of dynamic-sparse-transformer; defaults apply when omitted."),
    ]


class ModelSpec(SpecModel):
    """The model to start from: exactly one of builtin, pvc (a Hugging Face-format directory) or uri."""

    task: Annotated[
        Task,
        Field(
            default="text-classification",
            description="text-classification (one label per text) or causal-lm (next-token prediction, generation).",
        ),
    ]
    builtin: Annotated[BuiltinModel | None, Field(default=None, description="A model shipped in the worker image.")]
    pvc: Annotated[
        PVCPath | None,
        Field(default=None, description="A Hugging Face-format model directory (config.json, weights) on a PVC."),
    ]
    uri: Annotated[
        str | None,
        Field(
            default=None,
            description="A model artifact or Hugging Face-format directory: s3://bucket/prefix or file:///path.",
            pattern=r"^(s3|file)://.+$",
            max_length=2048,
        ),
    ]

    model_config = _cel_rules(
        _cel("[has(self.builtin), has(self.pvc), has(self.uri)].filter(x, x).size() == 1", _ONE_MODEL_SOURCE)
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ModelSpec:
        if sum(x is not None for x in (self.builtin, self.pvc, self.uri)) != 1:
            raise ValueError(_ONE_MODEL_SOURCE)
        return self


# ---------------------------------------------------------------------------------------------------------
# Dataset

BuiltinDatasetName = Literal["reuters-r8", "rotten-tomatoes", "hamlet"]


class DatasetSpec(SpecModel):
    """Labelled text: a dataset shipped in the worker image, or a jsonl/csv file on a PVC or at a URI."""

    builtin: Annotated[
        BuiltinDatasetName | None,
        Field(
            default=None,
            description=(
                "A dataset shipped in the worker image: reuters-r8 (8 finance-news topics), rotten-tomatoes "
                "(binary sentiment), hamlet (plain text for causal-lm)."
            ),
        ),
    ]
    pvc: Annotated[PVCPath | None, Field(default=None, description="A jsonl or csv file on a PVC.")]
    uri: Annotated[
        str | None,
        Field(
            default=None,
            description="A jsonl or csv file: s3://bucket/key or file:///path.",
            pattern=r"^(s3|file)://.+$",
            max_length=2048,
        ),
    ]
    format: Annotated[
        Literal["jsonl", "csv"],
        Field(default="jsonl", description="File format of pvc/uri data: jsonl or csv (with a header row)."),
    ]
    text_field: Annotated[
        str, Field(default="text", min_length=1, max_length=256, description="Field that holds the text.")
    ]
    label_field: Annotated[
        str,
        Field(
            default="label",
            min_length=1,
            max_length=256,
            description="Field that holds the label (text-classification only).",
        ),
    ]
    eval_fraction: Annotated[
        float,
        Field(
            default=0.1,
            gt=0.0,
            lt=0.9,
            description="Share of rows held out for evaluation when no eval file is given (split by seed).",
        ),
    ]
    eval: Annotated[
        Location | None,
        Field(default=None, description="A separate evaluation file in the same format; overrides evalFraction."),
    ]
    max_train_samples: Annotated[
        int | None, Field(default=None, ge=1, description="Use at most this many training rows (after shuffling).")
    ]
    max_eval_samples: Annotated[
        int | None, Field(default=None, ge=1, description="Use at most this many evaluation rows.")
    ]
    max_length: Annotated[
        int, Field(default=128, ge=8, le=8192, description="Truncate tokenised inputs to this many tokens.")
    ]

    model_config = _cel_rules(
        _cel("[has(self.builtin), has(self.pvc), has(self.uri)].filter(x, x).size() == 1", _ONE_DATASET_SOURCE)
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> DatasetSpec:
        if sum(x is not None for x in (self.builtin, self.pvc, self.uri)) != 1:
            raise ValueError(_ONE_DATASET_SOURCE)
        return self


# ---------------------------------------------------------------------------------------------------------
# Training

Precision = Literal["fp32", "bf16", "fp16"]


class LoRASpec(SpecModel):
    """Low-rank adapters (through the peft library): train only small adapter matrices."""

    r: Annotated[int, Field(default=8, ge=1, le=256, description="Rank of the adapter matrices.")]
    alpha: Annotated[int, Field(default=16, ge=1, le=1024, description="Scaling numerator (scale = alpha / r).")]
    dropout: Annotated[float, Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the adapter input.")]
    target_modules: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.]+$")]] | None,
        Field(
            default=None,
            min_length=1,
            max_length=64,
            description="Module names to adapt (e.g. query, value); the model family's defaults when omitted.",
            json_schema_extra={"x-kubernetes-list-type": "set"},
        ),
    ]

    @field_validator("target_modules")
    @classmethod
    def _unique_modules(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("target module names must be unique")
        return value


class SparsitySpec(SpecModel):
    """Dynamic sparsity: a learned gate activates only a fraction of feed-forward experts per token."""

    active_fraction: Annotated[
        float,
        Field(default=0.2, gt=0.0, le=1.0, description="Fraction of experts active per token (0.2 = 20%)."),
    ]
    load_balance_weight: Annotated[
        float,
        Field(default=0.01, ge=0.0, le=10.0, description="Weight of the load-balancing loss term."),
    ]


class TrainingSpec(SpecModel):
    """Optimisation settings."""

    epochs: Annotated[int, Field(default=1, ge=1, le=1000, description="Passes over the training data.")]
    max_steps: Annotated[
        int | None,
        Field(default=None, ge=1, description="Stop after this many optimiser steps (overrides epochs)."),
    ]
    batch_size: Annotated[int, Field(default=16, ge=1, le=4096, description="Examples per worker per micro-batch.")]
    gradient_accumulation_steps: Annotated[
        int, Field(default=1, ge=1, le=1024, description="Micro-batches accumulated per optimiser step.")
    ]
    learning_rate: Annotated[float, Field(default=5e-5, gt=0.0, le=1.0, description="Peak learning rate of AdamW.")]
    weight_decay: Annotated[float, Field(default=0.01, ge=0.0, le=1.0, description="AdamW weight decay.")]
    lr_schedule: Annotated[
        Literal["constant", "linear", "cosine"],
        Field(default="linear", description="Learning-rate schedule after warm-up: constant, linear or cosine."),
    ]
    warmup_ratio: Annotated[
        float, Field(default=0.06, ge=0.0, le=0.5, description="Share of steps spent warming up linearly.")
    ]
    seed: Annotated[int, Field(default=42, ge=0, le=2**31 - 1, description="Seed for data split, shuffling, init.")]
    precision: Annotated[
        Precision,
        Field(default="bf16", description="fp32, or bf16/fp16 mixed precision (autocast, fp32 master weights)."),
    ]
    lora: Annotated[LoRASpec | None, Field(default=None, description="Train LoRA adapters instead of all weights.")]
    sparsity: Annotated[
        SparsitySpec | None,
        Field(default=None, description="Dynamic sparsity settings (dynamic-sparse-transformer only)."),
    ]
    checkpoint_every_steps: Annotated[
        int, Field(default=200, ge=1, description="Write a resumable checkpoint every this many optimiser steps.")
    ]
    eval_every_steps: Annotated[
        int | None, Field(default=None, ge=1, description="Evaluate every this many steps (default: each epoch).")
    ]


# ---------------------------------------------------------------------------------------------------------
# Quantization

QuantizationMethod = Literal["int8-dynamic", "int8-weight-only"]


class QuantizationSpec(SpecModel):
    """Post-training INT8 quantization, measured against fp32 on the evaluation split."""

    enabled: Annotated[bool, Field(default=True, description="Quantize after training.")]
    method: Annotated[
        QuantizationMethod,
        Field(
            default="int8-dynamic",
            description="int8-dynamic (weights and activations INT8) or int8-weight-only (INT8 weights).",
        ),
    ]
    max_accuracy_drop: Annotated[
        float,
        Field(
            default=0.01,
            ge=0.0,
            le=1.0,
            description="Largest allowed accuracy drop (absolute, 0.01 = 1 point); above it fp32 is served.",
        ),
    ]
    export_onnx: Annotated[bool, Field(default=True, description="Also export fp32 and INT8 ONNX models.")]


# ---------------------------------------------------------------------------------------------------------
# Serving

Variant = Literal["fp32", "int8", "onnx-fp32", "onnx-int8"]


class BatchingSpec(SpecModel):
    """Dynamic request batching in the model server."""

    max_batch_size: Annotated[int, Field(default=32, ge=1, le=1024, description="Largest batch sent to the model.")]
    max_queue_delay_ms: Annotated[
        float,
        Field(default=5.0, ge=0.0, le=10000.0, description="Longest a request waits for others to join its batch."),
    ]
    max_queue_size: Annotated[
        int, Field(default=256, ge=1, le=100000, description="Queued requests beyond which new ones get 429.")
    ]
    request_timeout_seconds: Annotated[
        float, Field(default=30.0, gt=0.0, le=3600.0, description="Per-request deadline; 504 when it passes.")
    ]
    concurrent_batches: Annotated[
        int,
        Field(
            default=1,
            ge=1,
            le=16,
            description="Model calls run at once, each on its own model thread; the threads share the length "
            "groups of each formed batch. On CPU the pod's CPUs are split between them (torch threads per call = "
            "CPUs / concurrentBatches): 2 or more raises throughput under load, 1 gives the fastest single "
            "request. On a GPU the calls share the device.",
        ),
    ]


# ---------------------------------------------------------------------------------------------------------
# The run configs themselves


class SourceRef(SpecModel):
    """The custom resource a run was rendered from (recorded in artifact manifests and logs)."""

    kind: str
    namespace: str
    name: str
    uid: str = ""
    generation: int = 0


class ProgressSink(SpecModel):
    """Where the training worker reports progress.

    The operator creates a ConfigMap ``configMap`` that only this run's service account may patch; the worker
    writes a JSON document under key ``progress.json`` at least every ``intervalSeconds``. Without a config map
    (local runs) progress goes to ``<output>/progress.json`` only.
    """

    config_map: str | None = None
    namespace: str | None = None
    interval_seconds: Annotated[float, Field(default=10.0, gt=0.0, le=30.0)]


class TrainRunConfig(SpecModel):
    """What `deepseek-worker train` and `deepseek-worker quantize` read."""

    api_version: Literal["deepseek.ai/runconfig-v1"] = RUN_CONFIG_VERSION
    kind: Literal["TrainRun"] = "TrainRun"
    source: SourceRef
    model: ModelSpec
    dataset: DatasetSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    quantization: QuantizationSpec = Field(default_factory=QuantizationSpec)
    output_uri: Annotated[
        str,
        Field(
            description=(
                "Resolved output root: an absolute local path (a mounted PVC) or s3://bucket/prefix. The worker "
                "writes checkpoints under <outputUri>/checkpoints and the artifact under "
                "<outputUri>/<artifactVersion>."
            ),
            min_length=1,
        ),
    ]
    artifact_version: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=128)]
    # Resolved local paths of PVC inputs (the operator mounts them); None for builtin and URI sources.
    model_path: str | None = None
    dataset_path: str | None = None
    eval_dataset_path: str | None = None
    progress: ProgressSink = Field(default_factory=ProgressSink)
    metrics_port: Annotated[int, Field(default=9400, ge=0, le=65535, description="0 disables /metrics.")]


class ServeRunConfig(SpecModel):
    """What `deepseek-worker serve` reads."""

    api_version: Literal["deepseek.ai/runconfig-v1"] = RUN_CONFIG_VERSION
    kind: Literal["ServeRun"] = "ServeRun"
    source: SourceRef
    model_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=253)]
    artifact_uri: Annotated[
        str, Field(min_length=1, description="The artifact version directory: a local path or s3://bucket/prefix.")
    ]
    variant: Variant = "int8"
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    host: str = "0.0.0.0"
    port: Annotated[int, Field(default=8080, ge=1, le=65535)]
    drain_seconds: Annotated[float, Field(default=20.0, ge=0.0, le=600.0)]


RunConfig = Annotated[TrainRunConfig | ServeRunConfig, Field(discriminator="kind")]


class RunConfigError(ValueError):
    """The run config could not be read or is invalid; the message names the fields at fault."""


def _format_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        parts.append(f"{loc}: {e['msg']}")
    return "invalid run config: " + "; ".join(parts)


def parse_train_config(data: str | bytes | dict[str, object]) -> TrainRunConfig:
    """Validate a training run config; raises RunConfigError with every bad field named."""
    try:
        if isinstance(data, dict):
            return TrainRunConfig.model_validate(data)
        return TrainRunConfig.model_validate_json(data)
    except ValidationError as err:
        raise RunConfigError(_format_validation_error(err)) from None


def parse_serve_config(data: str | bytes | dict[str, object]) -> ServeRunConfig:
    """Validate a serving run config; raises RunConfigError with every bad field named."""
    try:
        if isinstance(data, dict):
            return ServeRunConfig.model_validate(data)
        return ServeRunConfig.model_validate_json(data)
    except ValidationError as err:
        raise RunConfigError(_format_validation_error(err)) from None


def load_text(path: str | Path) -> str:
    """Read a run config file, turning a missing or unreadable file into a RunConfigError."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise RunConfigError(f"cannot read run config {path}: {err.strerror}") from None


def dump(config: TrainRunConfig | ServeRunConfig) -> str:
    """Serialise a run config the way the operator writes it (camelCase, stable key order)."""
    return json.dumps(config.model_dump(mode="json", by_alias=True, exclude_none=True), indent=2, sort_keys=True)


# ---------------------------------------------------------------------------------------------------------
# Progress reports: the other direction of the contract (worker -> operator)


class EvalMetric(SpecModel):
    name: str  # accuracy for text-classification, perplexity for causal-lm
    value: float


class ProgressReport(SpecModel):
    """What a worker writes under key ``progress.json`` of its run's progress ConfigMap.

    ``stage`` says which worker command wrote it; ``state`` whether that command is still going. The operator
    turns the newest report into ``status.progress`` and, once a stage has finished, into final metrics and
    artifact locations. Rank 0 alone reports in a distributed run.
    """

    stage: Literal["train", "quantize"]
    state: Literal["running", "succeeded", "failed"] = "running"
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    loss: float | None = None
    learning_rate: float | None = None
    eval_metric: EvalMetric | None = None
    samples_per_second: float | None = None
    eta_seconds: float | None = None
    resumed_from_step: int | None = None
    precision: Precision | None = None  # what training really runs in (bf16 may fall back to fp32 on a CPU)
    updated_at: str  # RFC 3339, UTC
    # Set when a stage ends: where its output went and what it measured.
    artifact_uri: str | None = None
    metrics: dict[str, float] | None = None
    over_budget: bool | None = None  # quantize: the INT8 model lost more than maxAccuracyDrop; fp32 is served
    message: str | None = None
