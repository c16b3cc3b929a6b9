"""DeepSeekInference: serve a model (typically a DeepSeekTraining's INT8 output) with dynamic batching."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from deepseek_workers.runconfig import BatchingSpec, PVCPath, SpecModel, Variant
from pydantic import ConfigDict, Field, model_validator

from deepseek_operator import naming

from .core import (
    DNS1035_LABEL,
    LABEL_VALUE,
    MAX_NAME_LENGTH,
    Conditions,
    ObjectMeta,
    StatusModel,
    Time,
    WorkloadSpec,
    check_name,
    label_map_rules,
    name_rule,
    no_gpu_in_resources,
)
from .rules import Rule, RuleViolation, enforce, exactly_one, validations

KIND: Final = naming.INFERENCE_KIND
PLURAL: Final = naming.INFERENCE_PLURAL
SHORT_NAMES: Final = ("dsinfer",)

InferencePhase = Literal["Pending", "Ready", "NotReady", "Stopped", "Failed"]


class TrainingRef(SpecModel):
    """A DeepSeekTraining in the same namespace whose published artifact is served once it has Succeeded."""

    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_NAME_LENGTH,
            pattern=DNS1035_LABEL,
            description="Name of the DeepSeekTraining.",
        ),
    ]


_ONE_MODEL = "set exactly one model source: trainingRef, uri or pvc"


class InferenceModelSpec(SpecModel):
    """The model to serve: exactly one of trainingRef, uri or pvc, and which variant of it."""

    training_ref: Annotated[
        TrainingRef | None,
        Field(default=None, description="Serve the artifact of a DeepSeekTraining (waits until it Succeeded)."),
    ]
    uri: Annotated[
        str | None,
        Field(
            default=None,
            max_length=2048,
            pattern=r"^(s3|file)://.+$",
            description="An artifact version directory (with manifest.json): s3://bucket/prefix/v1 or file:///path.",
        ),
    ]
    pvc: Annotated[
        PVCPath | None, Field(default=None, description="An artifact version directory on a PersistentVolumeClaim.")
    ]
    variant: Annotated[
        Variant | None,
        Field(
            default=None,
            description=(
                "fp32, int8, onnx-fp32 or onnx-int8. When omitted: the training's default variant for trainingRef "
                "(int8, or fp32 when INT8 was over the accuracy budget), int8 for uri and pvc."
            ),
        ),
    ]
    served_name: Annotated[
        str | None,
        Field(
            default=None,
            max_length=253,
            pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
            description="Model name in the APIs (/v2/models/<name>, OpenAI model); the resource name when unset.",
        ),
    ]

    model_config = ConfigDict(
        json_schema_extra=validations([Rule(cel=exactly_one(["trainingRef", "uri", "pvc"]), message=_ONE_MODEL)])
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> InferenceModelSpec:
        if sum(x is not None for x in (self.training_ref, self.uri, self.pvc)) != 1:
            raise ValueError(_ONE_MODEL)
        return self


_MIN_MAX = "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas"


class AutoscalingSpec(SpecModel):
    """A HorizontalPodAutoscaler that drives spec.replicas through the scale subresource."""

    min_replicas: Annotated[int, Field(default=1, ge=1, le=1000, description="Fewest replicas.")]
    max_replicas: Annotated[int, Field(ge=1, le=1000, description="Most replicas.")]
    metric: Annotated[
        Literal["cpu", "memory", "concurrency", "rps"],
        Field(
            default="cpu",
            description=(
                "What to scale on: cpu or memory (utilisation, percent of resources.requests), concurrency "
                "(in-flight requests per pod) or rps (requests per second per pod); the last two need a custom "
                "metrics adapter serving the model server's metrics."
            ),
        ),
    ]
    target: Annotated[
        int,
        Field(default=80, ge=1, le=100_000, description="Target value per pod for the metric (80 = 80% for cpu)."),
    ]

    model_config = ConfigDict(
        json_schema_extra=validations(
            [Rule(cel="self.minReplicas <= self.maxReplicas", message=_MIN_MAX, field_path=".minReplicas")]
        )
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(_MIN_MAX)
        return self


class ServiceSpec(SpecModel):
    """The Service in front of the model servers."""

    type: Annotated[
        Literal["ClusterIP", "NodePort", "LoadBalancer"],
        Field(default="ClusterIP", description="ClusterIP, NodePort or LoadBalancer."),
    ]
    port: Annotated[int, Field(default=80, ge=1, le=65535, description="Service port (HTTP).")]
    annotations: Annotated[
        dict[str, Annotated[str, Field(max_length=4096)]] | None,
        Field(
            default=None,
            max_length=32,
            description="Annotations for the Service (e.g. a cloud load balancer's settings).",
            json_schema_extra=validations(label_map_rules("annotation", reserved=False)),
        ),
    ]


class MonitoringSpec(SpecModel):
    """Prometheus scraping of the model servers' /metrics."""

    service_monitor: Annotated[
        bool,
        Field(
            default=True,
            description="Create a ServiceMonitor when the Prometheus Operator's API exists (a condition says if not).",
        ),
    ]
    interval: Annotated[
        str,
        Field(
            default="30s",
            max_length=16,
            pattern=r"^[1-9][0-9]*(s|m)$",
            description="Scrape interval, e.g. 15s or 1m.",
        ),
    ]
    labels: Annotated[
        dict[str, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]] | None,
        Field(
            default=None,
            max_length=16,
            description="Labels for the ServiceMonitor so that your Prometheus selects it (e.g. release: prometheus).",
            json_schema_extra=validations(label_map_rules("label", reserved=False)),
        ),
    ]


def _needs_request(spec: DeepSeekInferenceSpec) -> bool:
    a = spec.autoscaling
    if a is None or a.metric not in ("cpu", "memory"):
        return True
    requests = spec.resources.requests if spec.resources and spec.resources.requests else {}
    return a.metric in requests


SPEC_RULES: Final[list[Rule[DeepSeekInferenceSpec]]] = [
    Rule(
        cel=(
            "!has(self.autoscaling) || !(self.autoscaling.metric in ['cpu', 'memory']) || "
            "self.autoscaling.metric in self.?resources.?requests.orValue({})"
        ),
        message=(
            "autoscaling on cpu or memory utilisation needs resources.requests of that resource (the target is a "
            "percentage of it)"
        ),
        message_expression=(
            "'autoscaling.metric ' + self.autoscaling.metric + ' needs resources.requests.' + "
            "self.autoscaling.metric + ' (the target is a percentage of the request)'"
        ),
        field_path=".autoscaling.metric",
        check=_needs_request,
    ),
    no_gpu_in_resources("gpusPerReplica"),
]


class DeepSeekInferenceSpec(WorkloadSpec):
    """The model to serve and how: replicas, autoscaling, batching, Service, monitoring and pod settings."""

    model: Annotated[InferenceModelSpec, Field(description=InferenceModelSpec.__doc__)]
    replicas: Annotated[
        int,
        Field(
            default=1,
            ge=0,
            le=1000,
            description=(
                "Model server pods; 0 stops serving (phase Stopped). Written by `kubectl scale` and by the "
                "autoscaler when autoscaling is set (GitOps tools should then leave it out)."
            ),
        ),
    ]
    autoscaling: Annotated[
        AutoscalingSpec | None, Field(default=None, description="Scale between min and max replicas on a metric.")
    ]
    batching: Annotated[
        BatchingSpec,
        Field(
            default_factory=BatchingSpec,
            description="Dynamic request batching in the model server.",
            json_schema_extra={"default": {}},
        ),
    ]
    gpus_per_replica: Annotated[
        int, Field(default=0, ge=0, le=16, description="nvidia.com/gpu per model server pod (0: CPU).")
    ]
    service: Annotated[
        ServiceSpec,
        Field(default_factory=ServiceSpec, description="The Service.", json_schema_extra={"default": {}}),
    ]
    monitoring: Annotated[
        MonitoringSpec,
        Field(default_factory=MonitoringSpec, description="Prometheus scraping.", json_schema_extra={"default": {}}),
    ]

    model_config = ConfigDict(json_schema_extra=validations(SPEC_RULES))

    @model_validator(mode="after")
    def _cross_field_rules(self) -> DeepSeekInferenceSpec:
        return enforce(self, SPEC_RULES)


def object_rules() -> list[Rule[Any]]:
    """Rules on the whole object, enforced by the API server only."""
    return [name_rule(KIND)]


class ResolvedModel(StatusModel):
    """The artifact the spec resolved to: what the pods are asked to serve (kept when a referenced training goes)."""

    uri: Annotated[
        str,
        Field(
            max_length=4096,
            description="The artifact version directory: s3://bucket/prefix, file:///path or pvc://<claim>/<path>.",
        ),
    ]
    version: Annotated[str, Field(max_length=128, description="The artifact version (the directory's name).")]
    variant: Annotated[Variant, Field(description="The variant the pods load.")]
    training: Annotated[
        str | None,
        Field(default=None, max_length=MAX_NAME_LENGTH, description="The DeepSeekTraining it came from, if any."),
    ]
    training_uid: Annotated[str | None, Field(default=None, max_length=64, description="That DeepSeekTraining's uid.")]


class DeepSeekInferenceStatus(StatusModel):
    """Observed state, written by the operator only."""

    phase: Annotated[
        InferencePhase | None, Field(default=None, description="Pending, Ready, NotReady, Stopped or Failed.")
    ]
    conditions: Conditions
    observed_generation: Annotated[
        int | None, Field(default=None, ge=0, description="The metadata.generation the status reflects.")
    ]
    url: Annotated[
        str | None,
        Field(default=None, max_length=2048, description="In-cluster URL of the Service, e.g. http://name.ns.svc."),
    ]
    replicas: Annotated[int, Field(default=0, ge=0, description="Model server pods that exist.")]
    ready_replicas: Annotated[int, Field(default=0, ge=0, description="Pods ready to serve the requested model.")]
    updated_replicas: Annotated[int, Field(default=0, ge=0, description="Pods running the current spec.")]
    selector: Annotated[
        str | None,
        Field(default=None, max_length=4096, description="Label selector of the pods (for the scale subresource)."),
    ]
    model_uri: Annotated[
        str | None, Field(default=None, max_length=4096, description="The artifact being served (resolved).")
    ]
    served_model_version: Annotated[
        str | None, Field(default=None, max_length=128, description="Artifact version the ready pods serve.")
    ]
    served_variant: Annotated[Variant | None, Field(default=None, description="The variant being served.")]
    resolved_model: Annotated[
        ResolvedModel | None,
        Field(
            default=None,
            description=(
                "The artifact the current spec resolved to (rolled out, or rolling out). Remembered, so that "
                "deleting the referenced DeepSeekTraining keeps the service running."
            ),
        ),
    ]
    last_update_time: Annotated[Time | None, Field(default=None, description="When the status last changed.")]


class DeepSeekInference(SpecModel):
    """A model server deployment with dynamic batching, autoscaling and monitoring."""

    api_version: Literal["deepseek.ai/v1alpha1"] = "deepseek.ai/v1alpha1"
    kind: Literal["DeepSeekInference"] = KIND
    metadata: ObjectMeta
    spec: DeepSeekInferenceSpec
    status: DeepSeekInferenceStatus | None = None

    @model_validator(mode="after")
    def _name(self) -> DeepSeekInference:
        message = check_name(KIND, self.metadata.name)
        if message:
            raise RuleViolation([(".metadata.name", message)])
        return self
