"""Status of a DeepSeekInference: model resolution, honest Ready, reasons, transitions (pure functions)."""

from __future__ import annotations

from typing import Any

import pytest
from deepseek_operator import naming
from deepseek_operator.api import DeepSeekInferenceStatus, ResolvedModel, TrainingArtifacts, parse_inference
from deepseek_operator.builders import inference as b
from deepseek_operator.builders.common import Owner
from deepseek_operator.config import OperatorConfig
from deepseek_operator.status import inference as st

OWNER = Owner(naming.API_VERSION, naming.INFERENCE_KIND, "r8", "ml", "uid-1", 2)
NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:05:00Z"


def spec(**fields: Any) -> Any:
    fields.setdefault("model", {"trainingRef": {"name": "train-r8"}})
    body = {
        "apiVersion": naming.API_VERSION,
        "kind": naming.INFERENCE_KIND,
        "metadata": {"name": "r8", "namespace": "ml"},
        "spec": fields,
    }
    return parse_inference(body).spec


def training(phase: str | None, **status: Any) -> st.TrainingView:
    body = {
        "metadata": {"name": "train-r8", "uid": "t-uid"},
        "spec": {"output": {"pvc": {"claimName": "artifacts", "path": "minilm"}}},
        "status": {"phase": phase, **status},
    }
    return st.TrainingView.from_body(body)


ARTIFACTS = {
    "version": "v3",
    "uri": "/mnt/output/minilm/v3",
    "fp32": "/mnt/output/minilm/v3/fp32",
    "int8": "/mnt/output/minilm/v3/int8",
    "onnx": "/mnt/output/minilm/v3/onnx",
    "defaultVariant": "int8",
}


# ---------------------------------------------------------------------------------------------------------
# resolve_model


def test_uri_and_pvc_are_served_as_given() -> None:
    r = st.resolve_model(spec(model={"uri": "s3://b/r8/v7", "variant": "onnx-int8"}), None, None)
    assert r.model == ResolvedModel(uri="s3://b/r8/v7", version="v7", variant="onnx-int8")
    assert r.ready
    r = st.resolve_model(spec(model={"pvc": {"claimName": "models", "path": "r8/v2"}}), None, None)
    assert r.model == ResolvedModel(uri="pvc://models/r8/v2", version="v2", variant="int8")


def test_missing_training() -> None:
    r = st.resolve_model(spec(), None, None)
    assert r.model is None
    assert (r.ready, r.reason) == (False, "TrainingNotFound")
    assert "train-r8" in r.message


@pytest.mark.parametrize("phase", [None, "Pending", "Running", "Quantizing", "Suspended"])
def test_unfinished_training(phase: str | None) -> None:
    t = training(phase, progress={"step": 5, "totalSteps": 10, "percent": 50})
    r = st.resolve_model(spec(), t, None)
    assert r.model is None
    assert (r.ready, r.reason) == (False, "TrainingNotSucceeded")
    assert "50% done" in r.message


def test_failed_training_says_why() -> None:
    t = training(
        "Failed",
        conditions=[
            {
                "type": "Failed",
                "status": "True",
                "reason": "BadData",
                "message": "dataset: no rows",
                "lastTransitionTime": NOW,
            }
        ],
    )
    r = st.resolve_model(spec(), t, None)
    assert (r.model, r.ready, r.reason) == (None, False, "TrainingFailed")
    assert "dataset: no rows" in r.message


def test_succeeded_training_on_a_pvc() -> None:
    r = st.resolve_model(spec(), training("Succeeded", artifacts=ARTIFACTS), None)
    assert r.model == ResolvedModel(
        uri="pvc://artifacts/minilm/v3", version="v3", variant="int8", training="train-r8", training_uid="t-uid"
    )
    assert (r.ready, r.reason) == (True, "ArtifactResolved")


def test_succeeded_training_on_s3_uses_the_reported_uri() -> None:
    body = {
        "metadata": {"name": "train-r8", "uid": "t"},
        "spec": {"output": {"uri": "s3://bucket/runs"}},
        "status": {"phase": "Succeeded", "artifacts": {"version": "v1", "uri": "s3://bucket/runs/v1"}},
    }
    r = st.resolve_model(
        spec(model={"trainingRef": {"name": "train-r8"}, "variant": "fp32"}), st.TrainingView.from_body(body), None
    )
    assert r.model is not None
    assert (r.model.uri, r.model.variant) == ("s3://bucket/runs/v1", "fp32")


def test_int8_over_budget_serves_what_the_artifact_serves() -> None:
    art = {**ARTIFACTS, "defaultVariant": "fp32", "quantizationOverBudget": True}
    r = st.resolve_model(
        spec(model={"trainingRef": {"name": "train-r8"}, "variant": "int8"}), training("Succeeded", artifacts=art), None
    )
    assert r.model is not None
    assert r.model.variant == "fp32"
    assert (r.ready, r.reason) == (True, "Int8OverAccuracyBudget")
    assert "maxAccuracyDrop" in r.message
    r = st.resolve_model(
        spec(model={"trainingRef": {"name": "train-r8"}, "variant": "onnx-int8"}),
        training("Succeeded", artifacts=art),
        None,
    )
    assert r.model is not None
    assert r.model.variant == "onnx-fp32"


def test_a_variant_the_training_did_not_produce() -> None:
    art = {"version": "v3", "fp32": "/x/fp32", "defaultVariant": "fp32"}  # quantization was off
    r = st.resolve_model(
        spec(model={"trainingRef": {"name": "train-r8"}, "variant": "onnx-int8"}),
        training("Succeeded", artifacts=art),
        None,
    )
    assert r.model is not None
    assert (r.model.variant, r.reason) == ("fp32", "VariantUnavailable")


def test_default_variant_follows_the_training() -> None:
    art = {**ARTIFACTS, "defaultVariant": "fp32"}
    r = st.resolve_model(spec(), training("Succeeded", artifacts=art), None)
    assert r.model is not None
    assert r.model.variant == "fp32"


REMEMBERED = ResolvedModel(
    uri="pvc://artifacts/minilm/v3", version="v3", variant="int8", training="train-r8", training_uid="t-uid"
)


def test_deleted_training_keeps_the_remembered_artifact() -> None:
    r = st.resolve_model(spec(), None, REMEMBERED)
    assert r.model == REMEMBERED
    assert (r.ready, r.reason) == (True, "TrainingDeleted")
    assert "stays" in r.message


def test_recreated_training_keeps_serving_until_it_succeeds() -> None:
    r = st.resolve_model(spec(), training("Running"), REMEMBERED)
    assert r.model == REMEMBERED
    assert (r.ready, r.reason) == (True, "PreviousArtifact")


def test_remembered_artifact_of_another_training_is_not_used() -> None:
    other = REMEMBERED.model_copy(update={"training": "someone-else"})
    r = st.resolve_model(spec(), None, other)
    assert (r.model, r.reason) == (None, "TrainingNotFound")


# ---------------------------------------------------------------------------------------------------------
# compute_status


MODEL = ResolvedModel(uri="s3://b/r8/v2", version="v2", variant="int8")


def plan_for(s: Any, model: ResolvedModel | None = MODEL, sm: bool = False) -> b.InferencePlan:
    inf = parse_inference(
        {
            "apiVersion": naming.API_VERSION,
            "kind": naming.INFERENCE_KIND,
            "metadata": {"name": "r8", "namespace": "ml"},
            "spec": s.model_dump(mode="json", by_alias=True, exclude_none=True),
        }
    )
    return b.build(inf, OWNER, model, OperatorConfig(), service_monitor_api=sm)


def dep(
    p: b.InferencePlan, *, replicas: int, updated: int, ready: int, total: int | None = None, **kw: Any
) -> st.DeploymentView:
    fields: dict[str, Any] = {
        "generation": 4,
        "observed_generation": 4,
        "spec_replicas": p.replicas,
        "replicas": total if total is not None else replicas,
        "updated_replicas": updated,
        "ready_replicas": ready,
        "available_replicas": ready,
        "template_hash": p.config_hash,
        "template_uri": MODEL.uri,
        "template_version": MODEL.version,
        "template_variant": MODEL.variant,
    }
    fields.update(kw)
    return st.DeploymentView(**fields)


def pod(name: str, h: str | None, ready: bool = True, **kw: Any) -> st.PodView:
    return st.PodView(name=name, config_hash=h, ready=ready, phase="Running", **kw)


def compute(
    s: Any,
    observed: st.Observed,
    previous: dict[str, Any] | None = None,
    resolution: st.Resolution | None = None,
    p: b.InferencePlan | None = None,
    now: str = NOW,
) -> st.StatusResult:
    resolution = resolution or st.Resolution(MODEL, True, "ArtifactResolved", "serving")
    p = p or plan_for(s, resolution.model)
    result = st.compute_status(
        spec=s, generation=4, previous=previous or {}, resolution=resolution, plan=p, observed=observed, now=now
    )
    DeepSeekInferenceStatus.model_validate(result.status)  # always valid against the CRD's status schema
    return result


def cond(result: st.StatusResult, type_: str) -> dict[str, Any]:
    found = [c for c in result.status["conditions"] if c["type"] == type_]
    assert len(found) == 1
    return found[0]


def test_ready_when_every_replica_serves_the_requested_model() -> None:
    s = spec(replicas=2)
    p = plan_for(s)
    r = compute(
        s, st.Observed(dep(p, replicas=2, updated=2, ready=2), (pod("a", p.config_hash), pod("b", p.config_hash))), p=p
    )
    assert r.phase == "Ready"
    assert cond(r, "Ready")["status"] == "True"
    assert r.status["readyReplicas"] == 2
    assert (r.status["servedModelVersion"], r.status["servedVariant"], r.status["modelUri"]) == (
        "v2",
        "int8",
        MODEL.uri,
    )
    assert r.status["selector"] == p.selector
    assert r.status["url"] == p.url
    assert r.status["observedGeneration"] == 4


def test_rollout_in_progress_is_not_ready_and_old_pods_keep_serving() -> None:
    s = spec(replicas=2)
    p = plan_for(s)
    previous = {"servedModelVersion": "v1", "servedVariant": "int8", "modelUri": "s3://b/r8/v1"}
    observed = st.Observed(
        dep(p, replicas=2, updated=1, ready=2, total=3),
        (pod("old-a", "old"), pod("old-b", "old"), pod("new-a", p.config_hash, ready=False)),
    )
    r = compute(s, observed, previous=previous, p=p)
    assert cond(r, "Ready")["status"] == "False"
    assert cond(r, "Ready")["reason"] == "RolloutInProgress"
    assert "2 pods of the previous model keep serving" in cond(r, "Ready")["message"]
    assert r.phase == "NotReady"
    assert r.status["readyReplicas"] == 0
    assert r.status["servedModelVersion"] == "v1"


def test_crash_looping_new_pods_are_reported_not_hidden() -> None:
    s = spec(replicas=1)
    p = plan_for(s)
    crashing = pod(
        "new", p.config_hash, ready=False, waiting_reason="CrashLoopBackOff", restart_count=3, last_exit_code=1
    )
    r = compute(s, st.Observed(dep(p, replicas=1, updated=1, ready=1, total=2), (pod("old", "old"), crashing)), p=p)
    ready = cond(r, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "CrashLoopBackOff")
    assert "restarted 3 times; last exit code 1" in ready["message"]
    assert r.phase == "NotReady"
    assert ("Warning", "CrashLoopBackOff") in [(t, reason) for t, reason, _ in r.events]


def test_an_artifact_the_server_refuses_makes_the_model_not_ready() -> None:
    s = spec(replicas=1)
    p = plan_for(s)
    bad = pod(
        "new",
        p.config_hash,
        ready=False,
        waiting_reason="CrashLoopBackOff",
        restart_count=2,
        last_exit_code=66,
        last_message="manifest.json: sha256 mismatch for int8/model.pt",
    )
    r = compute(s, st.Observed(dep(p, replicas=1, updated=1, ready=0), (bad,)), p=p)
    model = cond(r, "ModelReady")
    assert (model["status"], model["reason"]) == ("False", "ArtifactInvalid")
    assert "sha256 mismatch" in model["message"]
    assert cond(r, "Ready")["reason"] == "ArtifactInvalid"


@pytest.mark.parametrize(
    ("podview", "reason"),
    [
        (
            st.PodView(name="p", unschedulable="0/3 nodes are available: 3 Insufficient nvidia.com/gpu."),
            "Unschedulable",
        ),
        (
            st.PodView(name="p", waiting_reason="ImagePullBackOff", waiting_message="Back-off pulling"),
            "ImagePullBackOff",
        ),
        (st.PodView(name="p", waiting_reason="ErrImagePull"), "ImagePullBackOff"),
        (
            st.PodView(name="p", waiting_reason="CreateContainerConfigError", waiting_message="secret missing"),
            "CreateContainerConfigError",
        ),
        (st.PodView(name="p", restart_count=1, last_exit_code=137, last_reason="OOMKilled"), "OOMKilled"),
        (st.PodView(name="p", restart_count=1, last_exit_code=64), "InvalidRunConfig"),
        (st.PodView(name="p", waiting_reason="ContainerCreating"), None),
        (st.PodView(name="p", ready=True, restart_count=4, last_exit_code=1), None),
    ],
)
def test_pod_problems(podview: st.PodView, reason: str | None) -> None:
    problem = st.pod_problem(podview)
    assert (problem.reason if problem else None) == reason


def test_unschedulable_pods() -> None:
    s = spec(replicas=1, gpusPerReplica=16)
    p = plan_for(s)
    stuck = st.PodView(
        name="p", config_hash=p.config_hash, unschedulable="0/3 nodes are available: Insufficient nvidia.com/gpu"
    )
    r = compute(s, st.Observed(dep(p, replicas=1, updated=1, ready=0), (stuck,)), p=p)
    assert cond(r, "Ready")["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in cond(r, "Ready")["message"]


def test_deployment_conditions_win_over_pod_state() -> None:
    s = spec(replicas=1)
    p = plan_for(s)
    deadline = dep(
        p,
        replicas=1,
        updated=1,
        ready=0,
        conditions=(("Progressing", "False", "ProgressDeadlineExceeded", 'ReplicaSet "x" has timed out progressing.'),),
    )
    r = compute(
        s,
        st.Observed(
            deadline,
            (
                pod(
                    "p",
                    p.config_hash,
                    ready=False,
                    waiting_reason="CrashLoopBackOff",
                    restart_count=9,
                    last_exit_code=1,
                ),
            ),
        ),
        p=p,
    )
    assert cond(r, "Ready")["reason"] == "ProgressDeadlineExceeded"
    assert "timed out" in cond(r, "Ready")["message"]
    assert "restarted 9 times" in cond(r, "Ready")["message"]
    quota = dep(
        p, replicas=1, updated=0, ready=0, conditions=(("ReplicaFailure", "True", "FailedCreate", "exceeded quota"),)
    )
    r = compute(s, st.Observed(quota, ()), p=p)
    assert (cond(r, "Ready")["reason"], cond(r, "Ready")["message"]) == ("FailedCreate", "exceeded quota")


def test_zero_replicas_is_stopped() -> None:
    s = spec(replicas=0)
    p = plan_for(s)
    r = compute(s, st.Observed(dep(p, replicas=0, updated=0, ready=0), ()), p=p)
    assert r.phase == "Stopped"
    assert cond(r, "Stopped")["status"] == "True"
    assert cond(r, "Ready")["reason"] == "Stopped"
    assert "servedModelVersion" not in r.status  # nothing serves


def test_waiting_for_the_training_is_pending_and_missing_is_failed() -> None:
    s = spec()
    waiting = st.Resolution(None, False, "TrainingNotSucceeded", "waiting")
    r = compute(s, st.Observed(), resolution=waiting, p=plan_for(s, None))
    assert r.phase == "Pending"
    assert (cond(r, "ModelReady")["status"], cond(r, "ModelReady")["reason"]) == ("False", "TrainingNotSucceeded")
    assert cond(r, "Ready")["reason"] == "TrainingNotSucceeded"
    assert r.status["replicas"] == 0
    missing = st.Resolution(None, False, "TrainingNotFound", "no such training")
    assert compute(s, st.Observed(), resolution=missing, p=plan_for(s, None)).phase == "Failed"


def test_service_monitor_condition() -> None:
    s = spec()
    p = plan_for(s)
    assert cond(compute(s, st.Observed(service_monitor_api=False), p=p), "ServiceMonitorReady")["reason"] == (
        "PrometheusOperatorNotInstalled"
    )
    p_sm = plan_for(s, sm=True)
    assert cond(compute(s, st.Observed(service_monitor_api=True), p=p_sm), "ServiceMonitorReady")["status"] == "True"
    off = spec(monitoring={"serviceMonitor": False})
    assert cond(compute(off, st.Observed(service_monitor_api=True)), "ServiceMonitorReady")["reason"] == "Disabled"


def test_unchanged_status_keeps_times_and_posts_no_events() -> None:
    s = spec(replicas=1)
    p = plan_for(s)
    observed = st.Observed(dep(p, replicas=1, updated=1, ready=1), (pod("a", p.config_hash),))
    first = compute(s, observed, p=p, now=NOW)
    again = compute(s, observed, previous=first.status, p=p, now=LATER)
    assert again.status == first.status  # lastUpdateTime and lastTransitionTime unchanged
    assert again.events == []
    assert st.status_patch(first.status, again.status) == {}


def test_transitions_post_events_and_keep_unflipped_times() -> None:
    s = spec(replicas=1)
    p = plan_for(s)
    ready = compute(s, st.Observed(dep(p, replicas=1, updated=1, ready=1), (pod("a", p.config_hash),)), p=p, now=NOW)
    crashing = (pod("a", p.config_hash, ready=False, restart_count=1, last_exit_code=2),)
    broken = compute(
        s, st.Observed(dep(p, replicas=1, updated=1, ready=0), crashing), previous=ready.status, p=p, now=LATER
    )
    assert ("Warning", "CrashLoopBackOff") in [(t, r) for t, r, _ in broken.events]
    assert cond(broken, "Ready")["lastTransitionTime"] == LATER
    assert cond(broken, "ModelReady")["lastTransitionTime"] == NOW  # did not flip
    assert broken.status["lastUpdateTime"] == LATER


def test_status_patch_nulls_removed_fields() -> None:
    assert st.status_patch({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 5}) == {"b": 5, "c": None}


def test_views_from_real_shaped_objects() -> None:
    d = st.DeploymentView.from_body(
        {
            "metadata": {"generation": 3},
            "spec": {
                "replicas": 2,
                "template": {"metadata": {"annotations": {b.ANN_CONFIG_HASH: "h", b.ANN_MODEL_VERSION: "v3"}}},
            },
            "status": {
                "observedGeneration": 3,
                "replicas": 3,
                "updatedReplicas": 1,
                "readyReplicas": 2,
                "conditions": [
                    {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated", "message": "m"}
                ],
            },
        }
    )
    assert (d.generation, d.spec_replicas, d.replicas, d.updated_replicas, d.template_hash) == (3, 2, 3, 1, "h")
    assert d.condition("Progressing") == ("Progressing", "True", "ReplicaSetUpdated", "m")
    p = st.PodView.from_body(
        {
            "metadata": {"name": "x", "annotations": {b.ANN_CONFIG_HASH: "h"}},
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [
                    {
                        "name": b.CONTAINER,
                        "restartCount": 2,
                        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}},
                        "lastState": {"terminated": {"exitCode": 66, "reason": "Error", "message": "bad artifact\n"}},
                    }
                ],
            },
        }
    )
    assert (p.config_hash, p.ready, p.waiting_reason, p.restart_count, p.last_exit_code, p.last_message) == (
        "h",
        False,
        "CrashLoopBackOff",
        2,
        66,
        "bad artifact",
    )
    unsched = st.PodView.from_body(
        {
            "metadata": {"name": "y"},
            "status": {
                "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "no GPU"}
                ]
            },
        }
    )
    assert unsched.unschedulable == "no GPU"
    t = training("Succeeded", artifacts=ARTIFACTS)
    assert t.artifacts == TrainingArtifacts.model_validate(ARTIFACTS)
    assert (t.output_claim, t.output_path, t.uid) == ("artifacts", "minilm", "t-uid")


def test_an_unservable_spec_change_keeps_the_running_pods_and_says_so() -> None:
    s = spec(replicas=1)
    p_old = plan_for(s)
    missing = st.Resolution(None, False, "TrainingNotFound", "DeepSeekTraining other does not exist")
    running = st.Observed(dep(p_old, replicas=1, updated=1, ready=1), (pod("a", p_old.config_hash),))
    r = compute(s, running, previous={"servedModelVersion": "v2"}, resolution=missing, p=plan_for(s, None))
    ready = cond(r, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "TrainingNotFound")
    assert "the running pods keep the old model" in ready["message"]
    assert r.phase == "Failed"
    assert r.status["servedModelVersion"] == "v2"  # still what the ready pods serve
    assert "resolvedModel" not in r.status


def test_invalid_spec_status_names_the_field() -> None:
    from deepseek_operator.api import ApiSpecError
    from deepseek_operator.controllers.inference import _invalid_status

    err = ApiSpecError("DeepSeekInference", [("spec.autoscaling.minReplicas", "must be <= maxReplicas")])
    r = _invalid_status({"phase": "Ready", "readyReplicas": 2}, err, 7)
    assert r.phase == "Failed"
    assert r.status["observedGeneration"] == 7
    assert r.status["readyReplicas"] == 2  # what runs is still reported
    ready = next(c for c in r.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "spec.autoscaling.minReplicas: must be <= maxReplicas" in ready["message"]
    assert ("Warning", "InvalidSpec") in [(t, reason) for t, reason, _ in r.events]
    again = _invalid_status(r.status, err, 7)
    assert again.status["lastUpdateTime"] == r.status["lastUpdateTime"]
    assert again.events == []
