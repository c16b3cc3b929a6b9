"""Helpers shared by the training benchmarks (bench/train_*.py): run configs and result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SOURCE = {"kind": "DeepSeekTraining", "namespace": "bench", "name": "train"}


def run_config(output: Path, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "source": SOURCE,
        "outputUri": str(output),
        "artifactVersion": "v1",
        "metricsPort": 0,
        "quantization": {"enabled": False},
        "model": {"builtin": {"name": "all-minilm-l6-v2"}},
        "dataset": {"builtin": "reuters-r8", "maxTrainSamples": 384, "maxEvalSamples": 64, "maxLength": 64},
        "training": {"epochs": 1, "batchSize": 16, "learningRate": 1e-4, "checkpointEverySteps": 100000},
    }
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg


def train_in_subprocess(config: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run `deepseek-worker train` in a fresh process (clean peak-memory accounting); return its metrics."""
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        out = Path(tmp) / "out"
        config = {**config, "outputUri": str(out)}
        path = Path(tmp) / "run.json"
        path.write_text(json.dumps(config), encoding="utf-8")
        proc = subprocess.run(
            [sys.executable, "-m", "deepseek_workers.cli", "train", "--config", str(path)],
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"training failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return read_metrics(out)


def read_metrics(output: Path) -> dict[str, float]:
    """metrics.json of a run published at `output`, flattened (its fp32 and training sections in one dict)."""
    from deepseek_workers.training.output import flat_metrics

    return flat_metrics(json.loads((output / "v1" / "metrics.json").read_text()))


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg_at_start": os.getloadavg(),
    }
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0]
        info["avx512_bf16"] = "avx512_bf16" in flags
        info["amx_bf16"] = "amx_bf16" in flags
    except (OSError, IndexError):
        pass
    return info


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, "recordedAt": datetime.now(UTC).isoformat(timespec="seconds"), **result}
    result["machine"] = {**result.get("machine", {}), "loadavg_at_end": os.getloadavg()}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return path
