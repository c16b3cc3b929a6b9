"""bf16 (and fp16) autocast against fp32: training samples/s of the engine on this machine, side by side.

All runs train all-MiniLM-L6-v2 on the same Reuters R8 rows, each in a fresh worker process, interleaved
(fp32, bf16, fp16, fp32, ...). On a CUDA machine the same script measures the GPU (the engine picks CUDA when
present).

    .venv/bin/python bench/train_precision.py [--rounds 2] [--rows 384] [--max-length 128]
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
    ap.add_argument("--rows", type=int, default=384)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--precisions", default="fp32,bf16,fp16")
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    precisions = args.precisions.split(",")
    results: dict[str, list[dict[str, float]]] = {p: [] for p in precisions}
    for r in range(args.rounds):
        for p in precisions:
            cfg = run_config(
                Path("unused"),
                dataset={"maxTrainSamples": args.rows, "maxLength": args.max_length, "maxEvalSamples": 256},
                training={"precision": p, "batchSize": args.batch},
            )
            m = train_in_subprocess(cfg)
            results[p].append(m)
            print(f"round {r} {p}: {m['trainSamplesPerSecond']:.2f} samples/s, acc {m['accuracy']:.3f}", flush=True)
    sps = {p: median([m["trainSamplesPerSecond"] for m in ms]) for p, ms in results.items()}
    save(
        "train_precision",
        {
            "setup": {
                "model": "all-minilm-l6-v2",
                "rows": args.rows,
                "batch": args.batch,
                "maxLength": args.max_length,
            },
            "samples_per_second_median": sps,
            "samples_per_second_runs": {p: [m["trainSamplesPerSecond"] for m in ms] for p, ms in results.items()},
            "accuracy_runs": {p: [m["accuracy"] for m in ms] for p, ms in results.items()},
            "speedup_vs_fp32": {p: sps[p] / sps["fp32"] for p in sps} if "fp32" in sps else {},
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
