"""A DeepSeekTraining from apply to Succeeded on the cluster fixture, with the operator in-process.

Pods run on kwok's fake nodes (the fate `run-forever`, then `succeed-after` when the test lets a stage end);
progress reports are sent the way the worker sends them (ProgressReporter with the run's ServiceAccount
token), which also proves the RBAC the operator created.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from deepseek_operator import k8s
from deepseek_operator.builders import training as build
from deepseek_testbed import ControlPlane, wait_until
from deepseek_workers.runconfig import parse_train_config
from prometheus_client import REGISTRY

from tests.fixtures import training as tr
from tests.fixtures.operator import OperatorRunner


class PhaseRecorder:
    """Every distinct status.phase the API server stores for one training, in order (a watch in a thread)."""

    def __init__(self, kube: ControlPlane, namespace: str, name: str) -> None:
        self.phases: list[str] = []
        self._stop = threading.Event()
        self._client = kube.client()
        self._thread = threading.Thread(target=self._run, args=(namespace, name), daemon=True)
        self._thread.start()

    def _run(self, namespace: str, name: str) -> None:
        while not self._stop.is_set():
            try:
                for _, obj in self._client.watch(
                    k8s.DeepSeekTraining, namespace=namespace, fields={"metadata.name": name}, server_timeout=5
                ):
                    phase = (obj.status or {}).get("phase") if isinstance(obj.status, dict) else None
                    if phase and (not self.phases or self.phases[-1] != phase):
                        self.phases.append(phase)
                    if self._stop.is_set():
                        return
            except Exception:
                if self._stop.wait(0.5):
                    return

    def stop(self) -> list[str]:
        self._stop.set()
        return self.phases


def _sample(metric: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(metric, labels)


@pytest.fixture
def restricted(kube_cluster: ControlPlane, namespace: str) -> str:
    """The test namespace enforces Pod Security `restricted`: worker pods must pass it to exist at all."""
    kube_cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    return namespace


def test_training_reaches_succeeded_through_every_phase(
    kube_cluster: ControlPlane, restricted: str, operator: OperatorRunner, tmp_path: Path, monkeypatch: Any
) -> None:
    ns, name = restricted, "r8"
    names = build.names(name)
    recorder = PhaseRecorder(kube_cluster, ns, name)
    tr.apply(kube_cluster, ns, tr.training_manifest(name, fate=tr.run_forever()))

    st = tr.wait_phase(kube_cluster, ns, name, "Running")
    version = st["artifacts"]["version"]
    assert st["startTime"]
    assert st["observedGeneration"] == 1
    assert st["restarts"] == 0
    assert tr.condition(st, "Running")["status"] == "True"

    # The children, as the worker pods and users see them.
    client = kube_cluster.client()
    cm = client.get(k8s.KINDS["ConfigMap"], names.config, namespace=ns)
    run = parse_train_config((cm.data or {})[build.RUN_CONFIG_KEY])
    assert (run.artifact_version, run.output_uri) == (version, f"s3://artifacts/{name}")
    assert (run.progress.config_map, run.source.name, run.source.uid) == (
        names.progress,
        name,
        _uid(kube_cluster, ns, name),
    )
    role = client.get(k8s.KINDS["Role"], names.role, namespace=ns)
    assert [(r.resourceNames, r.verbs) for r in role.rules] == [([names.progress], ["get", "patch"])]
    (job,) = tr.jobs(kube_cluster, ns, name)
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == names.service_account
    (pod,) = tr.pods(kube_cluster, ns, name, "train")
    assert pod["spec"]["containers"][0]["command"] == ["deepseek-worker", "train", "--config", "/etc/deepseek/run.json"]
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Job"

    # The worker's service account may touch its progress ConfigMap and nothing else.
    sa = f"system:serviceaccount:{ns}:{names.service_account}"
    for verb, resource, allowed in (
        ("patch", f"configmaps/{names.progress}", "yes"),
        ("get", f"configmaps/{names.progress}", "yes"),
        ("patch", f"configmaps/{names.config}", "no"),
        ("patch", f"deepseektrainings.deepseek.ai/{name}", "no"),
        ("list", "configmaps", "no"),
    ):
        answer = kube_cluster.kubectl("auth", "can-i", verb, resource, "-n", ns, "--as", sa, check=False).stdout
        assert answer.strip() == allowed, (verb, resource, answer)

    worker = tr.WorkerSide(kube_cluster, ns, name, tmp_path, monkeypatch)
    worker.report(stage="train", step=10, totalSteps=100, epoch=0.1, loss=1.25, learningRate=5e-5, etaSeconds=90.0)
    st = wait_until(
        lambda: (s := tr.status(kube_cluster, ns, name)).get("progress", {}).get("step") == 10 and s,
        timeout=30,
        what="status.progress from the first report",
    )
    progress = st["progress"]
    assert (progress["percent"], progress["loss"], progress["stage"], progress["etaSeconds"]) == (
        10,
        1.25,
        "train",
        90.0,
    )
    assert progress["lastUpdateTime"]
    assert _sample("deepseek_operator_training_progress_ratio", namespace=ns, name=name) == pytest.approx(0.1)
    assert _sample("deepseek_operator_training_loss", namespace=ns, name=name) == pytest.approx(1.25)
    assert (_sample("deepseek_operator_training_last_progress_timestamp_seconds", namespace=ns, name=name) or 0) > 0

    worker.report(
        stage="train",
        state="succeeded",
        step=100,
        totalSteps=100,
        epoch=1.0,
        evalMetric={"name": "accuracy", "value": 0.93},
        artifactUri=f"s3://artifacts/{name}/trained/{version}",
        metrics={"accuracy": 0.93, "macroF1": 0.9, "trainLoss": 0.2},
    )
    tr.finish_pods(kube_cluster, ns, name, "train")
    st = tr.wait_phase(kube_cluster, ns, name, "Quantizing")
    assert tr.condition(st, "Trained")["status"] == "True"
    assert {j["metadata"]["name"] for j in tr.jobs(kube_cluster, ns, name)} == {names.train_job, names.quantize_job}

    wait_until(lambda: tr.pods(kube_cluster, ns, name, "quantize"), timeout=30, what="the quantize pod")
    (qpod,) = tr.pods(kube_cluster, ns, name, "quantize")
    assert qpod["spec"]["containers"][0]["command"][:2] == ["deepseek-worker", "quantize"]
    worker.report(stage="quantize", step=2, totalSteps=6, message="quantizing")
    worker.report(
        stage="quantize",
        state="succeeded",
        step=6,
        totalSteps=6,
        artifactUri=f"s3://artifacts/{name}/{version}",
        metrics={"fp32Accuracy": 0.93, "int8Accuracy": 0.925, "accuracyDrop": 0.005, "int8SpeedupBatch1": 2.1},
        overBudget=False,
    )
    wait_until(lambda: _pod_running(kube_cluster, ns, name, "quantize"), timeout=30, what="the quantize pod to run")
    tr.finish_pods(kube_cluster, ns, name, "quantize")
    st = tr.wait_phase(kube_cluster, ns, name, "Succeeded")

    uri = f"s3://artifacts/{name}/{version}"
    assert st["artifacts"] == {
        "version": version,
        "uri": uri,
        "fp32": f"{uri}/fp32",
        "int8": f"{uri}/int8",
        "onnx": f"{uri}/onnx",
        "defaultVariant": "int8",
        "quantizationOverBudget": False,
    }
    assert st["metrics"]["accuracy"] == pytest.approx(0.925)  # the served (INT8) variant's accuracy
    assert st["metrics"]["macroF1"] == pytest.approx(0.9)
    assert st["completionTime"] >= st["startTime"]
    assert tr.condition(st, "Succeeded")["status"] == "True"
    assert tr.condition(st, "Quantized")["reason"] == "Quantized"
    assert tr.condition(st, "Running")["status"] == "False"

    wait_until(lambda: "Succeeded" in tr.event_reasons(kube_cluster, ns, name), timeout=15, what="the Succeeded event")
    reasons = tr.event_reasons(kube_cluster, ns, name)
    assert [r for r in reasons if r in ("JobCreated", "Running", "Quantizing", "Succeeded")] == [
        "JobCreated",
        "Running",
        "JobCreated",
        "Quantizing",
        "Succeeded",
    ], reasons
    assert recorder.stop() == ["Pending", "Running", "Quantizing", "Succeeded"]
    assert _sample("deepseek_operator_training_phase", namespace=ns, name=name, phase="Succeeded") == 1.0
    # The printer columns a user sees.
    row = kube_cluster.kubectl("get", "dstrain", name, "-n", ns, "--no-headers").stdout.split()
    assert row[:3] == [name, "Succeeded", "100"]


def _uid(kube: ControlPlane, ns: str, name: str) -> str:
    body = tr.get(kube, ns, name)
    assert body is not None
    return str(body["metadata"]["uid"])


def _pod_running(kube: ControlPlane, ns: str, name: str, stage: str) -> bool:
    return any(p["status"].get("phase") == "Running" for p in tr.pods(kube, ns, name, stage))
