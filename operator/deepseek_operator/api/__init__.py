"""The API layer: typed models of DeepSeekTraining and DeepSeekInference (spec and status).

These models are the single source of the CRDs (``python -m deepseek_operator.api.crdgen``) and what the
operator parses resources with. The same rules hold at both levels: the API server checks the generated
schema and CEL rules at apply time; :func:`parse_training` / :func:`parse_inference` check the same rules
(except those that need the stored object, e.g. immutability) and name every bad field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .core import API_VERSION, CATEGORY, GROUP, VERSION, Condition, ObjectMeta
from .inference import (
    AutoscalingSpec,
    DeepSeekInference,
    DeepSeekInferenceSpec,
    DeepSeekInferenceStatus,
    InferenceModelSpec,
    InferencePhase,
    MonitoringSpec,
    ResolvedModel,
    ServiceSpec,
    TrainingRef,
)
from .rules import RuleViolation
from .training import (
    DeepSeekTraining,
    DeepSeekTrainingSpec,
    DeepSeekTrainingStatus,
    DistributedSpec,
    RunPolicy,
    TrainingArtifacts,
    TrainingPhase,
    TrainingProgress,
    immutable_fields,
)

M = TypeVar("M", bound=BaseModel)


class ApiSpecError(ValueError):
    """A resource does not satisfy the API; ``errors`` lists (field path, message) pairs."""

    def __init__(self, kind: str, errors: list[tuple[str, str]]) -> None:
        self.kind = kind
        self.errors = errors
        super().__init__(f"invalid {kind}: " + "; ".join(f"{path}: {msg}" for path, msg in errors))


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def format_errors(err: ValidationError) -> list[tuple[str, str]]:
    """(field path, message) for each problem, with cross-field rule violations placed on the field they name."""
    found: list[tuple[str, str]] = []
    for e in err.errors():
        loc = tuple(e["loc"])
        error = (e.get("ctx") or {}).get("error")
        if isinstance(error, RuleViolation):
            for rel, message in error.violations:
                extra = tuple(p for p in rel.split(".") if p)
                found.append((_path(loc + extra), message))
            continue
        message = e["msg"].removeprefix("Value error, ")
        found.append((_path(loc), message))
    return found


def _parse(model: type[M], kind: str, body: Mapping[str, Any]) -> M:
    try:
        return model.model_validate(dict(body))
    except ValidationError as err:
        raise ApiSpecError(kind, format_errors(err)) from None


def parse_training(body: Mapping[str, Any]) -> DeepSeekTraining:
    """Parse a DeepSeekTraining (e.g. a kopf body); raises ApiSpecError naming every bad field."""
    return _parse(DeepSeekTraining, "DeepSeekTraining", body)


def parse_inference(body: Mapping[str, Any]) -> DeepSeekInference:
    """Parse a DeepSeekInference (e.g. a kopf body); raises ApiSpecError naming every bad field."""
    return _parse(DeepSeekInference, "DeepSeekInference", body)


__all__ = [
    "API_VERSION",
    "CATEGORY",
    "GROUP",
    "VERSION",
    "ApiSpecError",
    "AutoscalingSpec",
    "Condition",
    "DeepSeekInference",
    "DeepSeekInferenceSpec",
    "DeepSeekInferenceStatus",
    "DeepSeekTraining",
    "DeepSeekTrainingSpec",
    "DeepSeekTrainingStatus",
    "DistributedSpec",
    "InferenceModelSpec",
    "InferencePhase",
    "MonitoringSpec",
    "ObjectMeta",
    "ResolvedModel",
    "RunPolicy",
    "ServiceSpec",
    "TrainingArtifacts",
    "TrainingPhase",
    "TrainingProgress",
    "TrainingRef",
    "format_errors",
    "immutable_fields",
    "parse_inference",
    "parse_training",
]
