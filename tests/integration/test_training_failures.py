"""How a DeepSeekTraining fails, with the reason taken from what happened to its pods (cluster fixture,
operator in-process): retries exhausted, OOM, a worker's bad-data exit code, deadline, unschedulable GPUs,
an image that cannot be pulled."""

from __future__ import annotations

import json

import pytest
from deepseek_operator.builders import training as build
from deepseek_testbed import ControlPlane, fate_annotations, wait_until
from deepseek_workers.runconfig import parse_train_config

from tests.fixtures import training as tr
from tests.fixtures.operator import OperatorRunner


def _run_config(kube: ControlPlane, ns: str, name: str) -> tuple[str, str] | None:
    """(uid, run.json) of the run config ConfigMap, or None before it exists."""
    res = kube.kubectl("get", "configmap", build.names(name).config, "-n", ns, "-o", "json", check=False)
    if res.returncode != 0:
        return None
    cm = json.loads(res.stdout)
    return cm["metadata"]["uid"], cm["data"][build.RUN_CONFIG_KEY]


def _pod_names(kube: ControlPlane, ns: str, name: str) -> set[str]:
    return {p["metadata"]["name"] for p in tr.pods(kube, ns, name, "train")}


def test_backoff_exhausted_fails_with_backoff_limit_exceeded(
    kube_cluster: ControlPlane, namespace: str, operator: OperatorRunner
) -> None:
    ns, name = namespace, "flaky"
    fate = fate_annotations("fail", exit_code=1, run_seconds=0.5)
    tr.apply(kube_cluster, ns, tr.training_manifest(name, fate=fate, runPolicy={"backoffLimit": 1}))
    first_config = wait_until(lambda: _run_config(kube_cluster, ns, name), timeout=30, what="the run config")

    st = tr.wait_phase(kube_cluster, ns, name, "Failed", timeout=90)
    failed = tr.condition(st, "Failed")
    assert failed is not None
    assert failed["reason"] == "BackoffLimitExceeded"
    assert "exited with code 1" in failed["message"]
    assert "gave up after 2 attempt(s) (runPolicy.backoffLimit 1)" in failed["message"]
    assert st["restarts"] == 1
    assert st["completionTime"]
    reasons = tr.event_reasons(kube_cluster, ns, name)
    assert reasons.count("JobCreated") == 2
    assert reasons.count("Restarting") == 1
    assert reasons[-1] == "BackoffLimitExceeded"
    # The second attempt ran in a fresh Job (same name, next attempt) with its own pod.
    (job,) = tr.jobs(kube_cluster, ns, name)
    assert job["metadata"]["annotations"]["deepseek.ai/attempt"] == "1"
    # ...reading the same run config: same output location, so its workers resume from the newest checkpoint
    # under <outputUri>/checkpoints, and the same artifact version.
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["run-config"]["configMap"]["name"] == build.names(name).config
    assert _run_config(kube_cluster, ns, name) == first_config
    cfg = parse_train_config(first_config[1])
    assert (cfg.output_uri, cfg.artifact_version) == (f"s3://artifacts/{name}", st["artifacts"]["version"])


def test_oom_fails_with_oomkilled(kube_cluster: ControlPlane, namespace: str, operator: OperatorRunner) -> None:
    ns, name = namespace, "hungry"
    fate = fate_annotations("oom", run_seconds=0.5)
    tr.apply(kube_cluster, ns, tr.training_manifest(name, fate=fate, runPolicy={"backoffLimit": 0}))

    st = tr.wait_phase(kube_cluster, ns, name, "Failed", timeout=60)
    failed = tr.condition(st, "Failed")
    assert failed is not None
    assert failed["reason"] == "OOMKilled"
    assert "raise resources.limits.memory" in failed["message"]
    assert st["restarts"] == 0


def test_bad_data_exit_code_fails_at_once_without_retries(
    kube_cluster: ControlPlane, namespace: str, operator: OperatorRunner
) -> None:
    ns, name = namespace, "bad-data"
    fate = fate_annotations("fail", exit_code=65, run_seconds=0.5)
    tr.apply(kube_cluster, ns, tr.training_manifest(name, fate=fate, runPolicy={"backoffLimit": 3}))

    st = tr.wait_phase(kube_cluster, ns, name, "Failed", timeout=60)
    failed = tr.condition(st, "Failed")
    assert failed is not None
    assert failed["reason"] == "BadData"
    assert "exit code 65" in failed["message"]
    assert "testbed fate fail" in failed["message"]  # the pod's termination message, as the worker writes it
    assert st["restarts"] == 0
    (job,) = tr.jobs(kube_cluster, ns, name)
    assert {c["type"]: c.get("reason") for c in job["status"]["conditions"]}["Failed"] == "PodFailurePolicy"


def test_deadline_set_while_running_fails_with_deadline_exceeded(
    kube_cluster: ControlPlane, namespace: str, operator: OperatorRunner
) -> None:
    """runPolicy may change after the start, and a new deadline takes effect at once."""
    ns, name = namespace, "slow"
    tr.apply(kube_cluster, ns, tr.training_manifest(name, fate=tr.run_forever()))
    tr.wait_phase(kube_cluster, ns, name, "Running")

    kube_cluster.kubectl(
        "patch", "dstrain", name, "-n", ns, "--type=merge", "-p", '{"spec":{"runPolicy":{"activeDeadlineSeconds":2}}}'
    )
    st = tr.wait_phase(kube_cluster, ns, name, "Failed", timeout=60)
    failed = tr.condition(st, "Failed")
    assert failed is not None
    assert failed["reason"] == "DeadlineExceeded"
    assert "activeDeadlineSeconds (2s)" in failed["message"]
    # The worker pods are stopped: the Job is deleted (foreground, its pods first).
    wait_until(lambda: not tr.jobs(kube_cluster, ns, name), timeout=60, what="the running Job to be deleted")
    wait_until(lambda: not tr.pods(kube_cluster, ns, name), timeout=60, what="the worker pods to go")


@pytest.mark.parametrize(
    ("case", "spec", "fate", "reason", "detail"),
    [
        # 16 GPUs per pod: the fake GPU nodes have 8 each, so the real scheduler cannot place it.
        ("gpus", {"distributed": {"gpusPerWorker": 16}}, None, "Unschedulable", "Insufficient nvidia.com/gpu"),
        ("image", {}, fate_annotations("image-pull"), "ImagePullBackOff", "Back-off pulling image"),
    ],
)
def test_pod_that_cannot_start_fails_after_the_pending_timeout(
    kube_cluster: ControlPlane,
    namespace: str,
    operator: OperatorRunner,
    case: str,
    spec: dict[str, object],
    fate: dict[str, str] | None,
    reason: str,
    detail: str,
) -> None:
    ns, name = namespace, f"stuck-{case}"
    manifest = tr.training_manifest(name, fate=fate, runPolicy={"pendingTimeoutSeconds": 600}, **spec)
    tr.apply(kube_cluster, ns, manifest)

    def pending_with_reason() -> bool:
        st = tr.status(kube_cluster, ns, name)
        running = tr.condition(st, "Running") or {}
        return st.get("phase") == "Pending" and running.get("reason") == reason

    wait_until(pending_with_reason, timeout=60, what=f"phase Pending with reason {reason}")
    # The timeout is run policy: shortening it on the waiting run takes effect at once.
    kube_cluster.kubectl(
        "patch", "dstrain", name, "-n", ns, "--type=merge", "-p", '{"spec":{"runPolicy":{"pendingTimeoutSeconds":1}}}'
    )
    st = tr.wait_phase(kube_cluster, ns, name, "Failed", timeout=60)
    failed = tr.condition(st, "Failed")
    assert failed is not None
    assert failed["reason"] == reason
    assert detail in failed["message"]
    assert "pendingTimeoutSeconds 1)" in failed["message"]
    reasons = tr.event_reasons(kube_cluster, ns, name)
    assert reasons.count(reason) == 2  # the warning when it got stuck, and the failure
