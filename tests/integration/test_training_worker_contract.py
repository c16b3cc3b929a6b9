"""The operator's rendered pod against the real worker: the command, environment and run config that the builders
put in a train pod start `deepseek-worker train`, and an attempt that dies is resumed by the next attempt (same
command, same frozen run config) from the newest checkpoint under `<outputUri>/checkpoints`.

No cluster: the worker runs as a local process with the pod's argv and env. What differs from a pod, and why:
the config path (no /etc/deepseek here), the emptyDir paths (HOME, caches) under tmp, the metrics port 0 and
host 127.0.0.1 (this machine is shared), and no KUBERNETES_SERVICE_HOST (progress goes to the local file only).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from deepseek_operator.api import parse_training
from deepseek_operator.builders import training as build
from deepseek_operator.config import OperatorConfig
from deepseek_workers.training.engine import FAULT_KILL_AFTER_STEP_ENV

# The dynamic-sparse model at test size (as in the engine's own tests): 16 steps of 8 samples, checkpoints
# every 4 steps.
TINY_SPARSE = {"hiddenSize": 128, "layers": 2, "heads": 4, "experts": 10, "expertSize": 128, "maxPositions": 128}
KILL_AFTER_STEP = 10
NEWEST_CHECKPOINT = 8


def _training(out: Path) -> Any:
    return parse_training(
        {
            "apiVersion": "deepseek.ai/v1alpha1",
            "kind": "DeepSeekTraining",
            "metadata": {"name": "contract", "namespace": "ml", "uid": "1234abcd-0000-0000-0000-000000000000"},
            "spec": {
                "model": {"builtin": {"name": "dynamic-sparse-transformer", "architecture": TINY_SPARSE}},
                "dataset": {"builtin": "reuters-r8", "maxTrainSamples": 128, "maxEvalSamples": 32, "maxLength": 32},
                "training": {"epochs": 1, "batchSize": 8, "learningRate": 1e-3, "checkpointEverySteps": 4},
                "quantization": {"enabled": False},
                "output": {"uri": f"file://{out}"},
                "resources": {"limits": {"cpu": "1", "memory": "4Gi"}},
            },
        }
    )


def _attempt(
    argv: list[str], env: dict[str, str], extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deepseek_workers.cli", *argv],
        env={**env, **(extra or {})},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_rendered_pod_runs_the_worker_and_a_retry_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "out"
    t = _training(out)
    owner = build.owner_of(t)
    version = build.new_artifact_version(t)
    run = json.loads(build.config_map(t, owner, version)["data"][build.RUN_CONFIG_KEY])
    assert run["outputUri"] == f"file://{out}"
    run["metricsPort"] = 0
    config = tmp_path / "run.json"
    config.write_text(json.dumps(run), encoding="utf-8")

    job = build.job(t, owner, OperatorConfig(), build.TRAIN, attempt=0, version=version)
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["deepseek-worker", "train", "--config", build.RUN_CONFIG_PATH]
    argv = [*c["command"][1:-1], str(config)]
    pod_env = {e["name"]: e["value"] for e in c["env"]}
    assert pod_env["DEEPSEEK_NUM_THREADS"] == "1"  # from the CPU limit
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update(pod_env)
    env.update(
        HOME=str(tmp_path / "home"),
        HF_HOME=str(tmp_path / "home" / "huggingface"),
        DEEPSEEK_MODEL_CACHE=str(tmp_path / "cache"),
        DEEPSEEK_METRICS_HOST="127.0.0.1",
        DEEPSEEK_DEVICE="cpu",
    )

    # Attempt 1 dies between two checkpoints (a node lost, an OOM kill).
    first = _attempt(argv, env, {FAULT_KILL_AFTER_STEP_ENV: str(KILL_AFTER_STEP)})
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    steps = sorted(
        int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*") if (p / "COMPLETE").is_file()
    )
    assert steps[-1] == NEWEST_CHECKPOINT

    # Attempt 2: the operator's next Job runs the same command on the same frozen run config.
    second = _attempt(argv, env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from checkpoint" in second.stderr
    progress = json.loads((out / "progress.json").read_text(encoding="utf-8"))
    assert (progress["state"], progress["resumedFromStep"], progress["step"]) == ("succeeded", NEWEST_CHECKPOINT, 16)
    # Published where the operator's status will say it is.
    assert build.artifact_uri(t, version) == f"file://{out}/{version}"
    assert (out / version / "manifest.json").is_file()
    assert (out / version / "fp32" / "model.safetensors").is_file()
