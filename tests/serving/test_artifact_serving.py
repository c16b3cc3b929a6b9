"""Serving published artifacts (docs/artifact.md): fp32 and ONNX variants, verification before ready, exit 66."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from deepseek_testbed import wait_until
from deepseek_workers.artifact import write_artifact
from deepseek_workers.runconfig import EXIT_BAD_ARTIFACT, SourceRef, dump
from deepseek_workers.serving.backends import LoadedModel
from deepseek_workers.serving.server import build_server
from transformers import AutoModelForSequenceClassification

from tests.fixtures.ml import FineTunedClassifier
from tests.serving.conftest import (
    LiveServer,
    free_port,
    in_process_server,
    serve_config,
    serving_in_process,
    wait_ready,
)

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


def _run(artifact_dir: Path, variant: str, tmp_path: Path) -> tuple[int, str]:
    """Run `deepseek-worker serve`; (exit code, termination message)."""
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
    code = proc.wait(timeout=240)
    return code, (tmp_path / "termination-log").read_text()


def test_variant_the_artifact_lacks_exits_66_at_once(artifact: Path, tmp_path: Path) -> None:
    code, message = _run(artifact, "int8", tmp_path)
    assert code == EXIT_BAD_ARTIFACT
    assert "has no variant 'int8'; it has: fp32, onnx-fp32" in message


@pytest.fixture
def tampered(artifact: Path, tmp_path: Path) -> Path:
    """A copy of the artifact whose fp32 weights changed after publishing: same size, one byte flipped."""
    bad = tmp_path / "v7"
    shutil.copytree(artifact, bad)
    weights = bad / "fp32" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # only the hash can tell
    weights.write_bytes(bytes(data))
    return bad


def test_tampered_artifact_is_refused_with_exit_66(tampered: Path, tmp_path: Path) -> None:
    code, message = _run(tampered, "fp32", tmp_path)
    assert code == EXIT_BAD_ARTIFACT
    assert "sha256" in message
    assert "fp32/model.safetensors" in message


@contextlib.contextmanager
def _held_load(artifact_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LiveServer, threading.Event]]:
    """A server on loopback whose model load (verification included) waits until the event is set."""
    model_server = build_server(serve_config(artifact_dir, "r8"))
    gate, load = threading.Event(), model_server._loader

    def held() -> LoadedModel:
        assert gate.wait(120), "the test never released the load"
        return load()

    # The loader is the seam: holding it makes "live, not ready" last as long as the test needs.
    monkeypatch.setattr(model_server, "_loader", held)
    with serving_in_process(model_server) as live:
        wait_ready(live.url, 60, probe="/v2/health/live")
        try:
            yield live, gate
        finally:
            gate.set()


def _assert_not_ready(live: LiveServer, state: str) -> None:
    assert httpx.get(f"{live.url}/v2/health/ready", timeout=10).status_code == 503
    assert httpx.get(f"{live.url}/v2/models/r8/ready", timeout=10).status_code == 503
    r = httpx.post(f"{live.url}/classify", json={"text": TEXTS[0]}, timeout=10)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert r.json() == {"error": f"model 'r8' is not ready yet ({state})"}


def test_live_but_not_ready_until_the_model_is_verified(artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _held_load(artifact, monkeypatch) as (live, gate):
        _assert_not_ready(live, "loading")
        gate.set()
        wait_ready(live.url, 120)
        assert httpx.post(f"{live.url}/classify", json={"text": TEXTS[0]}, timeout=60).status_code == 200


def test_tampered_artifact_stays_not_ready_and_reports_why(tampered: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failures: list[BaseException] = []
    with _held_load(tampered, monkeypatch) as (live, gate):
        live.model_server.on_failure = failures.append
        _assert_not_ready(live, "loading")
        gate.set()
        wait_until(lambda: failures, timeout=60, what="the load to fail")
        assert len(failures) == 1
        assert "sha256" in str(failures[0])
        assert "fp32/model.safetensors" in str(failures[0])
        _assert_not_ready(live, "failed")  # never ready on weights that do not match the manifest
