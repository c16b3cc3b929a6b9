"""The quickstart's example handling (scripts/quickstart): `--small` patches the real example, bad input is a
clear error before any cluster starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from deepseek_testbed.devcluster_quickstart import (
    SMALL,
    inference_line,
    load_example,
    main,
    metric_samples,
    service_of,
    training_line,
)
from deepseek_testbed.errors import TestbedError
from deepseek_testbed.node_agent import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "quickstart.yaml"


def test_example_unchanged_without_small() -> None:
    docs = load_example(EXAMPLE)
    training = next(d for d in docs if d["kind"] == "DeepSeekTraining")
    assert "maxTrainSamples" not in training["spec"]["dataset"]
    assert training["spec"]["training"]["precision"] == "bf16"


def test_small_slices_the_training_and_keeps_the_rest() -> None:
    docs = load_example(EXAMPLE, small=True)
    assert [d["kind"] for d in docs] == ["PersistentVolumeClaim", "DeepSeekTraining", "DeepSeekInference"]
    training = next(d for d in docs if d["kind"] == "DeepSeekTraining")["spec"]
    assert training["dataset"]["maxTrainSamples"] == SMALL["maxTrainSamples"]
    assert training["dataset"]["maxEvalSamples"] == SMALL["maxEvalSamples"]
    assert training["dataset"]["builtin"] == "reuters-r8"
    assert training["training"]["epochs"] == 1
    assert training["training"]["precision"] == "bf16"  # still the quickstart's mixed precision
    assert training["quantization"] == {**training["quantization"], "enabled": True, "maxAccuracyDrop": 0.05}
    inference = next(d for d in docs if d["kind"] == "DeepSeekInference")["spec"]
    assert inference["model"]["variant"] == "int8"
    assert inference["batching"]["maxBatchSize"] == 32


def test_bad_example_is_refused_before_anything_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["--example", str(missing), "--workdir", str(tmp_path / "dc")]) == 2
    assert "--example" in capsys.readouterr().err
    only_pvc = tmp_path / "pvc.yaml"
    only_pvc.write_text("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: x}\n")
    assert main(["--example", str(only_pvc), "--workdir", str(tmp_path / "dc")]) == 2
    assert "needs a DeepSeekTraining and a DeepSeekInference" in capsys.readouterr().err
    assert not (tmp_path / "dc").exists()
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [unclosed\n")
    with pytest.raises(TestbedError, match=r"broken\.yaml"):
        load_example(broken)


def test_service_of_and_metric_samples() -> None:
    assert service_of({"status": {"url": "http://m-serve.ns.svc.cluster.local"}}) == ("m-serve", "80")
    assert service_of({"status": {"url": "http://m-serve.ns.svc.cluster.local:8080/v2"}}) == ("m-serve", "8080")
    text = (
        "# HELP x\n"
        'deepseek_serve_requests_total{endpoint="infer",status="200"} 7.0\n'
        "deepseek_serve_requests_total_created 1.7e9\n"
        "deepseek_up 1\n"
    )
    assert metric_samples(text, "deepseek_serve_requests_total") == [({"endpoint": "infer", "status": "200"}, 7.0)]
    assert metric_samples(text, "deepseek_up") == [({}, 1.0)]


def test_progress_lines() -> None:
    train = {
        "status": {
            "phase": "Running",
            "progress": {"stage": "train", "percent": 40, "step": 16, "totalSteps": 40, "epoch": 0.4, "loss": 1.18},
        }
    }
    assert training_line(train) == "Running train 40% (step 16/40, epoch 0.40, loss 1.180)"
    train["status"]["progress"]["precision"] = "fp32"  # type: ignore[index]
    assert training_line(train) == "Running train 40% (step 16/40, epoch 0.40, fp32, loss 1.180)"
    # A quantize report's status.progress may still carry the train stage's loss and throughput: not shown.
    quantize = {
        "status": {
            "phase": "Quantizing",
            "progress": {"stage": "quantize", "percent": 16, "step": 1, "totalSteps": 6, "loss": 0.9, "etaSeconds": 0},
        }
    }
    assert training_line(quantize) == "Quantizing quantize 16% (step 1/6)"
    pending = {
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "Running", "status": "False", "reason": "PodsStarting", "message": "0 of 1"}],
        }
    }
    assert training_line(pending) == "Pending - PodsStarting: 0 of 1"
    inference = {"spec": {"replicas": 2}, "status": {"phase": "Pending", "readyReplicas": 1, "conditions": []}}
    assert inference_line(inference) == "Pending, 1/2 ready"
