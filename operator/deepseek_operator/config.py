"""Operator settings from the environment (set by the Helm chart), parsed once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


@dataclass(frozen=True)
class OperatorConfig:
    # Namespaces to watch; empty means cluster-wide.
    namespaces: list[str] = field(default_factory=list)
    # Image the worker pods run unless a resource overrides it.
    worker_image: str = "ghcr.io/deepseek-operator/worker:0.1.0"
    worker_image_pull_policy: str = "IfNotPresent"
    metrics_port: int = 8080
    liveness_port: int = 8081
    # How often each resource is re-reconciled when nothing happens (drift, TTLs, deadlines).
    resync_seconds: float = 30.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorConfig:
        e = os.environ if env is None else env
        defaults = cls()
        return cls(
            namespaces=_split(e.get("DEEPSEEK_WATCH_NAMESPACES", "")),
            worker_image=e.get("DEEPSEEK_WORKER_IMAGE", defaults.worker_image),
            worker_image_pull_policy=e.get("DEEPSEEK_WORKER_IMAGE_PULL_POLICY", defaults.worker_image_pull_policy),
            metrics_port=int(e.get("DEEPSEEK_METRICS_PORT", defaults.metrics_port)),
            liveness_port=int(e.get("DEEPSEEK_LIVENESS_PORT", defaults.liveness_port)),
            resync_seconds=float(e.get("DEEPSEEK_RESYNC_SECONDS", defaults.resync_seconds)),
        )
