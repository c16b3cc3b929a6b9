"""The DeepSeekTraining planner (pure): phases, conditions, retries, deadlines, pending timeouts, suspend,
the closing report, TTL, and the child summaries it reads."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from deepseek_operator.api import DeepSeekTraining, parse_training
from deepseek_operator.config import OperatorConfig
from deepseek_operator.status import training as ts
from deepseek_workers.runconfig import ProgressReport

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
CONFIG = OperatorConfig()
UID = "11111111-2222-3333-4444-555555555555"


def at(seconds_ago: float) -> datetime:
    return NOW - timedelta(seconds=seconds_ago)


def iso(seconds_ago: float) -> str:
    return ts.rfc3339(at(seconds_ago))


def training(status: dict[str, Any] | None = None, generation: int = 1, **spec: Any) -> DeepSeekTraining:
    body: dict[str, Any] = {
        "apiVersion": "deepseek.ai/v1alpha1",
        "kind": "DeepSeekTraining",
        "metadata": {"name": "r8", "namespace": "ml", "uid": UID, "generation": generation},
        "spec": {
            "model": {"builtin": {"name": "all-minilm-l6-v2"}},
            "dataset": {"builtin": "reuters-r8"},
            "output": {"uri": "s3://b/r8"},
        },
    }
    body["spec"].update(copy.deepcopy(spec))
    if status is not None:
        body["status"] = status
    return parse_training(body)


def job(stage: str = "train", attempt: int = 0, **kw: Any) -> ts.JobView:
    base: dict[str, Any] = {
        "name": f"r8-{stage}",
        "uid": f"uid-{stage}-{attempt}",
        "stage": stage,
        "attempt": attempt,
        "version": "v1-11111111",
        "suspend": False,
        "created": at(60),
        "terminating": False,
        "complete": False,
        "failed": False,
        "failed_reason": "",
        "failed_message": "",
        "completion_time": None,
    }
    base.update(kw)
    return ts.JobView(**base)


def pod(j: ts.JobView, phase: str = "Running", **kw: Any) -> ts.PodView:
    base: dict[str, Any] = {
        "name": f"{j.name}-abcde",
        "job_uid": j.uid,
        "phase": phase,
        "created": at(30),
        "terminating": False,
        "unschedulable": None,
        "waiting_reason": None,
        "waiting_message": "",
        "terminated_reason": None,
        "exit_code": None,
        "termination_message": "",
        "index": None,
    }
    base.update(kw)
    return ts.PodView(**base)


def started(phase: str = "Running", restarts: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "phase": phase,
        "startTime": iso(60),
        "restarts": restarts,
        "observedGeneration": 1,
        "artifacts": {"version": "v1-11111111"},
        **extra,
    }


def report(**fields: Any) -> ProgressReport:
    return ProgressReport.model_validate({"updatedAt": iso(1), **fields})


def support(t: DeepSeekTraining) -> dict[tuple[str, str], str | None]:
    """Observed supporting children identical to what the builders want (nothing to apply)."""
    from deepseek_operator.builders import training as build

    version = (t.status.artifacts.version if t.status and t.status.artifacts else None) or "v1-11111111"
    out: dict[tuple[str, str], str | None] = {}
    for m in build.support_children(t, build.owner_of(t), version):
        out[(m["kind"], m["metadata"]["name"])] = m["metadata"]["annotations"][build.ANNOTATION_HASH]
    return out


def run(t: DeepSeekTraining, **observed: Any) -> ts.Plan:
    observed.setdefault("children", support(t))
    return ts.plan(t, ts.Observed(**observed), CONFIG, NOW)


def cond(p: ts.Plan, type_: str) -> dict[str, Any]:
    c = next((c for c in p.status.get("conditions", []) if c["type"] == type_), None)
    assert c is not None, f"no {type_} condition in {p.status}"
    return c


def reasons(p: ts.Plan) -> list[str]:
    return [e.reason for e in p.events]


# ---------------------------------------------------------------------------------------------------------


def test_new_training_creates_its_children_and_the_first_job() -> None:
    t = training()
    p = ts.plan(t, ts.Observed(), CONFIG, NOW)
    assert sorted(m["kind"] for m in p.apply) == ["ConfigMap", "ConfigMap", "Role", "RoleBinding", "ServiceAccount"]
    (created,) = p.create_jobs
    assert created["metadata"]["name"] == "r8-train"
    assert created["metadata"]["annotations"]["deepseek.ai/attempt"] == "0"
    st = p.status
    assert (st["phase"], st["startTime"], st["restarts"], st["observedGeneration"]) == ("Pending", iso(0), 0, 1)
    assert st["artifacts"] == {"version": "v1-11111111"}
    assert cond(p, "Running")["reason"] == "Starting"
    assert reasons(p) == ["JobCreated"]


def test_nothing_to_do_when_everything_is_in_place() -> None:
    t = training(started())
    j = job()
    p = run(t, jobs=[j], pods=[pod(j)])
    assert (p.apply, p.create_jobs, p.delete_jobs, p.suspend_jobs) == ([], [], [], [])
    assert p.status["phase"] == "Running"


def test_a_deleted_child_is_applied_again_but_the_run_config_is_frozen_once_started() -> None:
    t = training(started())
    children = support(t)
    children.pop(("Role", "r8-progress"))
    children[("ConfigMap", "r8-config")] = "rendered-by-an-older-operator"
    children[("ServiceAccount", "r8-worker")] = "changed"
    j = job()
    p = run(t, jobs=[j], pods=[pod(j)], children=children)
    assert sorted((m["kind"], m["metadata"]["name"]) for m in p.apply) == [
        ("Role", "r8-progress"),
        ("ServiceAccount", "r8-worker"),
    ]
    before = run(training(), children=children)  # not started yet: the run config follows the spec
    assert ("ConfigMap", "r8-config") in [(m["kind"], m["metadata"]["name"]) for m in before.apply]


def test_created_suspended_starts_nothing() -> None:
    p = run(training(runPolicy={"suspend": True}))
    assert p.create_jobs == []
    assert p.status["phase"] == "Suspended"
    assert "startTime" not in p.status
    assert cond(p, "Suspended")["status"] == "True"


def test_all_pods_running_is_running_and_emits_one_event() -> None:
    t = training(started(phase="Pending"), distributed={"workers": 2})
    j = job()
    one = run(t, jobs=[j], pods=[pod(j), pod(j, phase="Pending", name="r8-train-1")])
    assert one.status["phase"] == "Pending"
    assert cond(one, "Running")["reason"] == "PodsStarting"
    both = run(t, jobs=[j], pods=[pod(j), pod(j, name="r8-train-1")])
    assert both.status["phase"] == "Running"
    assert cond(both, "Running") | {"lastTransitionTime": ""} == {
        "type": "Running",
        "status": "True",
        "reason": "Training",
        "message": "2 of 2 worker pod(s) running (training)",
        "lastTransitionTime": "",
        "observedGeneration": 1,
    }
    assert reasons(both) == ["Running"]


def test_unschedulable_pod_waits_then_fails_after_the_pending_timeout() -> None:
    j = job()
    stuck = {"phase": "Pending", "unschedulable": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}
    t = training(started(phase="Pending"), runPolicy={"pendingTimeoutSeconds": 120})
    waiting = run(t, jobs=[j], pods=[pod(j, created=at(30), **stuck)])
    assert waiting.status["phase"] == "Pending"
    assert cond(waiting, "Running")["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in cond(waiting, "Running")["message"]
    assert reasons(waiting) == ["Unschedulable"]
    assert waiting.requeue_after == pytest.approx(90)
    failed = run(t, jobs=[j], pods=[pod(j, created=at(121), **stuck)])
    assert failed.status["phase"] == "Failed"
    assert cond(failed, "Failed")["reason"] == "Unschedulable"
    assert failed.delete_jobs == ["r8-train"]
    assert reasons(failed) == ["Unschedulable"]
    forever = training(started(phase="Pending"), runPolicy={"pendingTimeoutSeconds": 0})
    assert run(forever, jobs=[j], pods=[pod(j, created=at(10**6), **stuck)]).status["phase"] == "Pending"


@pytest.mark.parametrize(
    ("waiting", "reason"),
    [
        ("ErrImagePull", "ImagePullBackOff"),
        ("ImagePullBackOff", "ImagePullBackOff"),
        ("CreateContainerConfigError", "CreateContainerConfigError"),
    ],
)
def test_waiting_reasons_that_never_resolve_by_themselves(waiting: str, reason: str) -> None:
    j = job()
    t = training(started(phase="Pending"))
    p = run(t, jobs=[j], pods=[pod(j, phase="Pending", waiting_reason=waiting, waiting_message="boom")])
    assert cond(p, "Running")["reason"] == reason


def test_failed_attempt_is_retried_once_and_counted_once() -> None:
    j = job(failed=True, failed_reason="BackoffLimitExceeded")
    dead = pod(j, phase="Failed", terminated_reason="Error", exit_code=1, termination_message="CUDA error")
    t = training(started(), runPolicy={"backoffLimit": 2})
    p = run(t, jobs=[j], pods=[dead])
    assert p.status["restarts"] == 1
    assert p.delete_jobs == ["r8-train"]
    assert p.create_jobs == []
    assert cond(p, "Running")["reason"] == "Restarting"
    assert (
        "attempt 1 of 3 failed (WorkerFailed: pod r8-train-abcde exited with code 1: CUDA error)"
        in (cond(p, "Running")["message"])
    )
    assert reasons(p) == ["Restarting"]
    # The same observation again (the delete not seen yet): no second count, no second event.
    again = run(training(p.status, runPolicy={"backoffLimit": 2}), jobs=[j], pods=[dead])
    assert again.status["restarts"] == 1
    assert reasons(again) == []
    # The old Job is gone: the next attempt starts.
    nxt = run(training(p.status, runPolicy={"backoffLimit": 2}))
    (created,) = nxt.create_jobs
    assert created["metadata"]["annotations"]["deepseek.ai/attempt"] == "1"
    # ... but not while the old one is still terminating.
    wait = run(training(p.status, runPolicy={"backoffLimit": 2}), jobs=[job(terminating=True, failed=True)])
    assert wait.create_jobs == []


def test_retries_exhausted_fail_with_backoff_limit_exceeded_or_oom() -> None:
    j = job(attempt=2, failed=True)
    t = training(started(restarts=2), runPolicy={"backoffLimit": 2})
    p = run(t, jobs=[j], pods=[pod(j, phase="Failed", terminated_reason="Error", exit_code=3)])
    assert p.status["phase"] == "Failed"
    assert cond(p, "Failed")["reason"] == "BackoffLimitExceeded"
    assert "gave up after 3 attempt(s) (runPolicy.backoffLimit 2)" in cond(p, "Failed")["message"]
    assert p.status["completionTime"] == iso(0)
    assert reasons(p) == ["BackoffLimitExceeded"]
    oom = run(t, jobs=[j], pods=[pod(j, phase="Failed", terminated_reason="OOMKilled", exit_code=137)])
    assert cond(oom, "Failed")["reason"] == "OOMKilled"


@pytest.mark.parametrize(("code", "reason"), [(64, "InvalidRunConfig"), (65, "BadData"), (66, "BadArtifact")])
def test_worker_exit_codes_for_bad_input_fail_without_retry(code: int, reason: str) -> None:
    j = job(failed=True, failed_reason="PodFailurePolicy")
    dead = pod(
        j,
        phase="Failed",
        terminated_reason="Error",
        exit_code=code,
        termination_message="dataset.textField: no column 'txt'",
    )
    p = run(training(started(), runPolicy={"backoffLimit": 5}), jobs=[j], pods=[dead])
    assert p.status["phase"] == "Failed"
    assert cond(p, "Failed")["reason"] == reason
    assert "dataset.textField: no column 'txt'" in cond(p, "Failed")["message"]
    assert p.status["restarts"] == 0


def test_train_success_moves_on_to_quantize() -> None:
    j = job(complete=True, completion_time=at(5))
    t = training(started())
    p = run(
        t, jobs=[j], report=report(stage="train", state="succeeded", step=10, totalSteps=10, metrics={"accuracy": 0.9})
    )
    assert cond(p, "Trained")["status"] == "True"
    (created,) = p.create_jobs
    assert created["metadata"]["name"] == "r8-quantize"
    assert p.status["phase"] == "Quantizing"
    assert p.status["metrics"] == {"accuracy": 0.9}
    assert reasons(p) == ["JobCreated", "Quantizing"]


def _quantized(over: bool) -> ProgressReport:
    return report(
        stage="quantize",
        state="succeeded",
        step=6,
        totalSteps=6,
        metrics={"fp32Accuracy": 0.93, "int8Accuracy": 0.90, "accuracyDrop": 0.03},
        overBudget=over,
    )


def test_quantization_over_budget_is_a_success_serving_fp32() -> None:
    trained = started(phase="Quantizing", conditions=[_trained()])
    q = job(stage="quantize", complete=True, completion_time=at(1))
    p = run(training(trained), jobs=[job(complete=True), q], report=_quantized(over=True))
    st = p.status
    assert st["phase"] == "Succeeded"
    assert st["artifacts"] == {
        "version": "v1-11111111",
        "uri": "s3://b/r8/v1-11111111",
        "fp32": "s3://b/r8/v1-11111111/fp32",
        "onnx": "s3://b/r8/v1-11111111/onnx",
        "defaultVariant": "fp32",
        "quantizationOverBudget": True,
    }
    assert st["metrics"]["accuracy"] == 0.93  # the served variant's
    assert cond(p, "Quantized")["reason"] == "QuantizationOverBudget"
    assert "3.00 points" in cond(p, "Quantized")["message"]
    assert cond(p, "Succeeded")["status"] == "True"
    assert reasons(p) == ["QuantizationOverBudget", "Succeeded"]
    within = run(training(trained), jobs=[job(complete=True), q], report=_quantized(over=False))
    assert within.status["artifacts"]["defaultVariant"] == "int8"
    assert within.status["artifacts"]["int8"] == "s3://b/r8/v1-11111111/int8"
    assert within.status["metrics"]["accuracy"] == 0.90


def _trained() -> dict[str, Any]:
    return {
        "type": "Trained",
        "status": "True",
        "reason": "TrainingSucceeded",
        "message": "",
        "lastTransitionTime": iso(30),
    }


def test_success_waits_briefly_for_the_closing_report() -> None:
    trained = started(phase="Quantizing", conditions=[_trained()])
    early = run(
        training(trained), jobs=[job(complete=True), job(stage="quantize", complete=True, completion_time=at(2))]
    )
    assert early.status["phase"] == "Quantizing"
    assert early.requeue_after == pytest.approx(8)
    late = run(
        training(trained), jobs=[job(complete=True), job(stage="quantize", complete=True, completion_time=at(11))]
    )
    assert late.status["phase"] == "Succeeded"
    assert late.status["artifacts"]["defaultVariant"] == "int8"
    assert "quantizationOverBudget" not in late.status["artifacts"]  # unknown without the report
    # The report arrives after all: the finished run's status takes it in.
    after = run(
        training(late.status), jobs=[job(complete=True), job(stage="quantize", complete=True)], report=_quantized(True)
    )
    assert after.status["artifacts"]["defaultVariant"] == "fp32"
    assert reasons(after) == []


def test_quantization_disabled_publishes_fp32_after_training() -> None:
    j = job(complete=True, completion_time=at(1))
    p = run(
        training(started(), quantization={"enabled": False}, training={"lora": {"r": 4}}),
        jobs=[j],
        report=report(stage="train", state="succeeded", step=5, totalSteps=5, metrics={"accuracy": 0.8}),
    )
    assert p.status["phase"] == "Succeeded"
    assert p.create_jobs == []
    art = p.status["artifacts"]
    assert (art["defaultVariant"], art["adapter"]) == ("fp32", "s3://b/r8/v1-11111111/adapter")
    assert "int8" not in art
    assert cond(p, "Quantized")["reason"] == "QuantizationDisabled"
    assert p.status["metrics"]["accuracy"] == 0.8


def test_deadline_counts_from_start_or_resume() -> None:
    j = job()
    t = training(started(), runPolicy={"activeDeadlineSeconds": 50})
    p = run(t, jobs=[j], pods=[pod(j)])
    assert p.status["phase"] == "Failed"
    assert cond(p, "Failed")["reason"] == "DeadlineExceeded"
    assert p.delete_jobs == ["r8-train"]
    resumed = {
        "type": "Suspended",
        "status": "False",
        "reason": "Resumed",
        "message": "",
        "lastTransitionTime": iso(10),
    }
    t2 = training(started(conditions=[resumed]), runPolicy={"activeDeadlineSeconds": 50})
    p2 = run(t2, jobs=[j], pods=[pod(j)])
    assert p2.status["phase"] == "Running"
    assert p2.requeue_after == pytest.approx(40)


def test_suspend_and_resume_a_running_job() -> None:
    j = job()
    p = run(training(started(), runPolicy={"suspend": True}), jobs=[j], pods=[pod(j)])
    assert p.suspend_jobs == [("r8-train", True)]
    assert p.status["phase"] == "Suspended"
    assert reasons(p) == ["Suspended"]
    sj = job(suspend=True)
    back = run(training(p.status), jobs=[sj])
    assert back.suspend_jobs == [("r8-train", False)]
    assert cond(back, "Suspended") | {"lastTransitionTime": ""} == {
        "type": "Suspended",
        "status": "False",
        "reason": "Resumed",
        "message": "runPolicy.suspend is false: the run continues",
        "lastTransitionTime": "",
        "observedGeneration": 1,
    }
    assert reasons(back) == ["Resumed"]


def test_finished_runs_only_wait_for_their_ttl() -> None:
    done = started(phase="Failed", completionTime=iso(10))
    keep = run(training(done, runPolicy={"ttlSecondsAfterFinished": 60}), jobs=[job(failed=True)])
    assert (keep.delete_self, keep.create_jobs, keep.apply) == (False, [], [])
    assert keep.requeue_after == pytest.approx(50)
    gone = run(training(done, runPolicy={"ttlSecondsAfterFinished": 5}))
    assert gone.delete_self
    forever = run(training(done))
    assert not forever.delete_self
    # A finished run never leaves a Job running.
    assert run(training(done), jobs=[job()]).delete_jobs == ["r8-train"]


def test_progress_report_becomes_status_progress() -> None:
    j = job()
    r = report(
        stage="train",
        step=25,
        totalSteps=200,
        epoch=0.5,
        loss=float("nan"),
        learningRate=4e-5,
        evalMetric={"name": "accuracy", "value": 0.71},
        samplesPerSecond=120.5,
        etaSeconds=300.0,
        resumedFromStep=20,
        precision="fp32",
    )
    p = run(training(started()), jobs=[j], pods=[pod(j)], report=r)
    assert p.status["progress"] == {
        "stage": "train",
        "step": 25,
        "totalSteps": 200,
        "percent": 12,
        "epoch": 0.5,
        "learningRate": 4e-5,
        "evalMetric": {"name": "accuracy", "value": 0.71},
        "samplesPerSecond": 120.5,
        "etaSeconds": 300.0,
        "resumedFromStep": 20,
        "precision": "fp32",
        "lastUpdateTime": iso(1),
    }  # the NaN loss is left out rather than written


def test_metrics_are_capped_to_the_schema_bound_keeping_the_headline_ones() -> None:
    many = {f"m{i:03d}": float(i) for i in range(100)} | {"accuracy": 0.5, "macroF1": 0.4}
    big = report(stage="train", state="succeeded", step=5, totalSteps=5, metrics=many)
    p = run(training(started()), jobs=[job(complete=True, completion_time=at(1))], report=big)
    metrics = p.status["metrics"]
    assert len(metrics) == ts.MAX_METRICS
    assert {"accuracy", "macroF1"} <= set(metrics)


def test_status_patch_and_invalid_spec() -> None:
    assert ts.status_patch({"phase": "Running"}, {"phase": "Running"}) is None
    assert ts.status_patch({"phase": "Running", "progress": {"step": 1}}, {"phase": "Failed"}) == {
        "phase": "Failed",
        "progress": None,
    }
    # Keys gone from a nested object are nulled there too (a merge patch would keep them otherwise).
    train = {"phase": "Running", "progress": {"stage": "train", "step": 40, "loss": 0.9, "evalMetric": {"v": 1}}}
    quantize = {"phase": "Quantizing", "progress": {"stage": "quantize", "step": 0}}
    assert ts.status_patch(train, quantize) == {
        "phase": "Quantizing",
        "progress": {"stage": "quantize", "step": 0, "loss": None, "evalMetric": None},
    }
    st = ts.invalid_spec_status({}, [("spec.training.epochs", "must be at least 1")], 4, NOW)
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert (st["phase"], failed["reason"], st["observedGeneration"]) == ("Failed", "InvalidSpec", 4)
    assert failed["message"] == "spec.training.epochs: must be at least 1"
    assert "completionTime" not in st  # not final: a fixed spec is picked up


def test_child_summaries_from_api_bodies() -> None:
    job_body = {
        "kind": "Job",
        "metadata": {
            "name": "r8-train",
            "uid": "u1",
            "labels": {"app.kubernetes.io/component": "train"},
            "annotations": {"deepseek.ai/attempt": "2", "deepseek.ai/artifact-version": "v1-x"},
            "creationTimestamp": "2026-11-28T11:00:00Z",
        },
        "spec": {"suspend": True},
        "status": {
            "conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "exit 64"}],
            "completionTime": None,
        },
    }
    jv = ts.job_view(job_body)
    assert (jv.attempt, jv.version, jv.suspend, jv.failed, jv.failed_reason, jv.stage) == (
        2,
        "v1-x",
        True,
        True,
        "PodFailurePolicy",
        "train",
    )
    pod_body = {
        "kind": "Pod",
        "metadata": {"name": "p", "labels": {"batch.kubernetes.io/controller-uid": "u1"}},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "no GPU"}],
            "containerStatuses": [
                {"name": "worker", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "pull"}}}
            ],
        },
    }
    pv = ts.pod_view(pod_body)
    assert (pv.job_uid, pv.unschedulable, pv.waiting_reason) == ("u1", "no GPU", "ImagePullBackOff")
    cm = {
        "kind": "ConfigMap",
        "metadata": {"name": "r8-progress"},
        "data": {"progress.json": json.dumps({"stage": "train", "step": 3, "updatedAt": iso(0)})},
    }
    rep = ts.progress_report(cm)
    assert rep is not None
    assert rep.step == 3
    assert ts.progress_report({"data": {"progress.json": "{not json"}}) is None
    assert ts.progress_report({"data": {"progress.json": '{"stage": "deploy"}'}}) is None
