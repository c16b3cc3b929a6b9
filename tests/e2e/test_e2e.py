"""End to end: examples/quickstart.yaml on the dev cluster, on a smaller slice of Reuters R8.

`kubectl apply` → the operator renders the training's Jobs and the inference's Deployment → the node agent
runs the worker pods as real processes (train with bf16, quantize to INT8, serve with dynamic batching) →
predictions over HTTP through the Service's endpoints. Asserts the training's status (phases seen, progress,
metrics, artifacts), the inference's Ready and url, correct predictions, and the series on the operator's and
the model server's /metrics. The quickstart's own reporting code runs here too.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from deepseek_testbed import wait_until
from deepseek_testbed.devcluster import DevCluster
from deepseek_testbed.devcluster_quickstart import (
    SMALL,
    artifact_metrics,
    load_example,
    make_kubectl,
    metric_samples,
    report,
    reuters_test_sample,
    service_of,
)
from deepseek_testbed.node_agent import REPO_ROOT

from tests.e2e.conftest import Kubectl

NAME = "minilm-r8"
R8_LABELS = {"earn", "acq", "crude", "trade", "money-fx", "interest", "ship", "grain"}
# The slice of `scripts/quickstart --small` (see SMALL): what fits the e2e budget on 2 cores.
TRAIN_SAMPLES, EVAL_SAMPLES, BATCH = SMALL["maxTrainSamples"], SMALL["maxEvalSamples"], SMALL["batchSize"]


def smaller_quickstart() -> list[dict[str, Any]]:
    docs = load_example(REPO_ROOT / "examples" / "quickstart.yaml", small=True)
    training = next(d for d in docs if d["kind"] == "DeepSeekTraining")
    assert training["spec"]["dataset"]["maxTrainSamples"] == TRAIN_SAMPLES
    assert training["spec"]["training"]["epochs"] == 1
    return docs


def ready(obj: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (obj.get("status") or {}).get("conditions", []))


def test_quickstart_trains_quantizes_and_serves(kube: Kubectl, dev_cluster: DevCluster) -> None:
    docs = smaller_quickstart()
    assert {d["kind"] for d in docs} == {"PersistentVolumeClaim", "DeepSeekTraining", "DeepSeekInference"}
    kube.apply(docs)

    # Watch the training as a user would, recording every phase and progress report seen.
    phases: list[str] = []
    progress: list[dict[str, Any]] = []
    deadline = time.monotonic() + 900
    training: dict[str, Any] = {}
    while time.monotonic() < deadline:
        training = kube.get("deepseektraining", NAME)
        status = training.get("status") or {}
        if status.get("phase") and (not phases or phases[-1] != status["phase"]):
            phases.append(status["phase"])
        if status.get("progress") and (not progress or progress[-1] != status["progress"]):
            progress.append(status["progress"])
        if status.get("phase") in ("Succeeded", "Failed"):
            break
        time.sleep(1)
    status = training["status"]
    assert status["phase"] == "Succeeded", f"phases {phases}; conditions {status.get('conditions')}"
    assert phases.index("Running") < phases.index("Quantizing") < phases.index("Succeeded"), phases
    train_reports = [p for p in progress if p.get("stage") == "train"]
    assert train_reports, progress
    assert any(p.get("percent", 0) > 0 for p in train_reports)
    assert any(p.get("loss") is not None for p in train_reports)
    assert train_reports[-1]["totalSteps"] == TRAIN_SAMPLES // BATCH  # one epoch
    quantize_reports = [p for p in progress if p.get("stage") == "quantize"]
    assert quantize_reports, progress
    assert quantize_reports[-1]["percent"] == 100
    assert not any("loss" in p or "samplesPerSecond" in p for p in quantize_reports), quantize_reports
    assert status["completionTime"]
    conditions = {c["type"]: c for c in status["conditions"]}
    for kind, reason in (("Trained", None), ("Quantized", "Quantized"), ("Succeeded", None)):
        assert conditions[kind]["status"] == "True", conditions
        assert reason is None or conditions[kind]["reason"] == reason, conditions

    metrics = status["metrics"]
    majority = 0.5  # "earn" is about half of R8: a model must do better than always answering it
    assert metrics["accuracy"] > majority, metrics
    assert metrics["accuracyDrop"] == pytest.approx(metrics["fp32Accuracy"] - metrics["int8Accuracy"], abs=1e-6)
    assert metrics["accuracyDrop"] <= SMALL["maxAccuracyDrop"], metrics
    artifacts = status["artifacts"]
    assert artifacts["version"]
    assert artifacts["defaultVariant"] == "int8", artifacts
    assert artifacts["int8"]
    assert artifacts["fp32"]
    assert artifacts["uri"]

    # The artifact is on the local volume behind the PVC, complete (manifest written last) with its metrics.
    kubectl = make_kubectl(
        {"kubectl": str(dev_cluster.cp.bin_dir / "kubectl"), "kubeconfig": str(dev_cluster.cp.kubeconfig)}
    )
    measured = artifact_metrics(kubectl, kube.namespace, training)
    root = Path(measured.pop("_path"))
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["servedVariant"] == "int8"
    assert set(manifest["variants"]) >= {"fp32", "int8"}
    assert measured["variants"]["int8"]["speedupBatch32"] > 0
    assert measured["evalExamples"] == EVAL_SAMPLES

    # The inference waited for the training, then rolled out the INT8 model on two replicas.
    def inference_ready() -> dict[str, Any] | None:
        obj = kube.get("deepseekinference", NAME)
        return obj if ready(obj) else None

    inference = wait_until(inference_ready, timeout=600, what="the DeepSeekInference to be Ready")
    inf_status = inference["status"]
    assert f"http://{NAME}-serve.{kube.namespace}.svc.cluster.local" == inf_status["url"]
    assert inf_status["readyReplicas"] == 2
    assert inf_status["servedVariant"] == "int8"
    service, _port = service_of(inference)
    assert service == f"{NAME}-serve"

    # Real requests through the Service's ready endpoints (the quickstart's own code), correct predictions.
    state = {
        "kubectl": str(dev_cluster.cp.bin_dir / "kubectl"),
        "kubeconfig": str(dev_cluster.cp.kubeconfig),
        "logs": str(dev_cluster.cp.log_dir),
        "operator_metrics_url": dev_cluster.operator_metrics_url,
    }
    result = report(kubectl, kube.namespace, NAME, training, inference, state, samples=100)
    assert len(result["endpoints"]) == 2
    assert result["predictions"] == 100
    assert result["accuracy"] > majority
    assert result["refused"] == 0
    assert result["speedup"] is not None
    assert result["speedup"] > 0
    endpoint = result["endpoints"][0]
    text, _label = reuters_test_sample(1, seed=7)[0]
    answer = httpx.post(f"http://{endpoint}/classify", json={"text": [text]}, timeout=30).json()
    assert answer["predictions"][0]["label"] in R8_LABELS
    assert set(answer["predictions"][0]["scores"]) == R8_LABELS
    model = httpx.get(f"http://{endpoint}/v2/models/{NAME}", timeout=30).json()
    assert set(model["parameters"]["labels"]) == R8_LABELS
    bad = httpx.post(f"http://{endpoint}/v2/models/{NAME}/infer", json={"inputs": []}, timeout=30)
    assert bad.status_code == 400

    # /metrics of the model server and of the operator carry the expected series.
    served = httpx.get(f"http://{endpoint}/metrics", timeout=30).text
    infer = metric_samples(served, "deepseek_serve_requests_total")
    answered = sum(v for labels, v in infer if "infer" in labels.get("endpoint", "") and labels["status"] == "200")
    assert answered >= 50  # half of the 100 round-robin requests
    assert sum(v for _, v in metric_samples(served, "deepseek_serve_batch_size_count")) > 0
    info = metric_samples(served, "deepseek_serve_model_info")
    assert any(labels.get("variant") == "int8" for labels, _ in info), info
    operator = httpx.get(dev_cluster.operator_metrics_url, timeout=30).text
    reconciles = metric_samples(operator, "deepseek_operator_reconcile_total")
    assert {labels.get("kind") for labels, _ in reconciles} >= {"DeepSeekTraining", "DeepSeekInference"}, reconciles
    phases_metric = metric_samples(operator, "deepseek_operator_resources")
    assert ({"kind": "DeepSeekTraining", "phase": "Succeeded"}, 1.0) in phases_metric, phases_metric
    assert ({"kind": "DeepSeekInference", "phase": "Ready"}, 1.0) in phases_metric, phases_metric
    assert metric_samples(operator, "deepseek_operator_training_phase")

    # kubectl logs works for the worker pods (through the node agent's kubelet API).
    pods = json.loads(kube("get", "pods", "-l", f"deepseek.ai/training={NAME}", "-o", "json"))["items"]
    assert pods, "no training pods left to read logs from"
    assert kube("logs", pods[0]["metadata"]["name"]).strip()
