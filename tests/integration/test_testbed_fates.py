"""Each `testbed.deepseek.ai/fate` annotation produces its pod state, with the real Job controller reacting.

All workloads are created at once (module fixture) and each test waits for its own outcome, so the fates play
out in parallel instead of one after another.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import lightkube
import pytest
from deepseek_testbed import ControlPlane, fate_annotations, wait_until
from deepseek_testbed.fates import DEFAULT_RUN_SECONDS
from lightkube import codecs
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Pod

from tests.integration.test_testbed import job_condition, job_manifest, job_pods, pod_manifest

JOBS: dict[str, dict[str, Any]] = {
    "default": job_manifest("default"),
    "fail": job_manifest("fail", annotations=fate_annotations("fail", exit_code=3, run_seconds=0)),
    "policy": job_manifest(
        "policy",
        annotations=fate_annotations("fail", exit_code=64, run_seconds=0),
        backoffLimit=5,
        podFailurePolicy={"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [64]}}]},
    ),
    "forever": job_manifest("forever", annotations=fate_annotations("run-forever")),
    "restarts": job_manifest("restarts", annotations=fate_annotations("crash-loop"), backoffLimit=2),
}
JOBS["restarts"]["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
PODS: dict[str, dict[str, Any]] = {
    "oom": pod_manifest("oom", annotations=fate_annotations("oom", run_seconds=0)),
    "image-pull": pod_manifest("image-pull", annotations=fate_annotations("image-pull")),
    "crash-loop": pod_manifest("crash-loop", annotations=fate_annotations("crash-loop", exit_code=2), restart="Always"),
    "fail-always": pod_manifest(
        "fail-always", annotations=fate_annotations("fail", exit_code=7, run_seconds=0), restart="Always"
    ),
    "succeed-after": pod_manifest("succeed-after", annotations=fate_annotations("succeed-after", run_seconds=1)),
    "typo": pod_manifest("typo", annotations={"testbed.deepseek.ai/fate": "explode"}),
}


@pytest.fixture(scope="module")
def fates(kube_cluster: ControlPlane) -> Iterator[tuple[lightkube.Client, str]]:
    ns = kube_cluster.create_namespace("fates")
    client = kube_cluster.client()
    for manifest in [*JOBS.values(), *PODS.values()]:
        client.create(codecs.from_dict(manifest), namespace=ns)
    yield client, ns
    kube_cluster.delete_namespace(ns)


def pod(client: lightkube.Client, ns: str, name: str) -> Any:
    return client.get(Pod, name, namespace=ns).status


def container(status: Any) -> Any:
    return status.containerStatuses[0] if status and status.containerStatuses else None


def test_fail_terminates_with_the_exit_code_and_the_job_counts_a_failure(fates: tuple[lightkube.Client, str]) -> None:
    client, ns = fates
    cond = wait_until(lambda: job_condition(client, "fail", ns, "Failed"), timeout=60, what="Job fail to fail")
    assert cond.reason == "BackoffLimitExceeded"
    assert client.get(Job, "fail", namespace=ns).status.failed == 1
    (failed,) = job_pods(client, "fail", ns)
    assert failed.status.phase == "Failed"
    terminated = failed.status.containerStatuses[0].state.terminated
    assert (terminated.exitCode, terminated.reason) == (3, "Error")


def test_pod_failure_policy_sees_the_exit_code(fates: tuple[lightkube.Client, str]) -> None:
    client, ns = fates
    cond = wait_until(lambda: job_condition(client, "policy", ns, "Failed"), timeout=60, what="Job policy to fail")
    # FailJob on exit code 64 ends the Job at once although backoffLimit would allow 5 retries.
    assert cond.reason == "PodFailurePolicy"
    assert client.get(Job, "policy", namespace=ns).status.failed == 1


def test_oom_terminates_with_oomkilled_137(fates: tuple[lightkube.Client, str]) -> None:
    client, ns = fates
    status = wait_until(
        lambda: (s := pod(client, ns, "oom")) and s.phase == "Failed" and s, timeout=60, what="pod oom to fail"
    )
    terminated = container(status).state.terminated
    assert (terminated.exitCode, terminated.reason) == (137, "OOMKilled")


def test_image_pull_stays_pending_in_image_pull_backoff(fates: tuple[lightkube.Client, str]) -> None:
    client, ns = fates
    status = wait_until(lambda: (s := pod(client, ns, "image-pull")) and container(s) and s, timeout=60, what="status")
    assert status.phase == "Pending"
    assert container(status).state.waiting.reason == "ImagePullBackOff"
    assert container(status).ready is False
    # Still not started once a sibling that runs for 1 s has finished (positive control for "never starts").
    wait_until(lambda: pod(client, ns, "succeed-after").phase == "Succeeded", timeout=60, what="succeed-after")
    assert pod(client, ns, "image-pull").phase == "Pending"


def test_crash_loop_is_running_never_ready_and_restarts(fates: tuple[lightkube.Client, str]) -> None:
    client, ns = fates
    status = wait_until(
        lambda: (s := pod(client, ns, "crash-loop")) and (container(s).restartCount if container(s) else 0) >= 2 and s,
        timeout=60,
        what="crash-loop to restart twice",
    )
    assert status.phase == "Running"
    c = container(status)
    assert c.ready is False
    assert c.state.waiting.reason == "CrashLoopBackOff"
    assert c.lastState.terminated.exitCode == 2
    assert {x.type: x.status for x in status.conditions}["Ready"] == "False"


def test_fail_in_a_restarting_pod_becomes_a_crash_loop(fates: tuple[lightkube.Client, str]) -> None:
    client, ns = fates
    status = wait_until(
        lambda: (s := pod(client, ns, "fail-always")) and container(s) and container(s).state.waiting and s,
        timeout=60,
        what="fail-always to crash",
    )
    assert status.phase == "Running"
    assert container(status).state.waiting.reason == "CrashLoopBackOff"
    assert container(status).lastState.terminated.exitCode == 7


def test_restarts_count_against_backoff_limit_with_on_failure(fates: tuple[lightkube.Client, str]) -> None:
    client, ns = fates
    cond = wait_until(lambda: job_condition(client, "restarts", ns, "Failed"), timeout=60, what="Job restarts to fail")
    assert cond.reason == "BackoffLimitExceeded"


def test_run_forever_keeps_a_job_running(fates: tuple[lightkube.Client, str]) -> None:
    client, ns = fates

    def forever_running_for(seconds: float) -> bool:
        pods = job_pods(client, "forever", ns)
        start = pods[0].status.startTime if pods and pods[0].status else None
        return bool(start and (datetime.now(UTC) - start).total_seconds() >= seconds)

    # The fate-less Job created at the same time completes after 2 s; the run-forever one outlives that by far.
    wait_until(
        lambda: job_condition(client, "default", ns, "Complete") and forever_running_for(2 * DEFAULT_RUN_SECONDS + 1),
        timeout=60,
        what="Job default to complete and Job forever to run for 5 s",
    )
    (forever,) = job_pods(client, "forever", ns)
    assert forever.status.phase == "Running"
    assert {c.type: c.status for c in forever.status.conditions}["Ready"] == "True"
    job = client.get(Job, "forever", namespace=ns)
    assert job.status.active == 1
    assert not job_condition(client, "forever", ns, "Complete")


def test_succeed_after_completes_a_bare_pod(fates: tuple[lightkube.Client, str]) -> None:
    client, ns = fates
    status = wait_until(
        lambda: (s := pod(client, ns, "succeed-after")) and s.phase == "Succeeded" and s,
        timeout=60,
        what="succeed-after to succeed",
    )
    terminated = container(status).state.terminated
    assert (terminated.exitCode, terminated.reason) == (0, "Completed")


def test_unknown_fate_is_reported_on_the_pod(fates: tuple[lightkube.Client, str]) -> None:
    client, ns = fates
    status = wait_until(lambda: (s := pod(client, ns, "typo")) and container(s) and s, timeout=60, what="typo status")
    assert status.phase == "Pending"
    waiting = container(status).state.waiting
    assert waiting.reason == "CreateContainerConfigError"
    assert 'fate="explode"' in waiting.message
    assert "testbed.deepseek.ai/fate must be one of succeed-after" in waiting.message


def test_fate_annotations_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="fate 'explode' is not one of"):
        fate_annotations("explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"exit_code must be within 0\.\.255"):
        fate_annotations("fail", exit_code=300)
    assert fate_annotations("succeed-after", run_seconds=1.5) == {
        "testbed.deepseek.ai/fate": "succeed-after",
        "testbed.deepseek.ai/run-seconds": "1.5",
    }
