"""The operator's Prometheus metrics (served on its /metrics port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "deepseek_operator_reconcile_total",
    "Reconciles by kind and result (success, error).",
    ["kind", "result"],
)
RECONCILE_DURATION = Histogram(
    "deepseek_operator_reconcile_duration_seconds",
    "Time one reconcile took, by kind.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
RESOURCES = Gauge(
    "deepseek_operator_resources",
    "Custom resources the operator manages, by kind and phase.",
    ["kind", "phase"],
)


class PhaseBook:
    """Remembers each resource's phase so the RESOURCES gauge counts every resource exactly once."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str, str], str] = {}

    def set(self, kind: str, namespace: str, name: str, phase: str) -> None:
        key = (kind, namespace, name)
        old = self._phases.get(key)
        if old == phase:
            return
        if old is not None:
            RESOURCES.labels(kind, old).dec()
        self._phases[key] = phase
        RESOURCES.labels(kind, phase).inc()

    def forget(self, kind: str, namespace: str, name: str) -> None:
        old = self._phases.pop((kind, namespace, name), None)
        if old is not None:
            RESOURCES.labels(kind, old).dec()


PHASES = PhaseBook()
