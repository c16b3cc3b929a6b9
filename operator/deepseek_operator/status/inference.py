"""Status of a DeepSeekInference (pure: spec + referenced training + observed children -> status).

Two steps:

- :func:`resolve_model`: which artifact to serve. A uri/pvc is served as given; a trainingRef once the
  training has Succeeded (its artifact version directory and default variant). The result is remembered in
  `status.resolvedModel`, so a training deleted later (or re-created and running again) does not stop the
  service: the artifact stays where it is, and the ModelReady condition says so.
- :func:`compute_status`: conditions, phase and counts from the Deployment and its pods, honestly: Ready only
  when every requested replica is ready with the requested model (the roll-out completed); reasons from the
  Deployment (ProgressDeadlineExceeded, FailedCreate) and the pods (Unschedulable, ImagePullBackOff,
  CrashLoopBackOff, OOMKilled, an artifact the server refused: exit code 66).

Condition types: Ready, ModelReady, Stopped (spec.replicas 0), ServiceMonitorReady.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from deepseek_workers.runconfig import EXIT_BAD_ARTIFACT, EXIT_BAD_CONFIG, Location, Variant
from pydantic import ValidationError

from deepseek_operator.api import DeepSeekInferenceSpec, DeepSeekTrainingStatus, ResolvedModel, TrainingArtifacts
from deepseek_operator.builders import inference as b
from deepseek_operator.status.conditions import ConditionStatus, get_condition, now_rfc3339, set_condition

READY: Final = "Ready"
MODEL_READY: Final = "ModelReady"
STOPPED: Final = "Stopped"
SERVICE_MONITOR_READY: Final = "ServiceMonitorReady"
CONDITION_TYPES: Final = (READY, MODEL_READY, STOPPED, SERVICE_MONITOR_READY)

# Reasons that say something is wrong (Warning events); every other transition is Normal.
WARNING_REASONS: Final = frozenset(
    {
        "InvalidSpec",
        "TrainingNotFound",
        "TrainingFailed",
        "TrainingDeleted",
        "ArtifactMissing",
        "ArtifactInvalid",
        "InvalidRunConfig",
        "Int8OverAccuracyBudget",
        "VariantUnavailable",
        "PreviousArtifact",
        "ProgressDeadlineExceeded",
        "FailedCreate",
        "Unschedulable",
        "ImagePullBackOff",
        "CreateContainerConfigError",
        "CrashLoopBackOff",
        "OOMKilled",
    }
)
# ModelReady=False reasons after which nothing can be served until the user or the training changes.
_FAILED_REASONS: Final = frozenset({"InvalidSpec", "TrainingNotFound", "TrainingFailed", "ArtifactMissing"})


# ---------------------------------------------------------------------------------------------------------
# Observed objects, reduced to what the status needs (these are what the operator keeps in its indexes)


@dataclass(frozen=True)
class TrainingView:
    name: str
    uid: str
    phase: str | None
    output_uri: str | None = None
    output_claim: str | None = None
    output_path: str = ""
    artifacts: TrainingArtifacts | None = None
    message: str = ""  # why it failed, or how far it got

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> TrainingView:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        raw = body.get("status") or {}
        try:
            status = DeepSeekTrainingStatus.model_validate(raw)
        except ValidationError:
            status = DeepSeekTrainingStatus()
        output_uri = output_claim = None
        output_path = ""
        try:
            out = Location.model_validate(spec.get("output") or {})
            if out.pvc is not None:
                output_claim, output_path = out.pvc.claim_name, out.pvc.path
            else:
                output_uri = out.uri
        except ValidationError:
            pass
        message = ""
        failed = next((c for c in status.conditions if c.type == "Failed" and c.status == "True"), None)
        if failed is not None:
            message = failed.message or failed.reason
        elif status.progress is not None and status.progress.total_steps:
            message = f"{status.progress.percent}% done"
        return cls(
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            phase=status.phase,
            output_uri=output_uri,
            output_claim=output_claim,
            output_path=output_path,
            artifacts=status.artifacts,
            message=message,
        )


@dataclass(frozen=True)
class DeploymentView:
    generation: int = 0
    observed_generation: int = 0
    spec_replicas: int = 0
    replicas: int = 0
    updated_replicas: int = 0
    ready_replicas: int = 0
    available_replicas: int = 0
    template_hash: str | None = None
    template_uri: str | None = None
    template_version: str | None = None
    template_variant: str | None = None
    conditions: tuple[tuple[str, str, str, str], ...] = ()  # (type, status, reason, message)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> DeploymentView:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        ann = ((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
        return cls(
            generation=int(meta.get("generation") or 0),
            observed_generation=int(status.get("observedGeneration") or 0),
            spec_replicas=int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1),
            replicas=int(status.get("replicas") or 0),
            updated_replicas=int(status.get("updatedReplicas") or 0),
            ready_replicas=int(status.get("readyReplicas") or 0),
            available_replicas=int(status.get("availableReplicas") or 0),
            template_hash=ann.get(b.ANN_CONFIG_HASH),
            template_uri=ann.get(b.ANN_MODEL_URI),
            template_version=ann.get(b.ANN_MODEL_VERSION),
            template_variant=ann.get(b.ANN_MODEL_VARIANT),
            conditions=tuple(
                (
                    str(c.get("type", "")),
                    str(c.get("status", "")),
                    str(c.get("reason", "")),
                    str(c.get("message", "")),
                )
                for c in status.get("conditions") or []
            ),
        )

    def condition(self, type_: str) -> tuple[str, str, str, str] | None:
        return next((c for c in self.conditions if c[0] == type_), None)


@dataclass(frozen=True)
class PodView:
    name: str
    config_hash: str | None = None
    ready: bool = False
    terminating: bool = False
    phase: str = "Pending"
    unschedulable: str | None = None  # the scheduler's message
    waiting_reason: str | None = None
    waiting_message: str = ""
    restart_count: int = 0
    last_exit_code: int | None = None
    last_reason: str | None = None
    last_message: str = ""

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PodView:
        meta = body.get("metadata") or {}
        status = body.get("status") or {}
        conds = {c.get("type"): c for c in status.get("conditions") or []}
        sched = conds.get("PodScheduled") or {}
        unschedulable = (
            str(sched.get("message") or "no node fits")
            if sched.get("status") == "False" and sched.get("reason") == "Unschedulable"
            else None
        )
        cs = next(
            (c for c in status.get("containerStatuses") or [] if c.get("name") == b.CONTAINER),
            None,
        )
        waiting_reason = None
        waiting_message = ""
        restarts = 0
        last_code: int | None = None
        last_reason = None
        last_message = ""
        if cs is not None:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            waiting_reason = waiting.get("reason")
            waiting_message = str(waiting.get("message") or "")
            restarts = int(cs.get("restartCount") or 0)
            term = (cs.get("lastState") or {}).get("terminated") or (cs.get("state") or {}).get("terminated")
            if term:
                last_code = int(term.get("exitCode", 0))
                last_reason = term.get("reason")
                last_message = str(term.get("message") or "").strip()
        return cls(
            name=str(meta.get("name", "")),
            config_hash=(meta.get("annotations") or {}).get(b.ANN_CONFIG_HASH),
            ready=(conds.get("Ready") or {}).get("status") == "True",
            terminating=meta.get("deletionTimestamp") is not None,
            phase=str(status.get("phase") or "Pending"),
            unschedulable=unschedulable,
            waiting_reason=waiting_reason,
            waiting_message=waiting_message,
            restart_count=restarts,
            last_exit_code=last_code,
            last_reason=last_reason,
            last_message=last_message,
        )


# ---------------------------------------------------------------------------------------------------------
# Which model


@dataclass(frozen=True)
class Resolution:
    """The model to serve (None: nothing can be rolled out now) and the ModelReady condition that says why."""

    model: ResolvedModel | None
    ready: bool
    reason: str
    message: str


def _training_uri(t: TrainingView, art: TrainingArtifacts) -> str | None:
    if t.output_claim is not None:
        prefix = t.output_path.strip("/")
        return b.pvc_uri(t.output_claim, f"{prefix}/{art.version}" if prefix else art.version)
    if art.uri and "://" in art.uri:
        return art.uri
    if t.output_uri:
        return f"{t.output_uri.rstrip('/')}/{art.version}"
    return None


def _pick_variant(requested: Variant | None, art: TrainingArtifacts) -> tuple[Variant, str, str]:
    """(variant, reason, message): the training's default unless asked; what the artifact serves if INT8 lost
    too much accuracy; the default when the asked variant was not produced."""
    known = any(x is not None for x in (art.fp32, art.int8, art.onnx))
    default: Variant = art.default_variant or (
        "fp32" if art.quantization_over_budget or (known and art.int8 is None) else "int8"
    )
    if requested is None:
        return default, "ArtifactResolved", f"the training's default variant {default}"
    if requested in ("int8", "onnx-int8") and art.quantization_over_budget:
        chosen: Variant = "onnx-fp32" if requested == "onnx-int8" and art.onnx else default
        return (
            chosen,
            "Int8OverAccuracyBudget",
            f"{requested} was asked, but the INT8 model lost more accuracy than quantization.maxAccuracyDrop "
            f"allows; serving {chosen}, the variant the artifact serves",
        )
    missing = known and (
        (requested == "int8" and art.int8 is None)
        or (requested.startswith("onnx") and art.onnx is None)
        or (requested == "fp32" and art.fp32 is None)
    )
    if missing:
        return (
            default,
            "VariantUnavailable",
            f"{requested} was asked, but the training did not produce it; serving {default}",
        )
    return requested, "ArtifactResolved", f"variant {requested}"


def _describe(model: ResolvedModel) -> str:
    return f"{model.variant} of artifact {model.version} ({model.uri})"


def resolve_model(
    spec: DeepSeekInferenceSpec,
    training: TrainingView | None,
    remembered: ResolvedModel | None,
) -> Resolution:
    m = spec.model
    if m.uri is not None:
        model = ResolvedModel(uri=m.uri, version=b.version_of(m.uri), variant=m.variant or "int8")
        return Resolution(model, True, "ArtifactResolved", f"serving {_describe(model)}")
    if m.pvc is not None:
        uri = b.pvc_uri(m.pvc.claim_name, m.pvc.path)
        version = b.version_of(uri) if m.pvc.path else m.pvc.claim_name
        model = ResolvedModel(uri=uri, version=version, variant=m.variant or "int8")
        return Resolution(model, True, "ArtifactResolved", f"serving {_describe(model)}")
    assert m.training_ref is not None
    ref = m.training_ref.name
    keep = remembered if remembered is not None and remembered.training == ref else None
    if training is None:
        if keep is not None:
            return Resolution(
                keep,
                True,
                "TrainingDeleted",
                f"DeepSeekTraining {ref} no longer exists; still serving {_describe(keep)} (the artifact stays "
                "where it is)",
            )
        return Resolution(None, False, "TrainingNotFound", f"DeepSeekTraining {ref} does not exist in this namespace")
    art = training.artifacts
    if training.phase == "Succeeded":
        art_uri = _training_uri(training, art) if art is not None else None
        if art is None or art_uri is None:
            if keep is not None:
                return Resolution(
                    keep, True, "PreviousArtifact", f"{ref} reports no artifact; still serving {_describe(keep)}"
                )
            return Resolution(
                None, False, "ArtifactMissing", f"DeepSeekTraining {ref} Succeeded but reports no artifact location"
            )
        variant, reason, why = _pick_variant(m.variant, art)
        model = ResolvedModel(
            uri=art_uri, version=art.version, variant=variant, training=ref, training_uid=training.uid
        )
        return Resolution(model, True, reason, f"serving {_describe(model)} from DeepSeekTraining {ref}: {why}")
    if keep is not None:
        # The training was re-created (its spec is fixed once started, so only a new object runs again).
        return Resolution(
            keep,
            True,
            "PreviousArtifact",
            f"DeepSeekTraining {ref} is {training.phase or 'Pending'} again; still serving {_describe(keep)} "
            "until it has Succeeded",
        )
    detail = f": {training.message}" if training.message else ""
    if training.phase == "Failed":
        return Resolution(None, False, "TrainingFailed", f"DeepSeekTraining {ref} Failed{detail}")
    return Resolution(
        None,
        False,
        "TrainingNotSucceeded",
        f"waiting for DeepSeekTraining {ref} to succeed (phase {training.phase or 'Pending'}{detail}); no model "
        "server runs until then",
    )


# ---------------------------------------------------------------------------------------------------------
# The status


@dataclass(frozen=True)
class Observed:
    deployment: DeploymentView | None = None
    pods: tuple[PodView, ...] = ()
    service_monitor_api: bool = False


@dataclass(frozen=True)
class PodProblem:
    reason: str
    message: str
    bad_artifact: bool = False


_PROBLEM_ORDER: Final = (
    "Unschedulable",
    "ImagePullBackOff",
    "CreateContainerConfigError",
    "ArtifactInvalid",
    "InvalidRunConfig",
    "OOMKilled",
    "CrashLoopBackOff",
)


def pod_problem(pod: PodView) -> PodProblem | None:
    """Why a pod does not serve, in the words `kubectl get pods` uses (None: starting or fine)."""
    if pod.ready or pod.terminating:
        return None
    if pod.unschedulable is not None:
        return PodProblem("Unschedulable", f"pod {pod.name} cannot be scheduled: {pod.unschedulable}")
    if pod.waiting_reason in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName"):
        return PodProblem("ImagePullBackOff", f"pod {pod.name}: {pod.waiting_reason}: {pod.waiting_message}".strip())
    if pod.waiting_reason in ("CreateContainerConfigError", "CreateContainerError"):
        return PodProblem(
            "CreateContainerConfigError", f"pod {pod.name}: {pod.waiting_reason}: {pod.waiting_message}".strip()
        )
    crashed = pod.waiting_reason == "CrashLoopBackOff" or (pod.restart_count > 0 and pod.last_exit_code is not None)
    if not crashed:
        return None
    detail = f"pod {pod.name} restarted {pod.restart_count} times; last exit code {pod.last_exit_code}"
    if pod.last_message:
        detail += f": {pod.last_message}"
    if pod.last_exit_code == EXIT_BAD_ARTIFACT:
        return PodProblem("ArtifactInvalid", f"the model server refused the artifact ({detail})", bad_artifact=True)
    if pod.last_exit_code == EXIT_BAD_CONFIG:
        return PodProblem("InvalidRunConfig", f"the model server refused its run config ({detail})")
    if pod.last_reason == "OOMKilled":
        return PodProblem("OOMKilled", f"{detail} (out of memory: raise resources.limits.memory)")
    return PodProblem("CrashLoopBackOff", detail)


def first_problem(pods: Iterable[PodView]) -> PodProblem | None:
    found = [p for p in (pod_problem(pod) for pod in pods) if p is not None]
    if not found:
        return None
    return min(found, key=lambda p: _PROBLEM_ORDER.index(p.reason))


@dataclass
class _Ready:
    status: ConditionStatus
    reason: str
    message: str
    phase: Literal["Pending", "Ready", "NotReady", "Stopped", "Failed"]


@dataclass(frozen=True)
class StatusResult:
    status: dict[str, Any]
    phase: str
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type Normal|Warning, reason, message)


def _served(previous: Mapping[str, Any], dep: DeploymentView | None, done: bool, ready_pods: int) -> dict[str, Any]:
    keys = ("modelUri", "servedModelVersion", "servedVariant")
    if done and dep is not None and ready_pods > 0:
        return dict(zip(keys, (dep.template_uri, dep.template_version, dep.template_variant), strict=True))
    if ready_pods > 0:  # old pods (or a mix) keep serving what they served
        return {k: previous.get(k) for k in keys}
    return dict.fromkeys(keys)


def compute_status(
    *,
    spec: DeepSeekInferenceSpec,
    generation: int,
    previous: Mapping[str, Any],
    resolution: Resolution,
    plan: b.InferencePlan,
    observed: Observed,
    now: str | None = None,
) -> StatusResult:
    """The whole status (camelCase dict) and the Events for what changed since `previous`."""
    now = now or now_rfc3339()
    dep = observed.deployment
    desired = plan.replicas
    live = [p for p in observed.pods if not p.terminating]
    current = [p for p in live if plan.config_hash is not None and p.config_hash == plan.config_hash]
    ready_current = sum(p.ready for p in current)
    ready_any = sum(p.ready for p in live)
    template_current = dep is not None and plan.config_hash is not None and dep.template_hash == plan.config_hash
    rolled_out = (
        template_current
        and dep is not None
        and dep.observed_generation >= dep.generation
        and dep.spec_replicas == desired
        and dep.updated_replicas == desired
        and dep.replicas == desired
        and ready_current >= desired
    )
    problem = first_problem(current)

    # ModelReady: the resolution, unless the server refuses the artifact it was given.
    model_status: ConditionStatus = "True" if resolution.ready else "False"
    model_reason, model_message = resolution.reason, resolution.message
    if resolution.ready and problem is not None and problem.bad_artifact:
        model_status, model_reason, model_message = "False", problem.reason, problem.message

    ready = _ready(resolution, desired, dep, template_current, rolled_out, problem, current, ready_current, ready_any)

    conditions: list[dict[str, Any]] = [dict(c) for c in previous.get("conditions") or []]
    conditions = set_condition(conditions, MODEL_READY, model_status, model_reason, model_message, generation, now)
    if desired == 0:
        conditions = set_condition(
            conditions, STOPPED, "True", "ScaledToZero", "spec.replicas is 0: no model server runs", generation, now
        )
    else:
        conditions = set_condition(
            conditions, STOPPED, "False", "ReplicasRequested", f"spec.replicas is {spec.replicas}", generation, now
        )
    conditions = set_condition(conditions, *_monitor_condition(spec, plan, observed), generation, now)
    conditions = set_condition(conditions, READY, ready.status, ready.reason, ready.message, generation, now)
    conditions.sort(key=lambda c: CONDITION_TYPES.index(c["type"]) if c["type"] in CONDITION_TYPES else 99)

    model = resolution.model
    status: dict[str, Any] = {
        "phase": ready.phase,
        "conditions": conditions,
        "observedGeneration": generation,
        "url": plan.url,
        "replicas": dep.replicas if dep is not None else 0,
        "readyReplicas": ready_current,
        "updatedReplicas": dep.updated_replicas if dep is not None else 0,
        "selector": plan.selector,
        **_served(previous, dep, rolled_out, ready_any),
        "resolvedModel": model.model_dump(mode="json", by_alias=True, exclude_none=True) if model else None,
    }
    status = {k: v for k, v in status.items() if v is not None}
    changed = essence(status) != essence(previous)
    status["lastUpdateTime"] = now if changed or not previous.get("lastUpdateTime") else previous["lastUpdateTime"]
    return StatusResult(status, ready.phase, transitions(previous.get("conditions") or [], conditions))


def _ready(
    resolution: Resolution,
    desired: int,
    dep: DeploymentView | None,
    template_current: bool,
    rolled_out: bool,
    problem: PodProblem | None,
    current: list[PodView],
    ready_current: int,
    ready_any: int,
) -> _Ready:
    if resolution.model is None:
        phase: Literal["Pending", "Failed"] = "Failed" if resolution.reason in _FAILED_REASONS else "Pending"
        if ready_any:  # an earlier model still runs; the spec asks for one that cannot be served
            return _Ready(
                "False",
                resolution.reason,
                resolution.message + "; the running pods keep the old model",
                "NotReady" if phase == "Pending" else "Failed",
            )
        return _Ready("False", resolution.reason, resolution.message, phase)
    if desired == 0:
        return _Ready("False", "Stopped", "spec.replicas is 0: scale up to serve", "Stopped")
    if rolled_out:
        m = resolution.model
        return _Ready("True", "AllReplicasReady", f"{ready_current}/{desired} pods serve {_describe(m)}", "Ready")
    if dep is None or not template_current:
        return _Ready(
            "False", "RolloutPending", "the Deployment is being updated", "NotReady" if ready_any else "Pending"
        )
    failure = dep.condition("ReplicaFailure")
    if failure is not None and failure[1] == "True":
        return _Ready("False", failure[2] or "FailedCreate", failure[3], "NotReady")
    progressing = dep.condition("Progressing")
    if progressing is not None and progressing[1] == "False" and progressing[2] == "ProgressDeadlineExceeded":
        detail = f"; {problem.message}" if problem is not None else ""
        return _Ready("False", "ProgressDeadlineExceeded", progressing[3] + detail, "NotReady")
    if problem is not None:
        return _Ready("False", problem.reason, problem.message, "NotReady")
    old = ready_any - ready_current
    message = f"{ready_current}/{desired} pods of the requested model ready"
    if old > 0:
        message += f"; {old} pods of the previous model keep serving until the roll-out completes"
    starting = ready_any == 0 and all(not p.ready for p in current)
    return _Ready("False", "RolloutInProgress", message, "Pending" if starting else "NotReady")


def _monitor_condition(
    spec: DeepSeekInferenceSpec, plan: b.InferencePlan, observed: Observed
) -> tuple[str, ConditionStatus, str, str]:
    if not spec.monitoring.service_monitor:
        return SERVICE_MONITOR_READY, "False", "Disabled", "spec.monitoring.serviceMonitor is false"
    if not observed.service_monitor_api:
        return (
            SERVICE_MONITOR_READY,
            "False",
            "PrometheusOperatorNotInstalled",
            "the monitoring.coreos.com/v1 ServiceMonitor API is not served in this cluster: no ServiceMonitor was "
            f"created (the pods still serve {b.METRICS_PATH} on port http)",
        )
    return SERVICE_MONITOR_READY, "True", "Created", f"ServiceMonitor {plan.name} scrapes {b.METRICS_PATH}"


def essence(status: Mapping[str, Any]) -> Any:
    """What counts as a change: everything but lastUpdateTime."""
    return {k: v for k, v in status.items() if k != "lastUpdateTime"}


def transitions(old: Iterable[Mapping[str, Any]], new: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """Events for conditions whose status or reason changed: (Normal|Warning, reason, message)."""
    before = {c.get("type"): c for c in old}
    out: list[tuple[str, str, str]] = []
    for cond in new:
        prev = before.get(cond["type"])
        if prev is not None and prev.get("status") == cond["status"] and prev.get("reason") == cond["reason"]:
            continue
        if cond["type"] == STOPPED and prev is None and cond["status"] == "False":
            continue  # nothing to tell on creation
        warning = cond["status"] == "False" and cond["reason"] in WARNING_REASONS
        warning = warning or (cond["status"] == "True" and cond["reason"] in WARNING_REASONS)
        out.append(("Warning" if warning else "Normal", cond["reason"], f"{cond['type']}: {cond['message']}"))
    return out


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch turning `old` into `new` (keys that went away are set to null)."""
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    patch.update({k: v for k, v in new.items() if old.get(k) != v})
    return patch


def condition_status(status: Mapping[str, Any], type_: str) -> str | None:
    cond = get_condition(list(status.get("conditions") or []), type_)
    return None if cond is None else str(cond.get("status"))
