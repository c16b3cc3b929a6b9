"""Operator settings from the environment (set by the Helm chart), parsed once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


CONTROLLERS = frozenset({"training", "inference"})


def _controllers(value: str) -> frozenset[str]:
    chosen = frozenset(_split(value))
    unknown = chosen - CONTROLLERS
    if not chosen or unknown:
        raise ValueError(
            f"DEEPSEEK_CONTROLLERS={value!r}: expected a comma-separated list of {', '.join(sorted(CONTROLLERS))}"
        )
    return chosen


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
    # Address the metrics and liveness endpoints listen on (tests bind 127.0.0.1).
    listen_host: str = "0.0.0.0"
    # The operator's own namespace (downward API in the chart); the liveness heartbeat ConfigMap lives there
    # (or in the first watched namespace when the operator watches a list of namespaces without its own).
    namespace: str | None = None
    # Liveness: the operator touches a heartbeat ConfigMap every heartbeat_seconds and watches it; /healthz
    # fails once no watch event has arrived for liveness_stale_seconds (the watch streams have stalled).
    heartbeat_seconds: float = 10.0
    liveness_stale_seconds: float = 60.0
    # Reconciles of one kind that may talk to the API server at once (like controller-runtime's
    # MaxConcurrentReconciles): keeps a burst of thousands of resources from opening thousands of connections.
    max_concurrent_reconciles: int = 16
    # Which controllers reconcile (DEEPSEEK_CONTROLLERS="training,inference"): a serving-only or training-only
    # install runs one of them; tests of one controller keep the other from acting on resources they fake.
    controllers: frozenset[str] = CONTROLLERS

    def runs(self, controller: str) -> bool:
        return controller in self.controllers

    @property
    def heartbeat_namespace(self) -> str | None:
        if self.namespaces and (self.namespace is None or self.namespace not in self.namespaces):
            return self.namespaces[0]
        return self.namespace

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
            listen_host=e.get("DEEPSEEK_LISTEN_HOST", defaults.listen_host),
            resync_seconds=float(e.get("DEEPSEEK_RESYNC_SECONDS", defaults.resync_seconds)),
            namespace=e.get("POD_NAMESPACE") or None,
            heartbeat_seconds=float(e.get("DEEPSEEK_HEARTBEAT_SECONDS", defaults.heartbeat_seconds)),
            liveness_stale_seconds=float(e.get("DEEPSEEK_LIVENESS_STALE_SECONDS", defaults.liveness_stale_seconds)),
            max_concurrent_reconciles=int(
                e.get("DEEPSEEK_MAX_CONCURRENT_RECONCILES", defaults.max_concurrent_reconciles)
            ),
            controllers=_controllers(e.get("DEEPSEEK_CONTROLLERS", ",".join(sorted(defaults.controllers)))),
        )
