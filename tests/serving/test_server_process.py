"""`deepseek-worker serve` as a real process: SIGTERM under load loses nothing; bad artifacts exit 66."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from deepseek_workers.runconfig import EXIT_BAD_ARTIFACT, dump

from tests.fixtures.ml import FineTunedClassifier
from tests.serving.conftest import free_port, metric_value, serve_config, wait_ready

# ~450 tokens: long enough that 40 of them take the model a while, so most are still queued at SIGTERM.
TEXT = " ".join(["shares of the company rose after the merger agreement and the acquisition of its rival"] * 16)


def _start(config_path: Path, tmp_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DEEPSEEK_TERMINATION_LOG": str(tmp_path / "termination-log")}
    return subprocess.Popen(
        [sys.executable, "-m", "deepseek_workers.cli", "serve", "--config", str(config_path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "server.log", "wb"),
    )


def test_sigterm_under_load_loses_no_accepted_request(finetuned_minilm_r8: FineTunedClassifier, tmp_path: Path) -> None:
    port = free_port()
    cfg = serve_config(
        finetuned_minilm_r8.path,
        "r8",
        port=port,
        drainSeconds=120,
        batching={"maxBatchSize": 4, "maxQueueDelayMs": 5, "maxQueueSize": 64, "requestTimeoutSeconds": 120},
    )
    config_path = tmp_path / "run.json"
    config_path.write_text(dump(cfg))
    proc = _start(config_path, tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        n = 24

        async def scenario() -> tuple[list[int], int, int, int, float]:
            limits = httpx.Limits(max_connections=n + 4)
            async with httpx.AsyncClient(base_url=url, timeout=180, limits=limits) as client:
                accepted = [asyncio.ensure_future(client.post("/classify", json={"text": TEXT})) for _ in range(n)]
                # Wait until the server has received all of them (in flight or answered), then ask it to stop.
                deadline = time.monotonic() + 120
                while True:
                    m = (await client.get("/metrics")).text
                    holding = metric_value(m, "deepseek_serve_in_flight_requests") - 1  # minus this scrape
                    if holding + metric_value(m, "deepseek_serve_requests_total", endpoint="/classify") >= n:
                        break
                    assert time.monotonic() < deadline, "the requests never reached the server"
                    await asyncio.sleep(0.01)
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                ready = (await client.get("/v2/health/ready")).status_code
                late = await client.post("/classify", json={"text": "oil"})
                statuses = [r.status_code for r in await asyncio.gather(*accepted)]
                return statuses, ready, late.status_code, int(late.headers.get("retry-after", "0")), holding

        statuses, ready_during_drain, late_status, retry_after, held_at_sigterm = asyncio.run(scenario())
        assert held_at_sigterm > 1, "everything finished before SIGTERM: the drain was not exercised"
        assert statuses == [200] * n
        assert ready_during_drain == 503
        assert late_status == 503
        assert retry_after >= 1
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (tmp_path / "server.log").read_text()
    assert "drain complete" in log


def test_missing_artifact_exits_66_with_a_termination_message(tmp_path: Path) -> None:
    cfg = serve_config(tmp_path / "nowhere", "r8", port=free_port())
    (tmp_path / "run.json").write_text(dump(cfg))
    proc = _start(tmp_path / "run.json", tmp_path)
    assert proc.wait(timeout=120) == EXIT_BAD_ARTIFACT
    assert "is not a directory" in (tmp_path / "termination-log").read_text()


def test_variant_missing_from_artifact_exits_66(finetuned_minilm_r8: FineTunedClassifier, tmp_path: Path) -> None:
    cfg = serve_config(finetuned_minilm_r8.path, "r8", port=free_port())
    data = json.loads(dump(cfg))
    data["variant"] = "onnx-int8"
    (tmp_path / "run.json").write_text(json.dumps(data))
    proc = _start(tmp_path / "run.json", tmp_path)
    assert proc.wait(timeout=120) == EXIT_BAD_ARTIFACT
    assert "onnx-int8" in (tmp_path / "termination-log").read_text()
