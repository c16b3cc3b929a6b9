"""DeepSeekTraining: fine-tune or train a model on worker pods, then quantize it and publish an artifact.

The ML vocabulary (model, dataset, training, quantization, output location) is the worker run config's own
models (``deepseek_workers.runconfig``), so a field means the same thing in the CRD and in the worker.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from deepseek_workers.runconfig import (
    DatasetSpec,
    Location,
    ModelSpec,
    Precision,
    QuantizationSpec,
    SpecModel,
    TrainingSpec,
    Variant,
)
from pydantic import ConfigDict, Field, model_validator

from deepseek_operator import naming

from .core import (
    Conditions,
    ObjectMeta,
    StatusModel,
    Time,
    WorkloadSpec,
    check_name,
    name_rule,
    no_gpu_in_resources,
)
from .rules import Rule, RuleViolation, enforce, validations

KIND: Final = naming.TRAINING_KIND
PLURAL: Final = naming.TRAINING_PLURAL
SHORT_NAMES: Final = ("dstrain",)

SPARSE_MODEL: Final = "dynamic-sparse-transformer"
ENCODER_ONLY_MODELS: Final = ("all-minilm-l6-v2",)
UNLABELLED_DATASETS: Final = ("hamlet",)

TrainingPhase = Literal["Pending", "Running", "Quantizing", "Succeeded", "Failed", "Suspended"]


class DistributedSpec(SpecModel):
    """How many worker pods train together (PyTorch DDP through torchrun) and the GPUs each one gets."""

    workers: Annotated[
        int,
        Field(
            default=1,
            ge=1,
            le=64,
            description=(
                "Number of worker pods (nodes). More than 1 runs an indexed Job with torchrun rendezvous on worker 0."
            ),
        ),
    ]
    gpus_per_worker: Annotated[
        int,
        Field(
            default=0,
            ge=0,
            le=16,
            description=(
                "nvidia.com/gpu per worker pod; torchrun starts one process per GPU (one process when 0, on CPU)."
            ),
        ),
    ]


class RunPolicy(SpecModel):
    """Lifecycle of the run. These fields may change while it runs; they take effect at once."""

    suspend: Annotated[
        bool,
        Field(
            default=False,
            description=(
                "Suspend the run: worker pods are deleted, progress is kept, and resuming continues from the last "
                "checkpoint."
            ),
        ),
    ]
    backoff_limit: Annotated[
        int,
        Field(
            default=3,
            ge=0,
            le=100,
            description="Retries after a failed attempt (each resumes from the last checkpoint) before Failed.",
        ),
    ]
    active_deadline_seconds: Annotated[
        int | None,
        Field(
            default=None,
            ge=1,
            le=31_536_000,
            description="Fail the run (reason DeadlineExceeded) when it has been active this long; unlimited if unset.",
        ),
    ]
    pending_timeout_seconds: Annotated[
        int,
        Field(
            default=600,
            ge=0,
            le=31_536_000,
            description=(
                "Fail the run when a worker pod cannot start for this long: unschedulable (e.g. no node with the "
                "requested GPUs), image pull failing, or a bad container configuration; the reason names the cause. "
                "0 waits forever."
            ),
        ),
    ]
    ttl_seconds_after_finished: Annotated[
        int | None,
        Field(
            default=None,
            ge=0,
            le=31_536_000,
            description=(
                "Delete the resource (and its children; the artifact stays) this many seconds after it Succeeded or "
                "Failed; kept forever if unset."
            ),
        ),
    ]


def _builtin_name(spec: DeepSeekTrainingSpec) -> str | None:
    return spec.model.builtin.name if spec.model.builtin else None


def _sparse(spec: DeepSeekTrainingSpec) -> bool:
    return _builtin_name(spec) == SPARSE_MODEL


_MODEL_NAME = "self.model.?builtin.?name.orValue('')"

# Cross-field rules of the spec; each has its CEL form (API server) and its Python form (operator).
SPEC_RULES: Final[list[Rule[DeepSeekTrainingSpec]]] = [
    Rule(
        cel=f"!has(self.training.lora) || {_MODEL_NAME} != '{SPARSE_MODEL}'",
        message=(
            f"LoRA does not apply to model.builtin.name {SPARSE_MODEL} (it is trained from scratch, all weights); "
            "remove training.lora or start from a pretrained model"
        ),
        field_path=".training.lora",
        check=lambda s: s.training.lora is None or not _sparse(s),
    ),
    Rule(
        cel=f"!has(self.training.sparsity) || {_MODEL_NAME} == '{SPARSE_MODEL}'",
        message=f"training.sparsity applies only to model.builtin.name {SPARSE_MODEL}",
        field_path=".training.sparsity",
        check=lambda s: s.training.sparsity is None or _sparse(s),
    ),
    Rule(
        cel=f"!has(self.model.builtin) || !has(self.model.builtin.architecture) || {_MODEL_NAME} == '{SPARSE_MODEL}'",
        message=f"model.builtin.architecture applies only to model.builtin.name {SPARSE_MODEL}",
        field_path=".model.builtin.architecture",
        check=lambda s: s.model.builtin is None or s.model.builtin.architecture is None or _sparse(s),
    ),
    Rule(
        cel=(
            "self.model.task != 'causal-lm' || !("
            + " || ".join(f"{_MODEL_NAME} == '{m}'" for m in ENCODER_ONLY_MODELS)
            + ")"
        ),
        message=(
            "model.task causal-lm needs a causal (decoder) model: "
            + ", ".join(ENCODER_ONLY_MODELS)
            + " is an encoder; use smollm2-135m or dynamic-sparse-transformer"
        ),
        field_path=".model.task",
        check=lambda s: s.model.task != "causal-lm" or _builtin_name(s) not in ENCODER_ONLY_MODELS,
    ),
    Rule(
        cel=(
            "self.model.task == 'causal-lm' || !("
            + " || ".join(f"self.dataset.?builtin.orValue('') == '{d}'" for d in UNLABELLED_DATASETS)
            + ")"
        ),
        message=(
            "dataset.builtin " + ", ".join(UNLABELLED_DATASETS) + " is unlabelled text: it needs model.task causal-lm"
        ),
        field_path=".dataset.builtin",
        check=lambda s: s.model.task == "causal-lm" or s.dataset.builtin not in UNLABELLED_DATASETS,
    ),
    no_gpu_in_resources("distributed.gpusPerWorker"),
]


class DeepSeekTrainingSpec(WorkloadSpec):
    """What to train, on what data, how, where the artifact goes, and on which pods."""

    model: Annotated[ModelSpec, Field(description=ModelSpec.__doc__)]
    dataset: Annotated[DatasetSpec, Field(description=DatasetSpec.__doc__)]
    training: Annotated[
        TrainingSpec,
        Field(
            default_factory=TrainingSpec,
            description=(
                "Optimisation settings: epochs or maxSteps, batch size, learning rate and schedule, precision "
                "(fp32, bf16, fp16 mixed), optional LoRA or dynamic sparsity, checkpoint interval."
            ),
            json_schema_extra={"default": {}},
        ),
    ]
    quantization: Annotated[
        QuantizationSpec,
        Field(
            default_factory=QuantizationSpec,
            description=(
                "Post-training INT8 quantization, measured against fp32 on the evaluation split; on by default."
            ),
            json_schema_extra={"default": {}},
        ),
    ]
    output: Annotated[
        Location,
        Field(
            description=(
                "Where the artifact goes: a PVC path or a URI (s3://bucket/prefix). Checkpoints are written under "
                "<output>/checkpoints and each published version under <output>/<version>."
            )
        ),
    ]
    distributed: Annotated[
        DistributedSpec,
        Field(
            default_factory=DistributedSpec,
            description="Number of worker pods and GPUs per pod.",
            json_schema_extra={"default": {}},
        ),
    ]
    run_policy: Annotated[
        RunPolicy,
        Field(
            default_factory=RunPolicy,
            description="Suspend, retries, deadline and clean-up; the only fields that may change after the start.",
            json_schema_extra={"default": {}},
        ),
    ]

    model_config = ConfigDict(json_schema_extra=validations(SPEC_RULES))

    @model_validator(mode="after")
    def _cross_field_rules(self) -> DeepSeekTrainingSpec:
        return enforce(self, SPEC_RULES)


# Every spec field except runPolicy is fixed once the run has started: the workers' run config, checkpoints and
# artifact version are derived from it, and retries must run the same thing.
MUTABLE_AFTER_START: Final = ("runPolicy",)


def immutable_fields() -> list[str]:
    """Spec fields (wire names) that may not change once status.startTime is set."""
    names = [f.alias or n for n, f in DeepSeekTrainingSpec.model_fields.items()]
    return sorted(n for n in names if n not in MUTABLE_AFTER_START)


def _immutability_rule(field: str) -> Rule[Any]:
    return Rule(
        # Plain has()/== rather than optionals: the API server's cost estimate of optional equality is unbounded.
        cel=(
            f"!has(oldSelf.status) || !has(oldSelf.status.startTime) || "
            f"(has(self.spec.{field}) == has(oldSelf.spec.{field}) && "
            f"(!has(self.spec.{field}) || self.spec.{field} == oldSelf.spec.{field}))"
        ),
        message=(
            f"spec.{field} cannot change once the run has started (status.startTime is set); only spec.runPolicy "
            "can. Create a new DeepSeekTraining to train with other settings"
        ),
        field_path=f".spec.{field}",
        reason="FieldValueForbidden",
        server_only=True,
    )


def object_rules() -> list[Rule[Any]]:
    """Rules on the whole object (need metadata or the stored object): enforced by the API server only."""
    return [name_rule(KIND), *(_immutability_rule(f) for f in immutable_fields())]


# ---------------------------------------------------------------------------------------------------------
# Status


class EvalMetricStatus(StatusModel):
    """The latest evaluation result."""

    name: Annotated[str, Field(max_length=64, description="accuracy (text-classification) or perplexity (causal-lm).")]
    value: Annotated[float, Field(description="Its value on the evaluation split.")]


class TrainingProgress(StatusModel):
    """Live progress, from the reports of worker 0 (updated at least every 30 s while it runs)."""

    stage: Annotated[Literal["train", "quantize"] | None, Field(default=None, description="The step that is running.")]
    step: Annotated[int, Field(default=0, ge=0, description="Optimiser steps done.")]
    total_steps: Annotated[int, Field(default=0, ge=0, description="Optimiser steps planned.")]
    percent: Annotated[int, Field(default=0, ge=0, le=100, description="step / totalSteps, in percent.")]
    epoch: Annotated[float, Field(default=0.0, ge=0.0, description="Epochs done (fractional).")]
    loss: Annotated[float | None, Field(default=None, description="Training loss (smoothed).")]
    learning_rate: Annotated[float | None, Field(default=None, description="Current learning rate.")]
    eval_metric: Annotated[EvalMetricStatus | None, Field(default=None, description="Latest evaluation.")]
    samples_per_second: Annotated[float | None, Field(default=None, description="Training throughput.")]
    eta_seconds: Annotated[float | None, Field(default=None, ge=0.0, description="Estimated seconds left.")]
    resumed_from_step: Annotated[
        int | None, Field(default=None, ge=0, description="The checkpoint step this attempt resumed from.")
    ]
    precision: Annotated[
        Precision | None,
        Field(
            default=None,
            description=(
                "The precision training really runs in. It differs from spec.training.precision when the hardware "
                "lacks it: bf16 on a CPU without native bf16 (avx512_bf16, amx_bf16, Arm bf16) runs in fp32, "
                "because emulated bf16 is several times slower."
            ),
        ),
    ]
    last_update_time: Annotated[Time | None, Field(default=None, description="When worker 0 last reported.")]


class TrainingArtifacts(StatusModel):
    """Where the published artifact is (each entry a URI or absolute path inside the output PVC)."""

    version: Annotated[
        str,
        Field(
            max_length=128,
            pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
            description="Artifact version, fixed when the run starts (e.g. v1); the directory under output.",
        ),
    ]
    uri: Annotated[
        str | None, Field(default=None, max_length=4096, description="The version directory (has manifest.json).")
    ]
    fp32: Annotated[str | None, Field(default=None, max_length=4096, description="The fp32 model directory.")]
    int8: Annotated[str | None, Field(default=None, max_length=4096, description="The INT8 model directory.")]
    onnx: Annotated[
        str | None, Field(default=None, max_length=4096, description="The ONNX directory (fp32 and INT8 models).")
    ]
    adapter: Annotated[
        str | None, Field(default=None, max_length=4096, description="The LoRA adapter (when LoRA was used).")
    ]
    default_variant: Annotated[
        Variant | None,
        Field(
            default=None,
            description=(
                "What a DeepSeekInference serves when it does not choose: int8, or fp32 when quantization was "
                "disabled or INT8 lost more than quantization.maxAccuracyDrop."
            ),
        ),
    ]
    quantization_over_budget: Annotated[
        bool | None, Field(default=None, description="INT8 lost more accuracy than allowed; fp32 is the default.")
    ]


class DeepSeekTrainingStatus(StatusModel):
    """Observed state, written by the operator only."""

    phase: Annotated[
        TrainingPhase | None,
        Field(default=None, description="Pending, Running, Quantizing, Succeeded, Failed or Suspended."),
    ]
    conditions: Conditions
    observed_generation: Annotated[
        int | None, Field(default=None, ge=0, description="The metadata.generation the status reflects.")
    ]
    start_time: Annotated[
        Time | None,
        Field(default=None, description="When the first worker Job was created; spec is fixed from then on."),
    ]
    completion_time: Annotated[Time | None, Field(default=None, description="When the run Succeeded or Failed.")]
    restarts: Annotated[
        int, Field(default=0, ge=0, description="Failed attempts retried so far (runPolicy.backoffLimit).")
    ]
    progress: Annotated[TrainingProgress | None, Field(default=None, description="Live progress.")]
    artifacts: Annotated[TrainingArtifacts | None, Field(default=None, description="The published artifact.")]
    metrics: Annotated[
        dict[str, float] | None,
        Field(
            default=None,
            max_length=64,
            description=(
                "Final metrics of the run (e.g. accuracy, macroF1, perplexity, int8Accuracy, accuracyDrop, "
                "int8SpeedUp); accuracy is the served variant's evaluation accuracy."
            ),
        ),
    ]


class DeepSeekTraining(SpecModel):
    """A training run: worker pods fine-tune or train a model, quantize it to INT8 and publish an artifact."""

    api_version: Literal["deepseek.ai/v1alpha1"] = "deepseek.ai/v1alpha1"
    kind: Literal["DeepSeekTraining"] = KIND
    metadata: ObjectMeta
    spec: DeepSeekTrainingSpec
    status: DeepSeekTrainingStatus | None = None

    @model_validator(mode="after")
    def _name(self) -> DeepSeekTraining:
        message = check_name(KIND, self.metadata.name)
        if message:
            raise RuleViolation([(".metadata.name", message)])
        return self
