"""DeepSeekTraining: status and next steps from what its children report (pure: no I/O, no kopf).

`plan()` is the whole reconcile decision. It takes the parsed resource, a summary of its children (Jobs,
Pods, supporting objects, the newest progress report) and the time, and returns the new status, the
children to apply, the Jobs to suspend/resume or delete, the Events to post and when to look again. The
controller executes the plan; nothing here depends on which watch event woke it (level-based).

Lifecycle (docs/operator.md): Pending -> Running -> Quantizing -> Succeeded, or Failed, or Suspended.
Durable facts live in status: `startTime` (spec fixed from then on), `artifacts.version`, `restarts`
(attempts retried), and the `Trained` condition (the train stage is done; a retry only redoes quantize).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from deepseek_workers.runconfig import ProgressReport
from pydantic import ValidationError

from deepseek_operator import naming
from deepseek_operator.api import DeepSeekTraining, DeepSeekTrainingStatus
from deepseek_operator.builders import training as build
from deepseek_operator.builders.common import Manifest
from deepseek_operator.config import OperatorConfig
from deepseek_operator.status.conditions import ConditionStatus, get_condition, set_condition

# Condition types.
RUNNING: Final = "Running"
SUSPENDED: Final = "Suspended"
TRAINED: Final = "Trained"
QUANTIZED: Final = "Quantized"
SUCCEEDED: Final = "Succeeded"
FAILED: Final = "Failed"

# How long a finished stage waits for its worker's final report (sent just before the process exits, but on
# another watch stream than the Job) before the status is concluded without it.
REPORT_GRACE_SECONDS: Final = 10.0
MAX_METRICS: Final = 64  # status.metrics schema bound

# Waiting reasons that mean a pod cannot start by itself; after runPolicy.pendingTimeoutSeconds the run fails.
_STUCK_WAITING: Final = {
    "ImagePullBackOff": "ImagePullBackOff",
    "ErrImagePull": "ImagePullBackOff",
    "ErrImageNeverPull": "ImagePullBackOff",
    "InvalidImageName": "InvalidImageName",
    "CreateContainerConfigError": "CreateContainerConfigError",
    "CreateContainerError": "CreateContainerError",
}
# Worker exit codes (deepseek_workers.runconfig.EXIT_BAD_*): no retry can fix these.
EXIT_REASONS: Final = {64: "InvalidRunConfig", 65: "BadData", 66: "BadArtifact"}
_EXIT_WHAT: Final = {
    64: "the worker refused its run config",
    65: "the worker refused the dataset",
    66: "the worker refused the input model or artifact",
}

EventType = Literal["Normal", "Warning"]


def parse_time(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------------------
# What the children say: small summaries (the controller's kopf indexes keep these, not whole bodies)


@dataclass(frozen=True)
class JobView:
    name: str
    uid: str
    stage: str
    attempt: int
    version: str | None
    suspend: bool
    created: datetime | None
    terminating: bool
    complete: bool
    failed: bool
    failed_reason: str
    failed_message: str
    completion_time: datetime | None

    @property
    def finished(self) -> bool:
        return self.complete or self.failed


@dataclass(frozen=True)
class PodView:
    name: str
    job_uid: str
    phase: str
    created: datetime | None
    terminating: bool
    unschedulable: str | None  # PodScheduled=False reason Unschedulable: the scheduler's message
    waiting_reason: str | None
    waiting_message: str
    terminated_reason: str | None
    exit_code: int | None
    termination_message: str
    index: str | None


@dataclass(frozen=True)
class ChildView:
    kind: str
    name: str
    hash: str | None


def _conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {c.get("type", ""): c for c in (obj.get("status") or {}).get("conditions") or []}


def job_view(body: Mapping[str, Any]) -> JobView:
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    conds = _conditions(body)
    failed = conds.get("Failed", {})
    status = body.get("status") or {}
    try:
        attempt = int(annotations.get(build.ANNOTATION_ATTEMPT, "0"))
    except ValueError:
        attempt = 0
    return JobView(
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        stage=(meta.get("labels") or {}).get(naming.LABEL_COMPONENT, ""),
        attempt=attempt,
        version=annotations.get(build.ANNOTATION_VERSION),
        suspend=bool((body.get("spec") or {}).get("suspend")),
        created=parse_time(meta.get("creationTimestamp")),
        terminating=meta.get("deletionTimestamp") is not None,
        complete=conds.get("Complete", {}).get("status") == "True",
        failed=failed.get("status") == "True",
        failed_reason=str(failed.get("reason") or ""),
        failed_message=str(failed.get("message") or ""),
        completion_time=parse_time(status.get("completionTime")),
    )


def pod_view(body: Mapping[str, Any]) -> PodView:
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    status = body.get("status") or {}
    scheduled = _conditions(body).get("PodScheduled", {})
    unschedulable = (
        str(scheduled.get("message") or "no node fits the pod")
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"
        else None
    )
    containers = status.get("containerStatuses") or []
    first = containers[0] if containers else {}
    worker = next((c for c in containers if c.get("name") == build.WORKER_CONTAINER), first)
    state = worker.get("state") or {}
    waiting = state.get("waiting") or {}
    terminated = state.get("terminated") or {}
    exit_code = terminated.get("exitCode")
    return PodView(
        name=meta.get("name", ""),
        job_uid=labels.get("batch.kubernetes.io/controller-uid") or labels.get("controller-uid", ""),
        phase=status.get("phase") or "Pending",
        created=parse_time(meta.get("creationTimestamp")),
        terminating=meta.get("deletionTimestamp") is not None,
        unschedulable=unschedulable,
        waiting_reason=waiting.get("reason"),
        waiting_message=str(waiting.get("message") or ""),
        terminated_reason=terminated.get("reason"),
        exit_code=int(exit_code) if isinstance(exit_code, int) else None,
        termination_message=str(terminated.get("message") or "").strip(),
        index=labels.get("batch.kubernetes.io/job-completion-index"),
    )


def child_view(body: Mapping[str, Any]) -> ChildView:
    meta = body.get("metadata") or {}
    return ChildView(
        kind=str(body.get("kind") or ""),
        name=meta.get("name", ""),
        hash=(meta.get("annotations") or {}).get(build.ANNOTATION_HASH),
    )


def progress_report(body: Mapping[str, Any]) -> ProgressReport | None:
    """The report in a progress ConfigMap; None when absent or not a valid ProgressReport (a worker of another
    version, or anything but our worker, wrote it: ignored rather than trusted)."""
    raw = (body.get("data") or {}).get(build.PROGRESS_KEY)
    if not raw:
        return None
    try:
        return ProgressReport.model_validate_json(raw)
    except ValidationError:
        return None


@dataclass(frozen=True)
class Observed:
    jobs: Sequence[JobView] = ()
    pods: Sequence[PodView] = ()
    children: Mapping[tuple[str, str], str | None] = field(default_factory=dict)
    report: ProgressReport | None = None

    def job(self, name: str) -> JobView | None:
        # A Job being replaced (deleted, then created again under the same name) can briefly show twice.
        live = [j for j in self.jobs if j.name == name]
        return next((j for j in live if not j.terminating), live[0] if live else None)

    def pods_of(self, job: JobView) -> list[PodView]:
        return [p for p in self.pods if p.job_uid == job.uid and not p.terminating]


# ---------------------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class EventSpec:
    type: EventType
    reason: str
    message: str


@dataclass
class Plan:
    status: dict[str, Any]
    apply: list[Manifest] = field(default_factory=list)  # supporting children, applied first
    create_jobs: list[Manifest] = field(default_factory=list)
    suspend_jobs: list[tuple[str, bool]] = field(default_factory=list)
    delete_jobs: list[str] = field(default_factory=list)
    events: list[EventSpec] = field(default_factory=list)
    delete_self: bool = False
    requeue_after: float | None = None

    def requeue(self, seconds: float) -> None:
        seconds = max(seconds, 0.5)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)

    def event(self, type_: EventType, reason: str, message: str) -> None:
        self.events.append(EventSpec(type_, reason, message))


@dataclass(frozen=True)
class FailureCause:
    reason: str
    message: str
    permanent: bool


def canonical_status(status: Mapping[str, Any] | None) -> dict[str, Any]:
    """A status as the API model writes it (unknown fields dropped, times in RFC 3339 seconds)."""
    model = DeepSeekTrainingStatus.model_validate(dict(status or {}))
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def _short(text: str, limit: int = 1500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def failure_cause(job: JobView, pods: Sequence[PodView]) -> FailureCause:
    """Why a failed Job failed, from its pods' termination states (the worker's exit code and message)."""
    failed = [p for p in pods if p.phase == "Failed" or p.terminated_reason not in (None, "Completed")]
    permanent = next((p for p in failed if p.exit_code in EXIT_REASONS), None)
    if permanent is not None and permanent.exit_code is not None:
        detail = permanent.termination_message or job.failed_message
        return FailureCause(
            EXIT_REASONS[permanent.exit_code],
            _short(
                f"{_EXIT_WHAT[permanent.exit_code]} (pod {permanent.name}, exit code {permanent.exit_code}): {detail}"
            ),
            permanent=True,
        )
    oom = next((p for p in failed if p.terminated_reason == "OOMKilled"), None)
    if oom is not None:
        return FailureCause(
            "OOMKilled",
            f"pod {oom.name} ran out of memory (OOMKilled, exit code {oom.exit_code}); raise resources.limits.memory "
            "or lower training.batchSize / dataset.maxLength",
            permanent=False,
        )
    if failed:
        p = failed[0]
        detail = f": {p.termination_message}" if p.termination_message else ""
        return FailureCause("WorkerFailed", _short(f"pod {p.name} exited with code {p.exit_code}{detail}"), False)
    if job.failed_reason == "PodFailurePolicy":
        return FailureCause("InvalidRunConfig", _short(job.failed_message), permanent=True)
    reason = job.failed_reason or "JobFailed"
    return FailureCause(reason, _short(job.failed_message or f"Job {job.name} failed ({reason})"), permanent=False)


def _stuck(pod: PodView) -> tuple[str, str] | None:
    if pod.phase != "Pending":
        return None
    if pod.unschedulable is not None:
        return "Unschedulable", pod.unschedulable
    if pod.waiting_reason in _STUCK_WAITING:
        return _STUCK_WAITING[pod.waiting_reason], pod.waiting_message or pod.waiting_reason
    return None


def _finite(metrics: Mapping[str, float] | None) -> dict[str, float]:
    return {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, int | float) and math.isfinite(v)}


def _capped(metrics: Mapping[str, float]) -> dict[str, float]:
    """At most MAX_METRICS entries (the schema's bound), the headline numbers first."""
    headline = ("accuracy", "macroF1", "perplexity", "accuracyDrop")
    keep = sorted(metrics, key=lambda k: (k not in headline, k))[:MAX_METRICS]
    return {k: metrics[k] for k in sorted(keep)}


class _Reconcile:
    """One evaluation; the methods share the working status (a plain camelCase dict)."""

    def __init__(self, training: DeepSeekTraining, observed: Observed, config: OperatorConfig, now: datetime):
        self.t = training
        self.spec = training.spec
        self.obs = observed
        self.config = config
        self.now = now
        self.now_s = rfc3339(now)
        self.gen = training.metadata.generation or 0
        self.names = build.names(training.metadata.name)
        self.owner = build.owner_of(training)
        raw = training.status.model_dump(mode="json", by_alias=True, exclude_none=True) if training.status else {}
        self.old = canonical_status(raw)
        self.st: dict[str, Any] = copy.deepcopy(self.old)
        self.plan = Plan(status=self.st)

    # -- helpers --------------------------------------------------------------------------------------------

    @property
    def conds(self) -> list[dict[str, Any]]:
        conds: list[dict[str, Any]] = self.st.setdefault("conditions", [])
        return conds

    def cond(self, type_: str, status: ConditionStatus, reason: str, message: str) -> None:
        self.st["conditions"] = set_condition(self.conds, type_, status, reason, message, self.gen, now=self.now_s)

    def is_true(self, type_: str) -> bool:
        c = get_condition(self.conds, type_)
        return c is not None and c.get("status") == "True"

    def phase_for(self, stage: build.Stage) -> str:
        return "Quantizing" if stage == build.QUANTIZE else "Pending"

    # -- entry ----------------------------------------------------------------------------------------------

    def run(self) -> Plan:
        self.ingest_report()
        if self.old.get("phase") in ("Succeeded", "Failed") and self.old.get("completionTime"):
            self.finished()
        else:
            self.active()
        return self.finalize()

    def ingest_report(self) -> None:
        """Live progress from the newest report; final numbers from a stage's closing report."""
        r = self.obs.report
        if r is None:
            return
        percent = min(100, r.step * 100 // r.total_steps) if r.total_steps > 0 else 0
        progress: dict[str, Any] = {
            "stage": r.stage,
            "step": r.step,
            "totalSteps": r.total_steps,
            "percent": percent,
            "epoch": r.epoch,
            "loss": r.loss,
            "learningRate": r.learning_rate,
            "evalMetric": r.eval_metric.model_dump(by_alias=True) if r.eval_metric else None,
            "samplesPerSecond": r.samples_per_second,
            "etaSeconds": r.eta_seconds,
            "resumedFromStep": r.resumed_from_step,
            "precision": r.precision,
            "lastUpdateTime": r.updated_at,
        }
        self.st["progress"] = {
            k: v for k, v in progress.items() if v is not None and not (isinstance(v, float) and not math.isfinite(v))
        }
        if r.state == "succeeded" and r.metrics:
            self.st["metrics"] = _capped({**self.st.get("metrics", {}), **_finite(r.metrics)})

    # -- finished runs: only TTL, late reports, and no running pods -----------------------------------------

    def finished(self) -> None:
        for job in self.obs.jobs:
            if not job.finished and not job.terminating:
                self.plan.delete_jobs.append(job.name)
        if self.old.get("phase") == "Succeeded":
            self.success_fields()
        ttl = self.spec.run_policy.ttl_seconds_after_finished
        done = parse_time(self.old.get("completionTime"))
        if ttl is not None and done is not None:
            left = (done + timedelta(seconds=ttl) - self.now).total_seconds()
            if left <= 0:
                self.plan.delete_self = True
            else:
                self.plan.requeue(left)

    # -- running runs -----------------------------------------------------------------------------------------

    def version(self) -> str:
        if self.old.get("startTime") and self.old.get("artifacts", {}).get("version"):
            return str(self.old["artifacts"]["version"])
        existing = next((j.version for j in self.obs.jobs if j.version), None)
        return existing or build.new_artifact_version(self.t)

    def started(self) -> bool:
        return bool(self.st.get("startTime"))

    def mark_started(self, when: datetime, version: str) -> None:
        if not self.st.get("startTime"):
            self.st["startTime"] = rfc3339(when)
        self.st.setdefault("artifacts", {})["version"] = version

    def active(self) -> None:
        version = self.version()
        if not self.started() and self.obs.jobs:
            # A Job exists but its start was never recorded (the status write after creating it failed).
            first = min((j.created for j in self.obs.jobs if j.created), default=self.now)
            self.mark_started(first, version)
        self.apply_support(version)

        stage: build.Stage = build.QUANTIZE if self.is_true(TRAINED) else build.TRAIN
        if stage == build.QUANTIZE and not self.spec.quantization.enabled:
            self.succeed(None)
            return
        job = self.obs.job(self.names.job(stage))
        if job is not None and job.complete and not job.terminating:
            if stage == build.TRAIN:
                uri = self.obs.report.artifact_uri if self.obs.report and self.obs.report.stage == "train" else None
                self.cond(TRAINED, "True", "TrainingSucceeded", f"the train step published {uri or 'its model'}")
                if not self.spec.quantization.enabled:
                    self.succeed(job)
                    return
                stage = build.QUANTIZE
                job = self.obs.job(self.names.quantize_job)
            else:
                self.succeed(job)
                return
        if job is not None and job.complete and not job.terminating:  # quantize already done as well
            self.succeed(job)
            return

        if self.deadline_exceeded():
            return
        if job is not None and job.failed and not job.terminating:
            self.retry_or_fail(job, stage)
            return
        if job is None or job.terminating:
            self.no_job(job, stage, version)
            return
        self.running_job(job, stage)

    def apply_support(self, version: str) -> None:
        for manifest in build.support_children(self.t, self.owner, version):
            meta = manifest["metadata"]
            key = (manifest["kind"], meta["name"])
            want = meta["annotations"][build.ANNOTATION_HASH]
            # The run config is frozen once the run started: a retry must run exactly the same thing.
            frozen = self.started() and key == ("ConfigMap", self.names.config)
            if key not in self.obs.children or (self.obs.children[key] != want and not frozen):
                self.plan.apply.append(manifest)

    def deadline_exceeded(self) -> bool:
        limit = self.spec.run_policy.active_deadline_seconds
        start = parse_time(self.st.get("startTime"))
        if limit is None or start is None or self.spec.run_policy.suspend:
            return False
        # Like a Kubernetes Job, the clock restarts when a suspended run is resumed.
        resumed = get_condition(self.conds, SUSPENDED)
        if resumed is not None and resumed.get("status") == "False":
            start = max(start, parse_time(resumed.get("lastTransitionTime")) or start)
        left = (start + timedelta(seconds=limit) - self.now).total_seconds()
        if left > 0:
            self.plan.requeue(left)
            return False
        self.fail(
            "DeadlineExceeded",
            f"the run was active for longer than runPolicy.activeDeadlineSeconds ({limit}s) and was stopped",
        )
        return True

    def retry_or_fail(self, job: JobView, stage: build.Stage) -> None:
        cause = failure_cause(job, self.obs.pods_of(job))
        if cause.permanent:
            self.fail(cause.reason, cause.message)
            return
        limit = self.spec.run_policy.backoff_limit
        attempts = job.attempt + 1
        if attempts > limit:
            reason = "OOMKilled" if cause.reason == "OOMKilled" else "BackoffLimitExceeded"
            self.fail(
                reason,
                f"{cause.message}; gave up after {attempts} attempt(s) (runPolicy.backoffLimit {limit})",
            )
            return
        message = (
            f"attempt {attempts} of {limit + 1} failed ({cause.reason}: {cause.message}); "
            "retrying, resuming from the newest checkpoint"
        )
        if int(self.st.get("restarts", 0)) < attempts:
            self.st["restarts"] = attempts
            self.plan.event("Warning", "Restarting", message)
        self.plan.delete_jobs.append(job.name)
        self.cond(RUNNING, "False", "Restarting", message)
        self.st["phase"] = self.phase_for(stage)

    def no_job(self, terminating: JobView | None, stage: build.Stage, version: str) -> None:
        phase = self.phase_for(stage)
        if terminating is not None:
            # The previous attempt's Job is still being deleted (its pods go first); start the next one after.
            self.cond(RUNNING, "False", "Restarting", f"waiting for Job {terminating.name} of the last attempt to go")
            self.st["phase"] = phase
            self.plan.requeue(2.0)
            return
        if self.spec.run_policy.suspend:
            self.suspended(stage)
            return
        attempt = int(self.st.get("restarts", 0))
        manifest = build.job(self.t, self.owner, self.config, stage, attempt=attempt, version=version)
        self.plan.create_jobs.append(manifest)
        self.mark_started(self.now, version)
        name = manifest["metadata"]["name"]
        self.plan.event("Normal", "JobCreated", f"created Job {name} (attempt {attempt + 1}, artifact {version})")
        self.cond(RUNNING, "False", "Starting", f"Job {name} created; waiting for its pods")
        self.st["phase"] = phase

    def suspended(self, stage: build.Stage) -> None:
        self.cond(
            SUSPENDED,
            "True",
            "Suspended",
            "runPolicy.suspend is true: worker pods are stopped; resuming continues from the newest checkpoint",
        )
        self.cond(RUNNING, "False", "Suspended", "the run is suspended")
        self.st["phase"] = "Suspended"

    def running_job(self, job: JobView, stage: build.Stage) -> None:
        want_suspend = self.spec.run_policy.suspend
        if job.suspend != want_suspend:
            self.plan.suspend_jobs.append((job.name, want_suspend))
        if want_suspend:
            self.suspended(stage)
            return
        if self.is_true(SUSPENDED):
            self.cond(SUSPENDED, "False", "Resumed", "runPolicy.suspend is false: the run continues")
        pods = self.obs.pods_of(job)
        expected = self.spec.distributed.workers if stage == build.TRAIN else 1
        running = [p for p in pods if p.phase in ("Running", "Succeeded")]
        stuck = next(((p, s) for p in pods if (s := _stuck(p)) is not None), None)
        phase = self.phase_for(stage)
        if stuck is not None:
            pod, (reason, detail) = stuck
            timeout = self.spec.run_policy.pending_timeout_seconds
            waited = (self.now - (pod.created or self.now)).total_seconds()
            if timeout and waited >= timeout:
                self.fail(
                    reason,
                    _short(
                        f"pod {pod.name} could not start for {waited:.0f}s "
                        f"(runPolicy.pendingTimeoutSeconds {timeout}): {detail}"
                    ),
                )
                return
            if timeout:
                self.plan.requeue(timeout - waited)
            self.cond(RUNNING, "False", reason, _short(f"pod {pod.name}: {detail}"))
        elif len(running) >= expected:
            what = "training" if stage == build.TRAIN else "quantizing"
            reason = "Quantizing" if stage == build.QUANTIZE else "Training"
            self.cond(RUNNING, "True", reason, f"{len(running)} of {expected} worker pod(s) running ({what})")
            phase = "Running" if stage == build.TRAIN else phase
        else:
            self.cond(RUNNING, "False", "PodsStarting", f"{len(running)} of {expected} worker pod(s) running")
        self.st["phase"] = phase

    # -- endings -------------------------------------------------------------------------------------------

    def report_pending(self, job: JobView | None, stage: build.Stage) -> bool:
        """The stage's Job is complete but its closing report has not been seen yet: wait a moment for it."""
        r = self.obs.report
        if job is None or (r is not None and r.stage == stage and r.state == "succeeded"):
            return False
        done = job.completion_time or job.created or self.now
        left = REPORT_GRACE_SECONDS - (self.now - done).total_seconds()
        if left <= 0:
            return False
        self.plan.requeue(left)
        return True

    def succeed(self, job: JobView | None) -> None:
        last: build.Stage = build.QUANTIZE if self.spec.quantization.enabled else build.TRAIN
        if self.report_pending(job, last):
            self.st["phase"] = self.phase_for(last) if last == build.QUANTIZE else "Running"
            return
        self.st["phase"] = "Succeeded"
        self.st["completionTime"] = self.now_s
        self.success_fields()
        message = self.success_message()
        self.cond(RUNNING, "False", "Completed", "the run has finished")
        self.cond(SUCCEEDED, "True", "Succeeded", message)
        over = self.st.get("artifacts", {}).get("quantizationOverBudget")
        if over:
            self.plan.event("Warning", "QuantizationOverBudget", self.quantized_message(True))
        ttl = self.spec.run_policy.ttl_seconds_after_finished
        if ttl is not None:
            self.plan.requeue(float(ttl))

    def success_fields(self) -> None:
        """Artifact locations, default variant, the Quantized condition and the served accuracy; idempotent
        (also re-run on a finished run when a late closing report arrives)."""
        version = str(self.st.get("artifacts", {}).get("version") or self.version())
        uri = build.artifact_uri(self.t, version)
        q = self.spec.quantization
        report = self.obs.report
        final_q = report if report and report.stage == "quantize" and report.state == "succeeded" else None
        art: dict[str, Any] = {"version": version, "uri": uri, "fp32": f"{uri}/fp32"}
        if self.spec.training.lora is not None:
            art["adapter"] = f"{uri}/adapter"
        if q.enabled:
            over = final_q.over_budget if final_q else self.st.get("artifacts", {}).get("quantizationOverBudget")
            if not over:
                art["int8"] = f"{uri}/int8"
            if q.export_onnx and self.spec.model.task == "text-classification":
                art["onnx"] = f"{uri}/onnx"
            art["defaultVariant"] = "fp32" if over else "int8"
            if over is not None:
                art["quantizationOverBudget"] = bool(over)
            self.cond(
                QUANTIZED,
                "True",
                "QuantizationOverBudget" if over else "Quantized",
                self.quantized_message(bool(over)),
            )
        else:
            art["defaultVariant"] = "fp32"
            self.cond(QUANTIZED, "False", "QuantizationDisabled", "quantization.enabled is false: fp32 is published")
        self.st["artifacts"] = art
        metrics = dict(self.st.get("metrics") or {})
        served = "int8" if art["defaultVariant"] == "int8" else "fp32"
        for key in (f"{served}Accuracy", "accuracy"):
            if key in metrics:
                metrics["accuracy"] = metrics[key]
                break
        if metrics:
            self.st["metrics"] = _capped(metrics)

    def quantized_message(self, over: bool) -> str:
        q = self.spec.quantization
        drop = (self.st.get("metrics") or {}).get("accuracyDrop")
        drop_text = f"{100 * drop:.2f} points" if isinstance(drop, float) else "an unknown amount"
        if over:
            return (
                f"INT8 ({q.method}) lost {drop_text} of accuracy, more than quantization.maxAccuracyDrop "
                f"({100 * q.max_accuracy_drop:.2f} points): INT8 is not published and fp32 is the default variant"
            )
        return f"INT8 ({q.method}) published; accuracy drop {drop_text} (budget {100 * q.max_accuracy_drop:.2f})"

    def success_message(self) -> str:
        art = self.st.get("artifacts", {})
        acc = (self.st.get("metrics") or {}).get("accuracy")
        acc_text = f", accuracy {acc:.4f}" if isinstance(acc, float) else ""
        return f"published {art.get('uri')} (default variant {art.get('defaultVariant')}{acc_text})"

    def fail(self, reason: str, message: str) -> None:
        self.st["phase"] = "Failed"
        self.st["completionTime"] = self.now_s
        self.cond(RUNNING, "False", reason, message)
        self.cond(FAILED, "True", reason, message)
        for job in self.obs.jobs:
            if not job.finished and not job.terminating and job.name not in self.plan.delete_jobs:
                self.plan.delete_jobs.append(job.name)
        ttl = self.spec.run_policy.ttl_seconds_after_finished
        if ttl is not None:
            self.plan.requeue(float(ttl))

    # -- status and events ---------------------------------------------------------------------------------

    def finalize(self) -> Plan:
        self.st["observedGeneration"] = self.gen
        self.st.setdefault("restarts", 0)
        if not self.st.get("phase"):
            self.st["phase"] = "Pending"
        new = canonical_status(self.st)
        self.plan.status = new
        self.transition_events(self.old, new)
        return self.plan

    def transition_events(self, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        before, after = old.get("phase"), new.get("phase")
        conds = new.get("conditions", [])
        if after != before:
            if after == "Running":
                running = get_condition(conds, RUNNING)
                reason = "Resumed" if before == "Suspended" else "Running"
                self.plan.event("Normal", reason, (running or {}).get("message", "worker pods are running"))
            elif after == "Quantizing":
                self.plan.event(
                    "Normal", "Quantizing", f"training succeeded; quantizing to INT8 ({self.spec.quantization.method})"
                )
            elif after == "Suspended":
                self.plan.event("Normal", "Suspended", "runPolicy.suspend is true: worker pods are stopped")
            elif after == "Succeeded":
                self.plan.event("Normal", "Succeeded", (get_condition(conds, SUCCEEDED) or {}).get("message", ""))
            elif after == "Failed":
                failed = get_condition(conds, FAILED) or {}
                self.plan.event("Warning", failed.get("reason", "Failed"), failed.get("message", ""))
            elif after == "Pending" and before == "Suspended":
                self.plan.event("Normal", "Resumed", "runPolicy.suspend is false: the run continues")
        old_running = get_condition(list(old.get("conditions", [])), RUNNING) or {}
        new_running = get_condition(conds, RUNNING) or {}
        stuck = set(_STUCK_WAITING.values()) | {"Unschedulable"}
        stuck_reason = new_running.get("reason")
        if stuck_reason in stuck and stuck_reason != old_running.get("reason") and after != "Failed":
            self.plan.event("Warning", new_running["reason"], new_running.get("message", ""))


def plan(training: DeepSeekTraining, observed: Observed, config: OperatorConfig, now: datetime) -> Plan:
    """Everything the controller should do for `training` now (see the module docstring)."""
    return _Reconcile(training, observed, config, now).run()


def invalid_spec_status(
    old: Mapping[str, Any] | None, errors: Sequence[tuple[str, str]], generation: int, now: datetime
) -> dict[str, Any]:
    """Status of a resource the operator cannot parse (it slipped past an older CRD): Failed with the fields
    named. Not final: no completionTime, so a corrected spec (a new generation) is picked up."""
    st = copy.deepcopy(canonical_status(old))
    message = _short("; ".join(f"{path}: {msg}" for path, msg in errors))
    conds = st.get("conditions", [])
    conds = set_condition(conds, FAILED, "True", "InvalidSpec", message, generation, now=rfc3339(now))
    conds = set_condition(conds, RUNNING, "False", "InvalidSpec", message, generation, now=rfc3339(now))
    st.update(phase="Failed", conditions=conds, observedGeneration=generation)
    return canonical_status(st)


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any] | None:
    """A merge patch turning `old` into `new` (None-valued keys delete), or None when nothing changed."""
    if json.dumps(old, sort_keys=True) == json.dumps(new, sort_keys=True):
        return None
    return _with_nulls(old, new)


def _with_nulls(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    # A merge patch merges nested objects: a key gone from e.g. `progress` (a quantize report has no loss) must
    # be nulled at its own level, or the train stage's value stays.
    patch: dict[str, Any] = dict(new)
    for key, value in old.items():
        if key not in new:
            patch[key] = None
        elif isinstance(value, Mapping) and isinstance(new[key], Mapping):
            patch[key] = _with_nulls(value, new[key])
    return patch
