"""Names, labels and annotation keys shared by the operator's layers (pure constants and functions)."""

from __future__ import annotations

import hashlib
from typing import Final

GROUP: Final = "deepseek.ai"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
TRAINING_KIND: Final = "DeepSeekTraining"
INFERENCE_KIND: Final = "DeepSeekInference"
TRAINING_PLURAL: Final = "deepseektrainings"
INFERENCE_PLURAL: Final = "deepseekinferences"

FIELD_MANAGER: Final = "deepseek-operator"
FINALIZER: Final = "deepseek.ai/finalizer"
ANNOTATION_PREFIX: Final = "deepseek.ai"  # kopf's bookkeeping lives under this prefix, never kopf.zalando.org

# app.kubernetes.io/* labels on every child, plus our own selector labels.
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_TRAINING: Final = "deepseek.ai/training"
LABEL_INFERENCE: Final = "deepseek.ai/inference"
MANAGED_BY: Final = "deepseek-operator"

MAX_NAME_LENGTH: Final = 63


def child_name(owner: str, suffix: str, max_length: int = MAX_NAME_LENGTH) -> str:
    """Deterministic child name `<owner>-<suffix>`, shortened with a stable hash when too long.

    Deterministic so that a restarted operator finds what it made; within `max_length` so that it is a valid
    label value and DNS label (Services, and Job names whose pods derive labels from them).
    """
    name = f"{owner}-{suffix}"
    if len(name) <= max_length:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    keep = max_length - len(suffix) - len(digest) - 2
    return f"{owner[:keep].rstrip('-')}-{digest}-{suffix}"
