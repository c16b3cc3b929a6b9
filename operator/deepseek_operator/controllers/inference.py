"""kopf glue for DeepSeekInference: one level-based reconcile loop per resource.

Each DeepSeekInference gets a daemon that reconciles (resolve the model, apply the children, compute the status)
and then sleeps until something relevant changes or the resync interval passes. What wakes it:

- its own spec (a generation not yet observed: `kubectl apply`, `kubectl scale`, the HPA),
- its Deployment and pods (labelled deepseek.ai/inference; watched with a server-side label selector),
- the DeepSeekTraining it references (created, progressing, succeeded, deleted),
- the ServiceMonitor CRD appearing or going away.

Observed state comes from kopf indexes (no API reads per reconcile); children are applied only when the
desired plan changed, a child went missing, or every DRIFT_RESYNCS resyncs (to repair manual edits).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import kopf
from lightkube import ApiError
from pydantic import ValidationError

from deepseek_operator import k8s, naming
from deepseek_operator.api import ApiSpecError, DeepSeekInference, ResolvedModel, parse_inference
from deepseek_operator.builders import inference as builders
from deepseek_operator.builders.common import Owner
from deepseek_operator.config import OperatorConfig
from deepseek_operator.metrics import PHASES, RECONCILE_DURATION, RECONCILES
from deepseek_operator.status import inference as st
from deepseek_operator.status.conditions import now_rfc3339, set_condition

log = logging.getLogger(__name__)

KIND: Final = naming.INFERENCE_KIND
INFERENCES: Final = (naming.GROUP, naming.VERSION, naming.INFERENCE_PLURAL)
TRAININGS: Final = (naming.GROUP, naming.VERSION, naming.TRAINING_PLURAL)
SERVICE_MONITOR_CRD: Final = "servicemonitors.monitoring.coreos.com"
CHILD_LABELS: Final = {naming.LABEL_INFERENCE: kopf.PRESENT}
DRIFT_RESYNCS: Final = 10  # re-apply unchanged children every this many resync intervals
API_PROBE_SECONDS: Final = 300.0  # re-check the ServiceMonitor API this often when no CRD event says otherwise


class InferenceRuntime:
    """Operator-wide state of the inference controller (kept on kopf's memo)."""

    def __init__(self) -> None:
        self.wakers: dict[tuple[str, str], asyncio.Event] = {}
        self.service_monitor_api: bool | None = None
        self._probed_at = 0.0
        self._from_watch = False

    def register(self, key: tuple[str, str]) -> asyncio.Event:
        return self.wakers.setdefault(key, asyncio.Event())

    def unregister(self, key: tuple[str, str]) -> None:
        self.wakers.pop(key, None)

    def wake(self, key: tuple[str, str]) -> None:
        event = self.wakers.get(key)
        if event is not None:
            event.set()

    def wake_all(self) -> None:
        for event in self.wakers.values():
            event.set()

    def service_monitor_crd(self, served: bool) -> None:
        changed = served != self.service_monitor_api
        self.service_monitor_api, self._from_watch = served, True
        if changed:
            self.wake_all()

    async def service_monitor_served(self, namespace: str) -> bool:
        """Whether monitoring.coreos.com/v1 ServiceMonitor is served: from the CRD watch, else a cached probe."""
        fresh = time.monotonic() - self._probed_at < API_PROBE_SECONDS
        if self.service_monitor_api is not None and (self._from_watch or fresh):
            return self.service_monitor_api
        try:
            served = await k8s.namespaced_api_served(k8s.ServiceMonitor, namespace)
        except ApiError as err:
            log.warning("cannot tell whether ServiceMonitors are served (%s): treating them as absent", err)
            served = False
        self.service_monitor_api, self._probed_at = served, time.monotonic()
        return served


def runtime(memo: Any) -> InferenceRuntime:
    rt = getattr(memo, "inference", None)
    if rt is None:
        rt = memo.inference = InferenceRuntime()
    assert isinstance(rt, InferenceRuntime)
    return rt


def _config(memo: Any) -> OperatorConfig:
    config = getattr(memo, "config", None)
    return config if isinstance(config, OperatorConfig) else OperatorConfig()


@kopf.on.startup()
def _startup(*, memo: Any, **_: Any) -> None:
    runtime(memo)


# ---------------------------------------------------------------------------------------------------------
# Indexes: observed state without API reads


@kopf.index(*TRAININGS)
def inference_trainings(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, st.TrainingView]:
    return {(namespace, name): st.TrainingView.from_body(body)}


@kopf.index(*INFERENCES)
def inferences_by_training(*, namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[Any, str] | None:
    ref = ((spec.get("model") or {}).get("trainingRef") or {}).get("name")
    return {(namespace, ref): name} if ref else None


def _owned(name: str, labels: Mapping[str, str]) -> bool:
    return name == builders.child_name(labels[naming.LABEL_INFERENCE])


@kopf.index("apps", "v1", "deployments", labels=CHILD_LABELS)
def inference_deployments(
    *, namespace: str | None, name: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Any, st.DeploymentView] | None:
    if not _owned(name, labels):
        return None
    return {(namespace, labels[naming.LABEL_INFERENCE]): st.DeploymentView.from_body(body)}


@kopf.index("v1", "pods", labels=CHILD_LABELS)
def inference_pods(*, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, st.PodView]:
    return {(namespace, labels[naming.LABEL_INFERENCE]): st.PodView.from_body(body)}


# ---------------------------------------------------------------------------------------------------------
# Wake-ups


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS)
@kopf.on.event("v1", "pods", labels=CHILD_LABELS)
def _child_changed(*, namespace: str | None, labels: kopf.Labels, memo: Any, **_: Any) -> None:
    runtime(memo).wake((str(namespace), labels[naming.LABEL_INFERENCE]))


@kopf.on.event(*TRAININGS)
def _training_changed(*, namespace: str | None, name: str, memo: Any, **kwargs: Any) -> None:
    rt, by_training = runtime(memo), kwargs["inferences_by_training"]
    for inference in by_training.get((namespace, name), []):
        rt.wake((str(namespace), inference))


@kopf.on.event(*INFERENCES)
def _inference_changed(*, namespace: str | None, name: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    # Our own status writes come back here too: only a generation not yet observed needs a reconcile.
    if body.metadata.get("generation") != (body.get("status") or {}).get("observedGeneration"):
        runtime(memo).wake((str(namespace), name))


@kopf.on.event(
    "apiextensions.k8s.io", "v1", "customresourcedefinitions", when=lambda name, **_: name == SERVICE_MONITOR_CRD
)
def _service_monitor_crd(*, type: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    conditions = (body.get("status") or {}).get("conditions") or []
    established = any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)
    deleting = body.metadata.get("deletionTimestamp") is not None
    runtime(memo).service_monitor_crd(type != "DELETED" and established and not deleting)


# ---------------------------------------------------------------------------------------------------------
# The reconcile loop


@dataclass
class _LoopState:
    """Per-resource memory of the daemon (lost on restart, which only costs one extra apply)."""

    applied: str = ""
    applied_at: float = 0.0
    deleted: set[builders.ChildRef] = field(default_factory=set)
    written: dict[str, Any] | None = None  # the status as last written (the watch may lag behind it)


def _enabled(memo: Any, **_: Any) -> bool:
    return _config(memo).runs("inference")


@kopf.daemon(*INFERENCES, cancellation_timeout=10.0, when=_enabled)
async def inference_daemon(
    *, name: str, namespace: str | None, body: kopf.Body, memo: Any, stopped: kopf.DaemonStopped, **kwargs: Any
) -> None:
    rt, config, key = runtime(memo), _config(memo), (str(namespace), name)
    indexes: Indexes = (kwargs["inference_trainings"], kwargs["inference_deployments"], kwargs["inference_pods"])
    wake, state = rt.register(key), _LoopState()
    stop = asyncio.ensure_future(stopped.wait())
    failures = 0
    try:
        while not stopped:
            wake.clear()
            try:
                await reconcile(body, config, rt, indexes, state)
                failures, delay = 0, config.resync_seconds
            except Exception:
                failures += 1
                delay = min(60.0, 2.0**failures)
                log.exception("reconcile of %s %s/%s failed; retrying in %.0f s", KIND, namespace, name, delay)
            waiter = asyncio.ensure_future(wake.wait())
            await asyncio.wait({waiter, stop}, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
    finally:
        stop.cancel()
        rt.unregister(key)
        PHASES.forget(KIND, key[0], name)


Indexes = tuple[kopf.Index[Any, st.TrainingView], kopf.Index[Any, st.DeploymentView], kopf.Index[Any, st.PodView]]


def _first(index: kopf.Index[Any, Any], key: tuple[str, str]) -> Any | None:
    return next(iter(index.get(key, [])), None)


def _remembered(status: Mapping[str, Any]) -> ResolvedModel | None:
    try:
        return ResolvedModel.model_validate(status["resolvedModel"]) if status.get("resolvedModel") else None
    except ValidationError:
        return None


async def reconcile(
    body: kopf.Body, config: OperatorConfig, rt: InferenceRuntime, indexes: Indexes, state: _LoopState
) -> None:
    started = time.monotonic()
    try:
        await _reconcile(body, config, rt, indexes, state)
    except Exception:
        RECONCILES.labels(KIND, "error").inc()
        raise
    else:
        RECONCILES.labels(KIND, "success").inc()
    finally:
        RECONCILE_DURATION.labels(KIND).observe(time.monotonic() - started)


async def _reconcile(
    body: kopf.Body, config: OperatorConfig, rt: InferenceRuntime, indexes: Indexes, state: _LoopState
) -> None:
    meta = body.metadata
    namespace, name, generation = str(meta.namespace), str(meta.name), int(meta.get("generation") or 0)
    previous: dict[str, Any] = state.written if state.written is not None else dict(body.get("status") or {})
    try:
        inf = parse_inference({k: v for k, v in body.items() if k != "status"})
    except ApiSpecError as err:
        PHASES.set(KIND, namespace, name, "Failed")
        await _write_status(body, previous, _invalid_status(previous, err, generation), state)
        return
    trainings, deployments, pods = indexes
    key = (namespace, name)
    ref = inf.spec.model.training_ref
    training = _first(trainings, (namespace, ref.name)) if ref is not None else None
    resolution = st.resolve_model(inf.spec, training, _remembered(previous))
    sm_api = await rt.service_monitor_served(namespace)
    owner = Owner(naming.API_VERSION, KIND, name, namespace, str(meta.uid), generation)
    plan = builders.build(inf, owner, resolution.model, config, service_monitor_api=sm_api)
    deployment: st.DeploymentView | None = _first(deployments, key)
    await _apply(plan, inf, namespace, state, config, missing=plan.config_hash is not None and deployment is None)
    observed = st.Observed(deployment, tuple(pods.get(key, [])), sm_api)
    result = st.compute_status(
        spec=inf.spec, generation=generation, previous=previous, resolution=resolution, plan=plan, observed=observed
    )
    PHASES.set(KIND, namespace, name, result.phase)
    await _write_status(body, previous, result, state)


async def _apply(
    plan: builders.InferencePlan,
    inf: DeepSeekInference,
    namespace: str,
    state: _LoopState,
    config: OperatorConfig,
    *,
    missing: bool,
) -> None:
    now = time.monotonic()
    due = now - state.applied_at > DRIFT_RESYNCS * config.resync_seconds
    # A child that should exist but is not observed (deleted by hand, or not yet seen): re-apply, not too often.
    gone = missing and now - state.applied_at > 2.0
    if plan.fingerprint == state.applied and not due and not gone:
        return
    await k8s.apply_all(list(plan.apply))
    applied = {builders.ChildRef(m["apiVersion"], m["kind"], m["metadata"]["name"]) for m in plan.apply}
    state.deleted -= applied
    for ref in plan.delete:
        if ref not in state.deleted:
            await k8s.delete_named(ref.kind, ref.name, namespace)
            state.deleted.add(ref)
    state.applied, state.applied_at = plan.fingerprint, now
    log.debug("applied %d children of %s %s/%s", len(plan.apply), KIND, namespace, inf.metadata.name)


def _invalid_status(previous: Mapping[str, Any], err: ApiSpecError, generation: int) -> st.StatusResult:
    message = "; ".join(f"{path}: {msg}" for path, msg in err.errors)
    conditions = [dict(c) for c in previous.get("conditions") or []]
    now = now_rfc3339()
    for type_ in (st.MODEL_READY, st.READY):
        conditions = set_condition(conditions, type_, "False", "InvalidSpec", message, generation, now)
    status = {**previous, "phase": "Failed", "conditions": conditions, "observedGeneration": generation}
    if st.essence(status) != st.essence(previous):
        status["lastUpdateTime"] = now
    return st.StatusResult(status, "Failed", st.transitions(previous.get("conditions") or [], conditions))


async def _write_status(
    body: kopf.Body, previous: Mapping[str, Any], result: st.StatusResult, state: _LoopState
) -> None:
    patch = st.status_patch(previous, result.status)
    if not patch or set(patch) == {"lastUpdateTime"}:
        state.written = dict(previous)
        return
    meta = body.metadata
    try:
        await k8s.patch_status(k8s.DeepSeekInference.Status, str(meta.name), str(meta.namespace), patch)
    except ApiError as err:
        if k8s.is_not_found(err):
            return  # deleted meanwhile
        raise
    state.written = dict(result.status)
    involved = {
        "apiVersion": naming.API_VERSION,
        "kind": KIND,
        "metadata": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid},
    }
    for event_type, reason, message in result.events:
        await k8s.post_event(involved, event_type, reason, message)


__all__ = ["InferenceRuntime", "inference_daemon", "reconcile", "runtime"]
