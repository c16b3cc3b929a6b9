"""Real model servers on loopback for the serving tests.

In-process servers (uvicorn on its own thread and event loop, a real socket on 127.0.0.1, a port picked by the
OS) keep start-up cheap; the drain test runs the real `deepseek-worker serve` command as a subprocess because
it sends SIGTERM. Models are the shared fine-tuned MiniLM (Reuters R8) and the packaged SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from deepseek_workers.builtin_models import smollm2_path
from deepseek_workers.runconfig import ServeRunConfig, parse_serve_config
from deepseek_workers.serving.app import ModelServer, create_app
from deepseek_workers.serving.server import build_server, uvicorn_config

from tests.fixtures.ml import FineTunedClassifier

# The classifier server's batching: small enough that the tests can fill the queue with a few dozen requests.
CLASSIFIER_BATCHING = {"maxBatchSize": 8, "maxQueueDelayMs": 10, "maxQueueSize": 24, "requestTimeoutSeconds": 60}


def serve_config(model_dir: Path, name: str, port: int = 8080, **extra: Any) -> ServeRunConfig:
    return parse_serve_config(
        {
            "kind": "ServeRun",
            "source": {"kind": "DeepSeekInference", "namespace": "test", "name": name},
            "modelName": name,
            "artifactUri": str(model_dir),
            "variant": "fp32",
            "host": "127.0.0.1",
            "port": port,
            **extra,
        }
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    model_server: ModelServer

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=30).text


def wait_ready(url: str, timeout_s: float = 300.0, probe: str = "/v2/health/ready") -> None:
    """Wait until `probe` (readiness unless told) answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}{probe}", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url}{probe} did not answer 200 within {timeout_s:.0f} s")


@contextlib.contextmanager
def serving_in_process(model_server: ModelServer) -> Iterator[LiveServer]:
    """The app under a real uvicorn on a real loopback socket, on a thread of this process; not waited for."""
    app = create_app(model_server)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", model_server)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@contextlib.contextmanager
def in_process_server(cfg: ServeRunConfig) -> Iterator[LiveServer]:
    """`serving_in_process` for a run config, once the model is ready."""
    with serving_in_process(build_server(cfg)) as live:
        wait_ready(live.url)
        yield live


@pytest.fixture(scope="session")
def classifier_server(finetuned_minilm_r8: FineTunedClassifier) -> Iterator[LiveServer]:
    cfg = serve_config(finetuned_minilm_r8.path, "r8", batching=CLASSIFIER_BATCHING)
    with in_process_server(cfg) as live:
        yield live


@pytest.fixture(scope="session")
def lm_server() -> Iterator[LiveServer]:
    cfg = serve_config(
        smollm2_path(),
        "smollm2",
        batching={"maxBatchSize": 4, "maxQueueDelayMs": 20, "maxQueueSize": 32, "requestTimeoutSeconds": 120},
    )
    with in_process_server(cfg) as live:
        yield live


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total
