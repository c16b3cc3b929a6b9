"""Two-process DDP on CPU (gloo, launched by torchrun exactly as the operator does) matches one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from deepseek_workers.builtin_models import minilm_path
from deepseek_workers.training import run_training
from deepseek_workers.training.launch import torchrun_command
from safetensors.torch import load_file

from tests.training.helpers import config_dict, make_config, read_json, read_metrics, write_config


@pytest.fixture
def minilm_without_dropout(tmp_path: Path) -> Path:
    """all-MiniLM-L6-v2 as a model directory on a "PVC", with dropout off (dropout masks differ per rank)."""
    src = minilm_path()
    dst = tmp_path / "pvc-model"
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.name != "config.json":
            (dst / f.name).symlink_to(f)
    cfg = read_json(src / "config.json")
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    write_config(dst / "config.json", cfg)
    return dst


def _run_config(output: Path, model_dir: Path, batch: int) -> dict[str, object]:
    return config_dict(
        output,
        model={"builtin": None, "pvc": {"claimName": "models", "path": "minilm"}},
        modelPath=str(model_dir),
        dataset={"maxTrainSamples": 96, "maxEvalSamples": 64, "maxLength": 32},
        training={"batchSize": batch, "maxSteps": 6, "learningRate": 1e-4, "precision": "fp32"},
    )


def test_two_process_ddp_matches_one_process(tmp_path: Path, minilm_without_dropout: Path) -> None:
    # One process, 16 rows per step...
    single = tmp_path / "single"
    run_training(make_config(single, **{k: v for k, v in _run_config(single, minilm_without_dropout, 16).items()}))
    # ...against two torchrun workers with 8 rows each: the same global batch, so the same trajectory.
    ddp = tmp_path / "ddp"
    config = write_config(tmp_path / "run.json", _run_config(ddp, minilm_without_dropout, 8))
    cmd = torchrun_command(
        nproc_per_node=2,
        config_path=str(config),
        launcher=[sys.executable, "-m", "torch.distributed.run"],
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "rank 1 of 2 (gloo)" in proc.stderr

    a, b = read_metrics(single / "v1"), read_metrics(ddp / "v1")
    assert b["worldSize"] == 2
    assert a["steps"] == b["steps"] == 6
    # Tolerance: float sums in a different order (two half-batches, other thread counts), nothing more.
    assert b["evalLoss"] == pytest.approx(a["evalLoss"], rel=1e-3)
    assert b["trainLoss"] == pytest.approx(a["trainLoss"], rel=1e-3)
    assert abs(b["accuracy"] - a["accuracy"]) <= 1 / 64
    wa = load_file(single / "v1" / "fp32" / "model.safetensors")
    wb = load_file(ddp / "v1" / "fp32" / "model.safetensors")
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    base = load_file(minilm_path() / "model.safetensors")  # BertModel keys: no "bert." prefix
    moved = max(float((wa[k] - base[k.removeprefix("bert.")]).abs().max()) for k in wa if k.startswith("bert."))
    assert worst < 1e-4  # the two runs agree to float rounding...
    assert moved > 100 * worst  # ...far more closely than training moved the weights
