"""A worker stopped by SIGTERM, then killed by SIGKILL between checkpoints, resumes to the same result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from deepseek_workers.training import run_training
from deepseek_workers.training.engine import EXIT_INTERRUPTED, FAULT_KILL_AFTER_STEP_ENV
from safetensors.torch import load_file

from tests.training.helpers import config_dict, make_config, read_json, read_metrics, write_config

TRAINING = {"epochs": 2, "batchSize": 8, "learningRate": 1e-3, "checkpointEverySteps": 5, "evalEverySteps": 8}
DATASET = {"maxTrainSamples": 128, "maxEvalSamples": 64, "maxLength": 32}  # 2 x 16 steps


def _worker(config: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, **(extra_env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "deepseek_workers.cli", "train", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _checkpoint_steps(out: Path) -> list[int]:
    root = out / "checkpoints"
    return sorted(int(p.name.split("-")[1]) for p in root.glob("step-*") if (p / "COMPLETE").is_file())


def test_killed_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    # Reference: one uninterrupted run (the sparse model: dropout on, so RNG state must be restored too).
    reference = tmp_path / "reference"
    run_training(make_config(reference, dataset=DATASET, training=TRAINING))

    out = tmp_path / "interrupted"
    config = write_config(tmp_path / "run.json", config_dict(out, dataset=DATASET, training=TRAINING))
    # 1. SIGTERM (what Kubernetes sends before evicting a pod) once training has started: the worker stops at
    #    the next step boundary, writes a checkpoint and exits 143.
    first = _worker(config)
    deadline = time.monotonic() + 600
    while not (out / "progress.json").is_file() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=600)
    assert first.returncode == EXIT_INTERRUPTED, err[-3000:]
    stopped_at = _checkpoint_steps(out)[-1]
    assert 1 <= stopped_at < 32 - 8
    # 2. The restarted worker is SIGKILLed 7-8 steps later, between two checkpoints (every 5 steps).
    kill_at = stopped_at + 7 if (stopped_at + 7) % 5 else stopped_at + 8
    second = _worker(config, {FAULT_KILL_AFTER_STEP_ENV: str(kill_at)})
    _, err = second.communicate(timeout=600)
    assert second.returncode == -signal.SIGKILL, err[-3000:]
    assert "resumed from checkpoint" in err
    newest = _checkpoint_steps(out)[-1]
    assert stopped_at < newest < kill_at  # the work after `newest` is lost and must be redone
    # 3. The third worker resumes from the newest complete checkpoint and finishes.
    run_training(make_config(out, dataset=DATASET, training=TRAINING))
    progress = read_json(out / "progress.json")
    assert progress["state"] == "succeeded"
    assert progress["resumedFromStep"] == newest

    a, b = read_metrics(reference / "v1"), read_metrics(out / "v1")
    for key in ("evalLoss", "accuracy", "macroF1", "trainLoss", "steps"):
        assert abs(a[key] - b[key]) <= 1e-6, (key, a[key], b[key])
    wa = load_file(reference / "v1" / "fp32" / "model.safetensors")
    wb = load_file(out / "v1" / "fp32" / "model.safetensors")
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= 1e-6


def test_a_finished_run_is_not_trained_again(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, training={"maxSteps": 2})
    run_training(cfg)
    first = (tmp_path / "v1" / "manifest.json").stat().st_mtime_ns
    run_training(cfg)  # e.g. the pod restarted after publishing: report success again, keep the artifact
    assert (tmp_path / "v1" / "manifest.json").stat().st_mtime_ns == first
    assert read_json(tmp_path / "progress.json")["state"] == "succeeded"
