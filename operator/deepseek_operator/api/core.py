"""Kubernetes-facing building blocks shared by both resources.

The pod-level fields (resources, scheduling, image, service account, env, pod metadata) follow the names and
meaning of the core/v1 Pod API so that a user can copy them from any manifest; only the subset a worker pod
needs is modelled, with the same bounds the API server applies to pods. Conditions follow metav1.Condition.
Every CEL rule here has its Python half (see rules.py), so the operator's parse refuses what the API server
refuses.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from deepseek_workers.runconfig import SpecModel
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

from deepseek_operator.naming import API_VERSION, GROUP, VERSION

from .rules import Rule, enforce, exactly_one, validations

CATEGORY = "deepseek"

# Children are named <name>-<suffix>; 48 characters leave 15 for suffixes within the 63-character limit of
# label values, Service names and pod hostnames, so child names stay readable without hashing.
MAX_NAME_LENGTH = 48
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# The API server's own pattern for resource.Quantity (applied to the string form).
QUANTITY = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
IMAGE_REF = r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
RESERVED_LABEL_PREFIXES = ("app.kubernetes.io/", "deepseek.ai/")
GPU_RESOURCE = "nvidia.com/gpu"


def _utc_seconds(value: datetime) -> str:
    # metav1.Time wire format: RFC 3339, UTC, whole seconds.
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


Time = Annotated[datetime, PlainSerializer(_utc_seconds, return_type=str, when_used="json")]


def _quantity(value: object) -> int | str:
    # One validator rather than an int|str union, so that errors name the field, not a union branch.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and len(value) <= 64 and re.fullmatch(QUANTITY, value):
        return value
    raise ValueError("must be a Kubernetes quantity such as 500m, 2 or 4Gi")


Quantity = Annotated[
    int | str,
    PlainValidator(_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string", "pattern": QUANTITY, "maxLength": 64}],
            "description": "A Kubernetes quantity, e.g. 500m, 2, 4Gi.",
        }
    ),
]

_SUFFIX = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}


def parse_quantity(value: int | str) -> Decimal:
    """The value of a Kubernetes quantity (``500m`` -> 0.5, ``1Gi`` -> 1073741824, ``1e3`` -> 1000)."""
    if isinstance(value, int):
        return Decimal(value)
    m = re.fullmatch(r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)", value)
    if not m:
        raise ValueError(f"not a quantity: {value!r}")
    number, suffix = Decimal(m.group(1)), m.group(2)
    if suffix in _SUFFIX:
        return number * _SUFFIX[suffix]
    if suffix[:1] in ("e", "E"):
        return number * Decimal(10) ** int(suffix[1:])
    raise ValueError(f"not a quantity: {value!r}")


def checked(rules: list[Rule[Any]]) -> AfterValidator:
    """The Python half of ``rules`` as a field validator (for maps and lists, which have no model)."""
    return AfterValidator(lambda value: enforce(value, rules))


class StatusModel(BaseModel):
    """Base of status models: camelCase; fields written by a newer operator are ignored, not fatal."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


def _qualified(key: str) -> bool:
    return len(key) <= 317 and re.fullmatch(QUALIFIED_NAME, key) is not None


def label_map_rules(what: str, *, reserved: bool) -> list[Rule[Any]]:
    """Rules on the keys of a label or annotation map (a schema pattern cannot constrain map keys)."""
    rules: list[Rule[Any]] = [
        Rule(
            cel=f"self.all(k, k.size() <= 317 && k.matches(r'{QUALIFIED_NAME}'))",
            message=(
                f"{what} keys must be qualified names: an optional DNS-subdomain prefix and '/', then at most 63 "
                "characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
            ),
            check=lambda m: all(_qualified(k) for k in m),
        )
    ]
    if reserved:
        rules.append(
            Rule(
                cel="self.all(k, " + " && ".join(f"!k.startsWith('{p}')" for p in RESERVED_LABEL_PREFIXES) + ")",
                message=f"{what} keys under {' and '.join(RESERVED_LABEL_PREFIXES)} are reserved for the operator",
                check=lambda m: not any(k.startswith(RESERVED_LABEL_PREFIXES) for k in m),
            )
        )
    return rules


LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]
_POD_LABEL_RULES = label_map_rules("label", reserved=True)
_NODE_SELECTOR_RULES = label_map_rules("nodeSelector", reserved=False)
_ANNOTATION_RULES = label_map_rules("annotation", reserved=False)
LabelMap = Annotated[
    dict[str, LabelValue],
    Field(max_length=64, json_schema_extra=validations(_POD_LABEL_RULES)),
    checked(_POD_LABEL_RULES),
]
NodeSelectorMap = Annotated[
    dict[str, LabelValue],
    Field(max_length=32, json_schema_extra=validations(_NODE_SELECTOR_RULES)),
    checked(_NODE_SELECTOR_RULES),
]
AnnotationMap = Annotated[
    dict[str, Annotated[str, Field(max_length=4096)]],
    Field(max_length=64, json_schema_extra=validations(_ANNOTATION_RULES)),
    checked(_ANNOTATION_RULES),
]


# ---------------------------------------------------------------------------------------------------------
# Conditions and metadata


class Condition(StatusModel):
    """One aspect of the resource's state (Kubernetes API conventions, like metav1.Condition)."""

    type: Annotated[
        str,
        Field(
            description="Condition type in CamelCase, e.g. Ready, Running, Succeeded, ModelReady.",
            max_length=316,
            pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        ),
    ]
    status: Annotated[Literal["True", "False", "Unknown"], Field(description="True, False or Unknown.")]
    reason: Annotated[
        str,
        Field(
            description="Why the condition last changed, as a CamelCase word (e.g. BackoffLimitExceeded).",
            min_length=1,
            max_length=1024,
            pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        ),
    ]
    message: Annotated[str, Field(default="", max_length=32768, description="Human-readable details.")]
    last_transition_time: Annotated[Time, Field(description="When the status last changed (RFC 3339, UTC).")]
    observed_generation: Annotated[
        int | None,
        Field(default=None, ge=0, description="The metadata.generation this condition was computed from."),
    ]


Conditions = Annotated[
    list[Condition],
    Field(
        default_factory=list,
        max_length=16,
        description="Current conditions, one per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    ),
]


class ObjectMeta(BaseModel):
    """The parts of metadata the operator reads; everything else is kept by the API server, not here."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    name: str
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None


# ---------------------------------------------------------------------------------------------------------
# Pod settings (subset of core/v1)


def _requests_within_limits(res: ResourceRequirements) -> bool:
    limits = res.limits or {}
    return all(
        k not in limits or parse_quantity(v) <= parse_quantity(limits[k]) for k, v in (res.requests or {}).items()
    )


_RESOURCE_RULES: list[Rule[ResourceRequirements]] = [
    Rule(
        cel=(
            "!has(self.requests) || !has(self.limits) || self.requests.all(k, !(k in self.limits) || "
            "quantity(string(self.requests[k])).compareTo(quantity(string(self.limits[k]))) <= 0)"
        ),
        message="each request must be less than or equal to the limit of the same resource",
        field_path=".requests",
        check=_requests_within_limits,
    )
]


class ResourceRequirements(SpecModel):
    """CPU and memory for each worker container (core/v1 ResourceRequirements)."""

    requests: Annotated[
        dict[str, Quantity] | None,
        Field(
            default=None,
            max_length=16,
            description="Minimum resources the scheduler reserves, e.g. {cpu: '2', memory: 8Gi}.",
        ),
    ]
    limits: Annotated[
        dict[str, Quantity] | None,
        Field(default=None, max_length=16, description="Maximum resources the container may use."),
    ]

    model_config = ConfigDict(json_schema_extra=validations(_RESOURCE_RULES))

    @model_validator(mode="after")
    def _rules(self) -> ResourceRequirements:
        return enforce(self, _RESOURCE_RULES)


class LocalObjectReference(SpecModel):
    """A reference to an object in the same namespace."""

    name: Annotated[
        str,
        Field(description="Name of the object.", min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN),
    ]


_TOLERATION_RULES: list[Rule[Toleration]] = [
    Rule(
        cel="self.operator != 'Exists' || !has(self.value) || self.value == ''",
        message="a toleration with operator Exists must not set a value",
        field_path=".value",
        check=lambda t: t.operator != "Exists" or not t.value,
    ),
    Rule(
        cel="has(self.key) && self.key != '' || self.operator == 'Exists'",
        message="a toleration without a key must use operator Exists",
        field_path=".operator",
        check=lambda t: bool(t.key) or t.operator == "Exists",
    ),
]


class Toleration(SpecModel):
    """Lets pods schedule onto nodes with a matching taint (core/v1 Toleration)."""

    key: Annotated[
        str | None,
        Field(default=None, max_length=317, description="Taint key to match; empty with operator Exists: all."),
    ]
    operator: Annotated[
        Literal["Exists", "Equal"],
        Field(default="Equal", description="Exists (any value) or Equal (value must match)."),
    ]
    value: Annotated[str | None, Field(default=None, max_length=63, description="Taint value to match (Equal).")]
    effect: Annotated[
        Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None,
        Field(default=None, description="Taint effect to match; all effects when empty."),
    ]
    toleration_seconds: Annotated[
        int | None,
        Field(default=None, description="For NoExecute: how long the pod stays bound after the taint appears."),
    ]

    model_config = ConfigDict(json_schema_extra=validations(_TOLERATION_RULES))

    @model_validator(mode="after")
    def _rules(self) -> Toleration:
        return enforce(self, _TOLERATION_RULES)


class LabelSelectorRequirement(SpecModel):
    """A label-selector term: key, operator and values."""

    key: Annotated[str, Field(min_length=1, max_length=317, description="Label key.")]
    operator: Annotated[Literal["In", "NotIn", "Exists", "DoesNotExist"], Field(description="How to match.")]
    values: Annotated[
        list[Annotated[str, Field(max_length=63)]] | None,
        Field(default=None, max_length=64, description="Values for In/NotIn; empty for Exists/DoesNotExist."),
    ]


class LabelSelector(SpecModel):
    """Selects objects by labels (metav1.LabelSelector)."""

    match_labels: Annotated[
        dict[str, Annotated[str, Field(max_length=63)]] | None,
        Field(default=None, max_length=32, description="Labels that must all match."),
    ]
    match_expressions: Annotated[
        list[LabelSelectorRequirement] | None,
        Field(default=None, max_length=16, description="Requirements that must all hold."),
    ]


class NodeSelectorRequirement(SpecModel):
    """A node-selector term: key, operator and values."""

    key: Annotated[str, Field(min_length=1, max_length=317, description="Node label key.")]
    operator: Annotated[
        Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"], Field(description="How to match.")
    ]
    values: Annotated[
        list[Annotated[str, Field(max_length=63)]] | None,
        Field(default=None, max_length=64, description="Values to compare with."),
    ]


class NodeSelectorTerm(SpecModel):
    """Node requirements that must all hold."""

    match_expressions: Annotated[
        list[NodeSelectorRequirement] | None,
        Field(default=None, max_length=16, description="Requirements on node labels."),
    ]
    match_fields: Annotated[
        list[NodeSelectorRequirement] | None,
        Field(default=None, max_length=16, description="Requirements on node fields (metadata.name)."),
    ]


class NodeSelector(SpecModel):
    """A node matches when any of the terms matches."""

    node_selector_terms: Annotated[
        list[NodeSelectorTerm], Field(min_length=1, max_length=16, description="Terms, ORed.")
    ]


class PreferredSchedulingTerm(SpecModel):
    """A weighted node preference."""

    weight: Annotated[int, Field(ge=1, le=100, description="Weight in the scheduler's score (1-100).")]
    preference: Annotated[NodeSelectorTerm, Field(description="The node term to prefer.")]


class NodeAffinity(SpecModel):
    """Constraints on the nodes pods may use."""

    required_during_scheduling_ignored_during_execution: Annotated[
        NodeSelector | None, Field(default=None, description="Nodes that must match.")
    ]
    preferred_during_scheduling_ignored_during_execution: Annotated[
        list[PreferredSchedulingTerm] | None,
        Field(default=None, max_length=16, description="Nodes to prefer."),
    ]


class PodAffinityTerm(SpecModel):
    """Pods (by labels) that must or must not run in the same topology domain."""

    label_selector: Annotated[LabelSelector | None, Field(default=None, description="Pods to match.")]
    namespaces: Annotated[
        list[Annotated[str, Field(max_length=63)]] | None,
        Field(default=None, max_length=16, description="Namespaces to look in; the pod's own when empty."),
    ]
    topology_key: Annotated[
        str,
        Field(
            min_length=1, max_length=317, description="Node label that defines the domain, e.g. kubernetes.io/hostname."
        ),
    ]


class WeightedPodAffinityTerm(SpecModel):
    """A weighted pod (anti-)affinity preference."""

    weight: Annotated[int, Field(ge=1, le=100, description="Weight in the scheduler's score (1-100).")]
    pod_affinity_term: Annotated[PodAffinityTerm, Field(description="The term.")]


class PodAffinity(SpecModel):
    """Co-locate with matching pods."""

    required_during_scheduling_ignored_during_execution: Annotated[
        list[PodAffinityTerm] | None, Field(default=None, max_length=16, description="Terms that must hold.")
    ]
    preferred_during_scheduling_ignored_during_execution: Annotated[
        list[WeightedPodAffinityTerm] | None, Field(default=None, max_length=16, description="Terms to prefer.")
    ]


class Affinity(SpecModel):
    """Scheduling constraints (core/v1 Affinity)."""

    node_affinity: Annotated[NodeAffinity | None, Field(default=None, description="Node affinity.")]
    pod_affinity: Annotated[PodAffinity | None, Field(default=None, description="Pod affinity.")]
    pod_anti_affinity: Annotated[
        PodAffinity | None, Field(default=None, description="Pod anti-affinity (spread away from matching pods).")
    ]


class KeySelector(SpecModel):
    """A key of a Secret or ConfigMap in the same namespace."""

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN, description="Object name.")]
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="The key.")]
    optional: Annotated[bool | None, Field(default=None, description="Start even if it is missing.")]


_ENV_SOURCE_RULES: list[Rule[EnvVarSource]] = [
    Rule(
        cel=exactly_one(["secretKeyRef", "configMapKeyRef"]),
        message="set exactly one of secretKeyRef or configMapKeyRef",
        check=lambda s: (s.secret_key_ref is None) != (s.config_map_key_ref is None),
    )
]


class EnvVarSource(SpecModel):
    """Where an environment variable's value comes from: exactly one of secretKeyRef or configMapKeyRef."""

    secret_key_ref: Annotated[KeySelector | None, Field(default=None, description="A key of a Secret.")]
    config_map_key_ref: Annotated[KeySelector | None, Field(default=None, description="A key of a ConfigMap.")]

    model_config = ConfigDict(json_schema_extra=validations(_ENV_SOURCE_RULES))

    @model_validator(mode="after")
    def _rules(self) -> EnvVarSource:
        return enforce(self, _ENV_SOURCE_RULES)


_ENV_RULES: list[Rule[EnvVar]] = [
    Rule(
        cel="!(has(self.value) && has(self.valueFrom))",
        message="set value or valueFrom, not both",
        check=lambda e: e.value is None or e.value_from is None,
    )
]


class EnvVar(SpecModel):
    """An environment variable for the worker container, e.g. object-store credentials from a Secret."""

    name: Annotated[str, Field(min_length=1, max_length=256, pattern=ENV_NAME, description="Variable name.")]
    value: Annotated[str | None, Field(default=None, max_length=32768, description="A literal value.")]
    value_from: Annotated[
        EnvVarSource | None, Field(default=None, description="A value read from a Secret or ConfigMap.")
    ]

    model_config = ConfigDict(json_schema_extra=validations(_ENV_RULES))

    @model_validator(mode="after")
    def _rules(self) -> EnvVar:
        return enforce(self, _ENV_RULES)


class NamedOptionalRef(SpecModel):
    """A Secret or ConfigMap in the same namespace."""

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN, description="Object name.")]
    optional: Annotated[bool | None, Field(default=None, description="Start even if it is missing.")]


_ENV_FROM_RULES: list[Rule[EnvFromSource]] = [
    Rule(
        cel=exactly_one(["secretRef", "configMapRef"]),
        message="set exactly one of secretRef or configMapRef",
        check=lambda s: (s.secret_ref is None) != (s.config_map_ref is None),
    )
]


class EnvFromSource(SpecModel):
    """Every key of a Secret or ConfigMap as environment variables: exactly one of secretRef or configMapRef."""

    prefix: Annotated[str | None, Field(default=None, max_length=256, description="Prepended to every key.")]
    secret_ref: Annotated[NamedOptionalRef | None, Field(default=None, description="The Secret.")]
    config_map_ref: Annotated[NamedOptionalRef | None, Field(default=None, description="The ConfigMap.")]

    model_config = ConfigDict(json_schema_extra=validations(_ENV_FROM_RULES))

    @model_validator(mode="after")
    def _rules(self) -> EnvFromSource:
        return enforce(self, _ENV_FROM_RULES)


class PodMetadata(SpecModel):
    """Labels and annotations copied onto every worker pod (e.g. for cost allocation or a service mesh)."""

    labels: Annotated[
        LabelMap | None,
        Field(default=None, description="Pod labels; keys under app.kubernetes.io/ and deepseek.ai/ are reserved."),
    ]
    annotations: Annotated[AnnotationMap | None, Field(default=None, description="Pod annotations.")]


class WorkloadSpec(SpecModel):
    """Pod settings shared by both kinds; they apply to every worker pod of the resource."""

    resources: Annotated[
        ResourceRequirements | None,
        Field(
            default=None,
            description=(
                "CPU and memory per worker pod. GPUs are not set here but with distributed.gpusPerWorker "
                "(DeepSeekTraining) or gpusPerReplica (DeepSeekInference)."
            ),
        ),
    ]
    node_selector: Annotated[
        NodeSelectorMap | None, Field(default=None, description="Node labels a worker pod's node must have.")
    ]
    tolerations: Annotated[
        list[Toleration] | None,
        Field(default=None, max_length=32, description="Taints the worker pods tolerate (e.g. GPU node taints)."),
    ]
    affinity: Annotated[Affinity | None, Field(default=None, description="Node and pod (anti-)affinity.")]
    priority_class_name: Annotated[
        str | None,
        Field(
            default=None,
            max_length=253,
            pattern=DNS1123_SUBDOMAIN,
            description="PriorityClass of the worker pods (preemption order).",
        ),
    ]
    image: Annotated[
        str | None,
        Field(
            default=None,
            max_length=512,
            pattern=IMAGE_REF,
            description="Worker image override; the operator's configured worker image when omitted.",
        ),
    ]
    image_pull_policy: Annotated[
        Literal["Always", "IfNotPresent", "Never"] | None,
        Field(default=None, description="Always, IfNotPresent or Never; Kubernetes' default when omitted."),
    ]
    image_pull_secrets: Annotated[
        list[LocalObjectReference] | None,
        Field(
            default=None,
            max_length=16,
            description="Secrets with registry credentials for pulling the image.",
            json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        ),
    ]
    service_account_name: Annotated[
        str | None,
        Field(
            default=None,
            max_length=253,
            pattern=DNS1123_SUBDOMAIN,
            description="ServiceAccount of the worker pods; the operator creates a least-privilege one when omitted.",
        ),
    ]
    pod_metadata: Annotated[
        PodMetadata | None, Field(default=None, description="Labels and annotations added to every worker pod.")
    ]
    env: Annotated[
        list[EnvVar] | None,
        Field(
            default=None,
            max_length=64,
            description="Extra environment variables for the worker container.",
            json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        ),
    ]
    env_from: Annotated[
        list[EnvFromSource] | None,
        Field(
            default=None, max_length=16, description="Secrets or ConfigMaps whose keys become environment variables."
        ),
    ]


def no_gpu_in_resources(gpu_field: str) -> Rule[Any]:
    """CEL + Python: GPUs are counted by the kind's own field so the operator can size torchrun and limits."""

    def check(spec: Any) -> bool:
        res: ResourceRequirements | None = spec.resources
        return res is None or all(GPU_RESOURCE not in (m or {}) for m in (res.requests, res.limits))

    return Rule(
        cel=(
            f"!has(self.resources) || (!('{GPU_RESOURCE}' in self.resources.?requests.orValue({{}})) && "
            f"!('{GPU_RESOURCE}' in self.resources.?limits.orValue({{}})))"
        ),
        message=f"do not set {GPU_RESOURCE} in resources: request GPUs with {gpu_field}",
        field_path=".resources",
        check=check,
    )


def name_rule(kind: str) -> Rule[Any]:
    """Server-side rule on metadata.name: children are named after it with suffixes."""
    return Rule(
        cel=f"self.metadata.name.size() <= {MAX_NAME_LENGTH} && self.metadata.name.matches(r'{DNS1035_LABEL}')",
        message=(
            f"metadata.name of a {kind} must be at most {MAX_NAME_LENGTH} characters of lowercase letters, digits "
            "and '-', starting with a letter and ending with a letter or digit (it names the worker pods, "
            "Services and ConfigMaps)"
        ),
        field_path=".metadata.name",
        server_only=True,
    )


def check_name(kind: str, name: str) -> str | None:
    """Python half of :func:`name_rule`; returns the message when the name is invalid."""
    if len(name) <= MAX_NAME_LENGTH and re.fullmatch(DNS1035_LABEL, name):
        return None
    return name_rule(kind).message


__all__ = [
    "API_VERSION",
    "CATEGORY",
    "GROUP",
    "VERSION",
    "Affinity",
    "Condition",
    "EnvFromSource",
    "EnvVar",
    "LocalObjectReference",
    "ObjectMeta",
    "PodMetadata",
    "ResourceRequirements",
    "StatusModel",
    "Time",
    "Toleration",
    "WorkloadSpec",
]
