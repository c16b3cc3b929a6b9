"""Serving published artifacts (docs/artifact.md): fp32 and ONNX variants, verification before ready, exit 66."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from deepseek_workers.artifact import write_artifact
from deepseek_workers.runconfig import EXIT_BAD_ARTIFACT, SourceRef, dump
from transformers import AutoModelForSequenceClassification

from tests.fixtures.ml import FineTunedClassifier
from tests.serving.conftest import LiveServer, free_port, in_process_server, serve_config

TEXTS = ["opec agreed to cut crude oil output", "the bank raised its prime lending rate", "net profit per share rose"]


class _Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def artifact(finetuned_minilm_r8: FineTunedClassifier, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A published artifact v7 of the fine-tuned MiniLM with an fp32 and an ONNX (fp32) variant."""
    uri = tmp_path_factory.mktemp("artifacts") / "v7"
    src = SourceRef(kind="DeepSeekTraining", namespace="test", name="r8", uid="u", generation=7)
    with write_artifact(str(uri), version="v7", source=src, task="text-classification") as art:
        shutil.copytree(finetuned_minilm_r8.path, art.dir / "fp32")
        model = AutoModelForSequenceClassification.from_pretrained(finetuned_minilm_r8.path).eval()
        (art.dir / "onnx").mkdir()
        ids = torch.ones(2, 16, dtype=torch.long)
        axes = {"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}, "logits": {0: "b"}}
        torch.onnx.export(
            _Logits(model),
            (ids, torch.ones_like(ids)),
            str(art.dir / "onnx" / "model.onnx"),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes=axes,
            dynamo=False,
        )
        art.add_variant("fp32", "fp32", "hf-safetensors")
        art.add_variant("onnx-fp32", "onnx/model.onnx", "onnx")
        art.extra = {"labels": finetuned_minilm_r8.labels}
    return uri


@pytest.fixture(scope="module")
def onnx_server(artifact: Path) -> Iterator[LiveServer]:
    with in_process_server(serve_config(artifact, "r8", variant="onnx-fp32")) as live:
        yield live


def _scores(live: LiveServer) -> np.ndarray:
    r = httpx.post(f"{live.url}/classify", json={"text": TEXTS}, timeout=60)
    assert r.status_code == 200, r.text
    return np.array([[p["scores"][k] for k in sorted(p["scores"])] for p in r.json()["predictions"]])


def test_onnx_variant_of_an_artifact_answers_like_the_torch_model(
    onnx_server: LiveServer, classifier_server: LiveServer
) -> None:
    meta = httpx.get(f"{onnx_server.url}/v2/models/r8").json()
    assert meta["versions"] == ["v7"]  # from the manifest
    assert meta["platform"] == "onnxruntime"
    assert 'variant="onnx-fp32",version="v7"' in onnx_server.metrics()
    # The same weights served by torch from the plain folder (the session's classifier server).
    np.testing.assert_allclose(_scores(onnx_server), _scores(classifier_server), atol=1e-3)


def _run(artifact_dir: Path, variant: str, tmp_path: Path) -> tuple[int, str, bool]:
    """Run `deepseek-worker serve`; (exit code, termination message, whether /v2/health/ready said 503)."""
    port = free_port()
    cfg = json.loads(dump(serve_config(artifact_dir, "r8", port=port)))
    cfg["variant"] = variant
    (tmp_path / "run.json").write_text(json.dumps(cfg))
    env = {**os.environ, "DEEPSEEK_TERMINATION_LOG": str(tmp_path / "termination-log")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepseek_workers.cli", "serve", "--config", str(tmp_path / "run.json")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    saw_not_ready = False
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            saw_not_ready |= httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 503
        time.sleep(0.05)
    code = proc.wait(timeout=30)
    return code, (tmp_path / "termination-log").read_text(), saw_not_ready


def test_variant_the_artifact_lacks_exits_66_at_once(artifact: Path, tmp_path: Path) -> None:
    code, message, _ = _run(artifact, "int8", tmp_path)
    assert code == EXIT_BAD_ARTIFACT
    assert "has no variant 'int8'; it has: fp32, onnx-fp32" in message


def test_tampered_artifact_is_refused_with_exit_66(artifact: Path, tmp_path: Path) -> None:
    bad = tmp_path / "v7"
    shutil.copytree(artifact, bad)
    weights = bad / "fp32" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one bit pattern changed: only the hash can tell
    weights.write_bytes(bytes(data))
    code, message, saw_not_ready = _run(bad, "fp32", tmp_path)
    assert code == EXIT_BAD_ARTIFACT
    assert saw_not_ready  # live (port open, not ready) while verifying, then gone with exit 66
    assert "sha256" in message
    assert "fp32/model.safetensors" in message
