"""DeepSeekTraining controller: thin kopf handlers around builders.training and status.training.

One long-lived daemon per resource loops {reconcile; sleep until woken or the resync interval}. Children
(Jobs, Pods, ConfigMaps, Services, ServiceAccounts, Roles, RoleBindings labelled `deepseek.ai/training`) are
summarised into kopf indexes, which kopf fills before any daemon starts, so a restarted operator sees what
exists and creates nothing twice; their watch events only wake the owner's daemon. The reconcile itself reads
indexes, not the API, so an idle training costs no API call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import kopf

from deepseek_operator import k8s, metrics, naming
from deepseek_operator.api import ApiSpecError, DeepSeekTraining, parse_training
from deepseek_operator.builders import training as build
from deepseek_operator.config import OperatorConfig
from deepseek_operator.status import training as tstatus

KIND = naming.TRAINING_KIND
_OWNED = {naming.LABEL_TRAINING: kopf.PRESENT}
_ERROR_BACKOFF_SECONDS = 5.0
# How long a child we applied counts as existing before the watch shows it (indexes lag our own writes).
_RECENT_SECONDS = 15.0
_DEBOUNCE_SECONDS = 0.1
# Every this many idle resyncs a resource is reconciled even though nothing it reads changed (drift repair).
_FULL_RESYNC_EVERY = 10
Key = tuple[str, str]
ChildKey = tuple[str, str]


@dataclass
class TrainingState:
    """Operator-wide bookkeeping shared by the handlers (through kopf's memo)."""

    wakers: dict[Key, asyncio.Event] = field(default_factory=dict)
    # The status we last wrote and the resourceVersion it replaced: until the watch delivers our own write,
    # the live body is older than what we know, and must not be taken for the truth.
    written: dict[Key, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    # Children applied moments ago, until their watch events arrive: without this, a reconcile woken by the
    # first child's event would see the others missing and apply them (or announce a Job) a second time.
    recent: dict[Key, dict[ChildKey, tuple[dict[str, Any], float]]] = field(default_factory=dict)
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(16))

    def applied(self, key: Key, manifest: dict[str, Any]) -> None:
        child = (manifest["kind"], manifest["metadata"]["name"])
        self.recent.setdefault(key, {})[child] = (manifest, time.monotonic())

    def forget(self, key: Key, child: ChildKey) -> None:
        self.recent.get(key, {}).pop(child, None)

    def wake(self, key: Key) -> None:
        event = self.wakers.get(key)
        if event is not None:
            event.set()


@kopf.on.startup()
async def _init(memo: kopf.Memo, **_: Any) -> None:
    config: OperatorConfig = memo.get("config") or OperatorConfig()
    memo.trainings = TrainingState(slots=asyncio.Semaphore(max(1, config.max_concurrent_reconciles)))


# ---------------------------------------------------------------------------------------------------------
# Children: indexes (what exists) and wake-ups (something changed)


def _key(namespace: str | None, labels: Mapping[str, str]) -> Key:
    return (namespace or "", labels[naming.LABEL_TRAINING])


def _seen(memo: Any, namespace: str | None, labels: Mapping[str, str]) -> Key:
    """A child changed: wake its owner's daemon. Done inside the index handlers (kopf calls them for every
    event but deletions) to spare a second handler invocation per event, which is most of kopf's cost."""
    key = _key(namespace, labels)
    state: TrainingState | None = getattr(memo, "trainings", None)
    if state is not None:
        state.wake(key)
    return key


@kopf.index("batch", "v1", "jobs", labels=_OWNED)
async def training_jobs(namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: Any, **_: Any) -> Any:
    return {_seen(memo, namespace, labels): tstatus.job_view(body)}


@kopf.index("v1", "pods", labels=_OWNED)
async def training_pods(namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: Any, **_: Any) -> Any:
    return {_seen(memo, namespace, labels): tstatus.pod_view(body)}


@kopf.index("v1", "configmaps", labels=_OWNED)
async def training_configmaps(namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: Any, **_: Any) -> Any:
    report = tstatus.progress_report(body) if labels.get(naming.LABEL_COMPONENT) == "progress" else None
    return {_seen(memo, namespace, labels): (tstatus.child_view(body), report)}


@kopf.index("v1", "services", labels=_OWNED, id="training_services")
@kopf.index("v1", "serviceaccounts", labels=_OWNED, id="training_service_accounts")
@kopf.index("rbac.authorization.k8s.io", "v1", "roles", labels=_OWNED, id="training_roles")
@kopf.index("rbac.authorization.k8s.io", "v1", "rolebindings", labels=_OWNED, id="training_role_bindings")
async def _training_children(namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: Any, **_: Any) -> Any:
    return {_seen(memo, namespace, labels): tstatus.child_view(body)}


_CHILD_INDEXES = ("training_services", "training_service_accounts", "training_roles", "training_role_bindings")
_ALL_INDEXES = ("training_jobs", "training_pods", "training_configmaps", *_CHILD_INDEXES)


def _deleted(type: str, **_: Any) -> bool:
    return type == "DELETED"


@kopf.on.event("batch", "v1", "jobs", labels=_OWNED, when=_deleted, id="deleted_job")
@kopf.on.event("v1", "pods", labels=_OWNED, when=_deleted, id="deleted_pod")
@kopf.on.event("v1", "configmaps", labels=_OWNED, when=_deleted, id="deleted_configmap")
@kopf.on.event("v1", "services", labels=_OWNED, when=_deleted, id="deleted_service")
@kopf.on.event("v1", "serviceaccounts", labels=_OWNED, when=_deleted, id="deleted_service_account")
@kopf.on.event("rbac.authorization.k8s.io", "v1", "roles", labels=_OWNED, when=_deleted, id="deleted_role")
@kopf.on.event(
    "rbac.authorization.k8s.io", "v1", "rolebindings", labels=_OWNED, when=_deleted, id="deleted_role_binding"
)
async def _child_deleted(namespace: str | None, labels: kopf.Labels, memo: Any, **_: Any) -> None:
    _seen(memo, namespace, labels)


@kopf.on.event(naming.GROUP, naming.VERSION, naming.TRAINING_PLURAL)
async def _training_changed(namespace: str | None, name: str, type: str, memo: Any, **_: Any) -> None:
    key = (namespace or "", name)
    if type == "DELETED":
        metrics.forget_training(*key)
        memo.trainings.written.pop(key, None)
        memo.trainings.recent.pop(key, None)
    memo.trainings.wake(key)


# ---------------------------------------------------------------------------------------------------------
# The reconcile loop


def _enabled(memo: Any, **_: Any) -> bool:
    config: OperatorConfig = getattr(memo, "config", None) or OperatorConfig()
    return config.runs("training")


@kopf.daemon(naming.GROUP, naming.VERSION, naming.TRAINING_PLURAL, cancellation_timeout=10.0, when=_enabled)
async def training_daemon(stopped: kopf.DaemonStopped, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    state: TrainingState = memo.trainings
    config: OperatorConfig = memo.config
    key: Key = (body.metadata.namespace or "", body.metadata.name or "")
    wake = asyncio.Event()
    state.wakers[key] = wake
    seen: tuple[Any, ...] | None = None
    idle_resyncs = 0
    due: float | None = None  # when the plan asked to look again (deadline, timeout, TTL)
    try:
        while not stopped:
            now_seen = _fingerprint(body, kwargs, key)
            timer_due = due is not None and time.monotonic() >= due
            # A periodic resync that finds nothing changed (same body, same child summaries) skips the work,
            # except every _FULL_RESYNC_EVERY-th one; wake-ups by events or by the plan's timer always run.
            if not wake.is_set() and not timer_due and now_seen == seen and idle_resyncs < _FULL_RESYNC_EVERY:
                idle_resyncs += 1
            else:
                idle_resyncs, seen = 0, now_seen
                async with state.slots:
                    wake.clear()
                    delay = await reconcile(body, kwargs, state, config)
                due = time.monotonic() + delay if delay is not None else None
            pause = config.resync_seconds if due is None else min(config.resync_seconds, due - time.monotonic())
            await _sleep(wake, stopped, max(pause, 0.0))
    finally:
        if state.wakers.get(key) is wake:
            del state.wakers[key]


def _fingerprint(body: kopf.Body, indexes: Mapping[str, Any], key: Key) -> tuple[Any, ...]:
    """Identity of everything a reconcile reads: the body's resourceVersion and the index entries (kopf stores a
    new summary object for every child event, so unchanged identities mean nothing happened)."""
    entries = tuple(id(v) for name in _ALL_INDEXES for v in indexes[name].get(key, []))
    return (body.metadata.get("resourceVersion"), entries)


async def _sleep(wake: asyncio.Event, stopped: kopf.DaemonStopped, seconds: float) -> None:
    waits = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        if wake.is_set() and not stopped:
            # Woken by a watch event: let the index take it in (the wake comes from inside the index handler)
            # and let a burst of events (a pod's status changes) settle into one reconcile.
            await asyncio.sleep(_DEBOUNCE_SECONDS)
    finally:
        for w in waits:
            w.cancel()


async def reconcile(
    body: kopf.Body, indexes: Mapping[str, Any], state: TrainingState, config: OperatorConfig
) -> float | None:
    """One level-based pass: parse, observe (indexes), plan (pure), execute. Returns seconds to the next pass."""
    if body.metadata.get("deletionTimestamp"):
        return None  # kopf stops the daemon; owner references take the children away
    started, result = time.monotonic(), "success"
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    log = logging.getLogger(f"deepseek_operator.training.{namespace}.{name}")
    try:
        raw = _current_body(body, state)
        try:
            training = parse_training(raw)
        except ApiSpecError as err:
            await _invalid(raw, err, state)
            return None
        observed = observe(indexes, (namespace, name), training, state)
        plan = tstatus.plan(training, observed, config, datetime.now(UTC))
        update_gauges(namespace, name, plan.status, observed)
        await execute(raw, plan, state)
        return plan.requeue_after
    except Exception as err:
        result = "error"
        log.exception("reconcile of %s %s/%s failed: %s", KIND, namespace, name, err)
        return _ERROR_BACKOFF_SECONDS
    finally:
        metrics.RECONCILES.labels(KIND, result).inc()
        metrics.RECONCILE_DURATION.labels(KIND).observe(time.monotonic() - started)


def _current_body(body: kopf.Body, state: TrainingState) -> dict[str, Any]:
    raw = {k: body[k] for k in body}
    key = (body.metadata.namespace or "", body.metadata.name or "")
    written = state.written.get(key)
    if written is not None:
        stale_rv, status = written
        if body.metadata.get("resourceVersion") == stale_rv:
            raw["status"] = status  # our own write has not come back through the watch yet
        else:
            del state.written[key]
    return raw


def observe(indexes: Mapping[str, Any], key: Key, training: DeepSeekTraining, state: TrainingState) -> tstatus.Observed:
    """The children of one training, from the indexes (plus what we applied a moment ago and the watch has
    not shown yet)."""
    progress_name = build.names(training.metadata.name).progress
    children: dict[tuple[str, str], str | None] = {}
    report = None
    for view, rep in indexes["training_configmaps"].get(key, []):
        children[(view.kind, view.name)] = view.hash
        if view.name == progress_name:
            report = rep
    for index in _CHILD_INDEXES:
        for view in indexes[index].get(key, []):
            children[(view.kind, view.name)] = view.hash
    jobs = list(indexes["training_jobs"].get(key, []))
    recent = state.recent.get(key, {})
    now = time.monotonic()
    for child, (manifest, when) in list(recent.items()):
        seen = child in children or any(j.name == child[1] for j in jobs if child[0] == "Job")
        if seen or now - when > _RECENT_SECONDS:
            del recent[child]
        elif child[0] == "Job":
            jobs.append(tstatus.job_view(manifest))
        else:
            children[child] = manifest["metadata"]["annotations"].get(build.ANNOTATION_HASH)
    return tstatus.Observed(
        jobs=jobs,
        pods=list(indexes["training_pods"].get(key, [])),
        children=children,
        report=report,
    )


async def execute(raw: Mapping[str, Any], plan: tstatus.Plan, state: TrainingState) -> None:
    """Carry out a plan: children first, then status, then Events (only for a status that was stored)."""
    meta = raw["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    key = (namespace, name)
    # Supporting children do not depend on each other (a RoleBinding may name a Role created a moment later).
    await asyncio.gather(*(k8s.apply(m) for m in plan.apply))
    for manifest in plan.apply:
        state.applied(key, manifest)
    for job_name, suspend in plan.suspend_jobs:
        await k8s.merge_patch("Job", job_name, namespace, {"spec": {"suspend": suspend}})
    for job_name in plan.delete_jobs:
        # Foreground: the Job stays (terminating) until its pods are gone, so the next attempt never overlaps.
        await k8s.delete_named("Job", job_name, namespace, foreground=True)
        state.forget(key, ("Job", job_name))
    for manifest in plan.create_jobs:
        await k8s.apply(manifest)
        state.applied(key, manifest)
    await _write_status(raw, plan.status, state)
    for event in plan.events:
        await k8s.post_event(raw, event.type, event.reason, event.message)
    if plan.delete_self:
        await k8s.delete_named(KIND, name, namespace)


async def _write_status(raw: Mapping[str, Any], new: dict[str, Any], state: TrainingState) -> None:
    meta = raw["metadata"]
    patch = tstatus.status_patch(tstatus.canonical_status(raw.get("status")), new)
    if patch is None:
        return
    await k8s.patch_status(cast(Any, k8s.DeepSeekTraining.Status), meta["name"], meta["namespace"], patch)
    state.written[(meta["namespace"], meta["name"])] = (str(meta.get("resourceVersion")), new)


async def _invalid(raw: Mapping[str, Any], err: ApiSpecError, state: TrainingState) -> None:
    meta = raw["metadata"]
    old = tstatus.canonical_status(raw.get("status"))
    new = tstatus.invalid_spec_status(old, err.errors, int(meta.get("generation") or 0), datetime.now(UTC))
    if tstatus.status_patch(old, new) is None:
        return
    await _write_status(raw, new, state)
    failed = next(c for c in new["conditions"] if c["type"] == tstatus.FAILED)
    await k8s.post_event(raw, "Warning", "InvalidSpec", failed["message"])
    metrics.PHASES.set(KIND, meta["namespace"], meta["name"], "Failed")


def update_gauges(namespace: str, name: str, status: Mapping[str, Any], observed: tstatus.Observed) -> None:
    phase = str(status.get("phase") or "Pending")
    metrics.PHASES.set(KIND, namespace, name, phase)
    for p in metrics.TRAINING_PHASES:
        metrics.TRAINING_PHASE.labels(namespace, name, p).set(1.0 if p == phase else 0.0)
    metrics.TRAINING_RESTARTS.labels(namespace, name).set(float(status.get("restarts") or 0))
    progress = status.get("progress") or {}
    if "percent" in progress and progress.get("totalSteps"):
        metrics.TRAINING_PROGRESS.labels(namespace, name).set(progress["step"] / progress["totalSteps"])
    if isinstance(progress.get("loss"), float):
        metrics.TRAINING_LOSS.labels(namespace, name).set(progress["loss"])
    if isinstance(progress.get("etaSeconds"), float):
        metrics.TRAINING_ETA.labels(namespace, name).set(progress["etaSeconds"])
    metric = progress.get("evalMetric") or {}
    if metric.get("name") in ("accuracy", "perplexity"):
        metrics.TRAINING_EVAL.labels(namespace, name, metric["name"]).set(metric["value"])
    report = observed.report
    updated = tstatus.parse_time(report.updated_at) if report else None
    if updated is not None:
        metrics.TRAINING_LAST_PROGRESS.labels(namespace, name).set(updated.timestamp())
