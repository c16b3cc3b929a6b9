"""Shared helpers of the training-engine tests: run configs small enough for a 2-core CPU."""

from __future__ import annotations

import copy
import json
import socket
from pathlib import Path
from typing import Any

from deepseek_workers.runconfig import TrainRunConfig, parse_train_config

SOURCE = {"kind": "DeepSeekTraining", "namespace": "tests", "name": "engine", "uid": "u-1", "generation": 1}

# The dynamic-sparse model at test size: 2 blocks, 128 wide, 10 experts (20% active = 2 per token).
TINY_SPARSE = {"hiddenSize": 128, "layers": 2, "heads": 4, "experts": 10, "expertSize": 128, "maxPositions": 128}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def config_dict(output: Path, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "source": SOURCE,
        "outputUri": str(output),
        "artifactVersion": "v1",
        "metricsPort": 0,
        "quantization": {"enabled": False},
        "progress": {"intervalSeconds": 0.5},
        "model": {"builtin": {"name": "dynamic-sparse-transformer", "architecture": TINY_SPARSE}},
        "dataset": {"builtin": "reuters-r8", "maxTrainSamples": 256, "maxEvalSamples": 128, "maxLength": 48},
        "training": {"epochs": 1, "batchSize": 16, "learningRate": 1e-3, "checkpointEverySteps": 1000},
    }
    return merge(base, over)


def make_config(output: Path, **over: Any) -> TrainRunConfig:
    return parse_train_config(config_dict(output, **over))


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_metrics(artifact: Path) -> dict[str, float]:
    """metrics.json of a trained artifact, flattened ({"fp32": {...}, "training": {...}} -> one dict)."""
    doc = read_json(artifact / "metrics.json")
    return {**doc["training"], **doc["fp32"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
