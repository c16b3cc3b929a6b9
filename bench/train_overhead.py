"""Engine overhead: the training engine against a minimal hand-written torch loop, same model and data.

Both train all-MiniLM-L6-v2 on the same Reuters R8 rows in the same order with the same math (bf16 autocast,
AdamW, linear warm-up schedule, gradient clipping at 1.0), in the same process, interleaved (engine, loop,
engine, loop, ...) so that load on this shared machine hits both alike. The engine's time is its training loop
(`trainRuntimeSeconds`: steps plus bookkeeping such as metrics and progress reports, not evaluation); the
hand-written loop is timed over its steps. Goal: overhead under 5%.

    .venv/bin/python bench/train_overhead.py [--rounds 3] [--rows 384] [--precision bf16]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _train_common import machine, median, read_metrics, run_config, save
from deepseek_workers.builtin_models import minilm_path
from deepseek_workers.data import load_training_data
from deepseek_workers.runconfig import parse_train_config
from deepseek_workers.training import run_training
from deepseek_workers.training.engine import epoch_order
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    get_linear_schedule_with_warmup,
)


def hand_loop(cfg_dict: dict, precision: str) -> float:  # type: ignore[type-arg]
    """samples/s of the simplest correct loop over the rows the engine trains on."""
    cfg = parse_train_config(cfg_dict)
    data = load_training_data(cfg)
    tok = AutoTokenizer.from_pretrained(minilm_path())
    label_id = {label: i for i, label in enumerate(data.labels)}
    ids = tok([r.text for r in data.train], truncation=True, max_length=cfg.dataset.max_length)["input_ids"]
    labels = [label_id[r.label] for r in data.train]
    torch.manual_seed(cfg.training.seed)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=len(data.labels))
    b = cfg.training.batch_size
    steps = len(ids) // b
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.training.learning_rate, weight_decay=cfg.training.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, math.ceil(0.06 * steps), steps)
    order = epoch_order(cfg.training.seed, 0, len(ids))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    model.train()
    started = time.perf_counter()
    for s in range(steps):
        rows = order[s * b : (s + 1) * b]
        enc = tok.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt")
        y = torch.tensor([labels[i] for i in rows])
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(**enc, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
    return steps * b / (time.perf_counter() - started)


def engine(cfg_dict: dict) -> float:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as tmp:
        cfg_dict = {**cfg_dict, "outputUri": str(Path(tmp) / "out")}
        run_training(parse_train_config(cfg_dict))
        return read_metrics(Path(tmp) / "out")["trainSamplesPerSecond"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=384)
    ap.add_argument("--precision", default="bf16")
    args = ap.parse_args()
    cfg = run_config(
        Path("unused"),
        dataset={"maxTrainSamples": args.rows},
        training={"precision": args.precision, "lrSchedule": "linear"},
    )
    eng, hand = [], []
    for r in range(args.rounds):
        eng.append(engine(cfg))
        hand.append(hand_loop(cfg, args.precision))
        print(f"round {r}: engine {eng[-1]:.2f} samples/s, hand-written {hand[-1]:.2f} samples/s", flush=True)
    ratios = [h / e for e, h in zip(eng, hand, strict=True)]
    save(
        "train_overhead",
        {
            "setup": {
                "model": "all-minilm-l6-v2",
                "rows": args.rows,
                "batch": 16,
                "maxLength": 64,
                "precision": args.precision,
            },
            "engine_samples_per_second": eng,
            "hand_loop_samples_per_second": hand,
            "overhead_ratio_per_round": [x - 1.0 for x in ratios],
            "overhead_median": median(ratios) - 1.0,
            "goal": "overhead < 0.05",
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
