"""LoRA against full fine-tuning: peak memory and step time, each run in a fresh worker process.

Peak memory is the process's peak resident set (CPU) or torch's peak allocation (CUDA); the difference to the
peak before the training loop started isolates what training itself adds (gradients, optimizer state,
activations). Runs alternate (full, LoRA, full, LoRA) on the same rows.

    .venv/bin/python bench/train_lora.py [--rounds 2] [--rows 256]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _train_common import machine, median, run_config, save, train_in_subprocess


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--model", default="all-minilm-l6-v2")
    args = ap.parse_args()
    kinds = {"full": None, "lora": {"r": 8, "alpha": 16}}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind, lora in kinds.items():
            training = {"batchSize": 16, "precision": "bf16", "learningRate": 2e-3 if lora else 1e-4, "lora": lora}
            cfg = run_config(
                Path("unused"),
                model={"builtin": {"name": args.model}},
                dataset={"maxTrainSamples": args.rows, "maxLength": 128},
                training=training,
            )
            m = train_in_subprocess(cfg)
            runs[kind].append(m)
            print(
                f"round {r} {kind}: {m['trainSamplesPerSecond']:.2f} samples/s, peak {m['peakMemoryBytes'] / 2**20:.0f}"
                f" MiB (before training {m['peakMemoryBeforeTrainingBytes'] / 2**20:.0f} MiB)",
                flush=True,
            )

    def med(kind: str, key: str) -> float:
        return median([m[key] for m in runs[kind]])

    def training_peak(kind: str) -> float:
        return median([m["peakMemoryBytes"] - m["peakMemoryBeforeTrainingBytes"] for m in runs[kind]])

    save(
        "train_lora",
        {
            "setup": {"model": args.model, "rows": args.rows, "batch": 16, "maxLength": 128, "precision": "bf16"},
            "trainable_fraction": {k: med(k, "trainableFraction") for k in kinds},
            "peak_memory_bytes": {k: med(k, "peakMemoryBytes") for k in kinds},
            "training_added_peak_bytes": {k: training_peak(k) for k in kinds},
            "train_state_bytes_estimate": {k: med(k, "trainStateBytes") for k in kinds},
            "samples_per_second": {k: med(k, "trainSamplesPerSecond") for k in kinds},
            "seconds_per_step": {k: med(k, "trainRuntimeSeconds") / med(k, "steps") for k in kinds},
            "lora_vs_full": {
                "peak_memory_ratio": med("lora", "peakMemoryBytes") / med("full", "peakMemoryBytes"),
                "training_added_peak_ratio": training_peak("lora") / training_peak("full"),
                "step_time_ratio": (med("lora", "trainRuntimeSeconds") / med("lora", "steps"))
                / (med("full", "trainRuntimeSeconds") / med("full", "steps")),
            },
            "accuracy": {k: med(k, "accuracy") for k in kinds},
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
