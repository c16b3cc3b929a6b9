"""The operator's Prometheus metrics (served on its /metrics port)."""

from __future__ import annotations

import contextlib

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

HEARTBEAT_AGE = Gauge(
    "deepseek_operator_watch_heartbeat_age_seconds",
    "Seconds since the operator last saw its heartbeat ConfigMap through a watch (liveness fails when too old).",
)


# Per-training gauges from the workers' progress reports, so alerts can spot a stalled or failing training
# without scraping worker pods (worker-side metrics are deepseek_training_*; these carry namespace/name).
_TRAINING_LABELS = ["namespace", "name"]
TRAINING_PROGRESS = Gauge(
    "deepseek_operator_training_progress_ratio",
    "Share of the current stage's steps done (0-1), from the newest progress report.",
    _TRAINING_LABELS,
)
TRAINING_LOSS = Gauge(
    "deepseek_operator_training_loss", "Training loss in the newest progress report.", _TRAINING_LABELS
)
TRAINING_EVAL = Gauge(
    "deepseek_operator_training_eval_metric",
    "Newest evaluation result reported by the worker, by metric (accuracy or perplexity).",
    [*_TRAINING_LABELS, "metric"],
)
TRAINING_ETA = Gauge(
    "deepseek_operator_training_eta_seconds", "Worker's estimate of the seconds left in training.", _TRAINING_LABELS
)
TRAINING_LAST_PROGRESS = Gauge(
    "deepseek_operator_training_last_progress_timestamp_seconds",
    "Unix time of the newest progress report (alert when it stops moving while the phase is Running).",
    _TRAINING_LABELS,
)
TRAINING_RESTARTS = Gauge(
    "deepseek_operator_training_restarts", "Failed attempts retried so far (status.restarts).", _TRAINING_LABELS
)
TRAINING_PHASE = Gauge(
    "deepseek_operator_training_phase",
    "1 for the training's current phase, 0 for the others.",
    [*_TRAINING_LABELS, "phase"],
)
TRAINING_PHASES = ("Pending", "Running", "Quantizing", "Succeeded", "Failed", "Suspended")
_PER_TRAINING = (TRAINING_PROGRESS, TRAINING_LOSS, TRAINING_ETA, TRAINING_LAST_PROGRESS, TRAINING_RESTARTS)


def forget_training(namespace: str, name: str) -> None:
    """Drop a deleted training's series (a gauge for a resource that no longer exists would lie)."""
    for gauge in _PER_TRAINING:
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)
    for phase in TRAINING_PHASES:
        with contextlib.suppress(KeyError):
            TRAINING_PHASE.remove(namespace, name, phase)
    for metric in ("accuracy", "perplexity"):
        with contextlib.suppress(KeyError):
            TRAINING_EVAL.remove(namespace, name, metric)
    PHASES.forget("DeepSeekTraining", namespace, name)
