"""Pieces every child manifest shares: owner references, labels, pod security."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deepseek_operator import naming

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Owner:
    """The custom resource that owns a child: enough to set an owner reference and labels."""

    api_version: str
    kind: str
    name: str
    namespace: str
    uid: str
    generation: int = 0

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def labels(owner: Owner, component: str, owner_label: str) -> dict[str, str]:
    """Standard labels of a child; `owner_label` (deepseek.ai/training or /inference) selects an owner's children."""
    return {
        naming.LABEL_NAME: "deepseek-worker",
        naming.LABEL_INSTANCE: owner.name,
        naming.LABEL_COMPONENT: component,
        naming.LABEL_PART_OF: "deepseek-operator",
        naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
        owner_label: owner.name,
    }


def metadata(owner: Owner, name: str, component: str, owner_label: str, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, component, owner_label),
        "ownerReferences": [owner.reference()],
    }
    meta.update(extra)
    return meta


def restricted_pod_security() -> dict[str, Any]:
    """Pod-level security context that passes Pod Security `restricted`."""
    return {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_container_security() -> dict[str, Any]:
    """Container security context that passes Pod Security `restricted`."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
