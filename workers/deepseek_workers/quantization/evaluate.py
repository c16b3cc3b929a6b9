"""Measuring a model variant: quality on the evaluation split, latency at batch 1 and 32, throughput, size.

Every variant (torch fp32, torch INT8, ONNX fp32, ONNX INT8) is wrapped as a ``LogitsFn`` over the same
pre-tokenised numpy batches, so the numbers differ only by the model. Latency is measured round-robin over
the variants (one call of each in turn, repeated), so that a busy machine slows them all alike and the
ratios stay meaningful; medians are reported.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# (input_ids, attention_mask) int64 [batch, length] -> logits float32 [batch, ...]
LogitsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Batch:
    input_ids: np.ndarray
    attention_mask: np.ndarray
    rows: list[int]  # positions of these examples in the evaluation list


def tokenize_batches(
    tokenizer: Any, texts: Sequence[str], *, max_length: int, batch_size: int = 32, sort: bool = True
) -> list[Batch]:
    """Tokenise once; batches of similar length (sorted) padded to their longest, to waste little compute."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    ids: list[list[int]] = enc["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i])) if sort else list(range(len(ids)))
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(ids[i]) for i in rows)
        input_ids = np.full((len(rows), width), pad, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for j, i in enumerate(rows):
            input_ids[j, : len(ids[i])] = ids[i]
            mask[j, : len(ids[i])] = 1
        batches.append(Batch(input_ids, mask, rows))
    return batches


def torch_logits_fn(model: torch.nn.Module, device: str = "cpu") -> LogitsFn:
    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(
                input_ids=torch.from_numpy(input_ids).to(device),
                attention_mask=torch.from_numpy(attention_mask).to(device),
            )
            return out.logits.float().cpu().numpy()  # type: ignore[no-any-return]

    return run


def torch_lm_step_fn(model: torch.nn.Module, device: str = "cpu") -> LogitsFn:
    """A causal LM's forward pass keeping only the last position's logits (what a decoding step needs)."""

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(
                input_ids=torch.from_numpy(input_ids).to(device),
                attention_mask=torch.from_numpy(attention_mask).to(device),
                logits_to_keep=1,
            )
            return out.logits[:, -1].float().cpu().numpy()  # type: ignore[no-any-return]

    return run


def onnx_logits_fn(session: Any) -> LogitsFn:
    names = {i.name for i in session.get_inputs()}

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        return np.asarray(session.run(None, {k: v for k, v in feed.items() if k in names})[0], dtype=np.float32)

    return run


# ---------------------------------------------------------------------------------------------------------
# Quality


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 (over the labels present in truth or prediction, as scikit-learn does)."""
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macroF1": float(f1_score(y_true, y_pred, average="macro", labels=sorted(set(y_true) | set(y_pred)))),
    }


def predict_classes(fn: LogitsFn, batches: Sequence[Batch], total: int) -> list[int]:
    preds = [0] * total
    for b in batches:
        for row, p in zip(b.rows, fn(b.input_ids, b.attention_mask).argmax(-1).tolist(), strict=True):
            preds[row] = int(p)
    return preds


def lm_metrics(model: torch.nn.Module, batches: Sequence[Batch], device: str = "cpu") -> dict[str, float]:
    """Next-token top-1 accuracy (the causal-LM "accuracy" the budget applies to) and perplexity."""
    nll, correct, count = 0.0, 0, 0
    with torch.inference_mode():
        for b in batches:
            ids = torch.from_numpy(b.input_ids).to(device)
            mask = torch.from_numpy(b.attention_mask).to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            target, valid = ids[:, 1:], mask[:, 1:].bool()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            nll -= float(logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)[valid].sum())
            correct += int((logits[:, :-1].argmax(-1) == target)[valid].sum())
            count += int(valid.sum())
    if count == 0:
        return {"accuracy": 0.0, "perplexity": float("inf")}
    return {"accuracy": correct / count, "perplexity": math.exp(nll / count)}


# ---------------------------------------------------------------------------------------------------------
# Speed


@dataclass(frozen=True)
class SpeedSample:
    batch1_ms: float  # median latency of one example
    batch32_ms: float  # median latency of a batch of (up to) 32
    batch_size: int

    @property
    def throughput(self) -> float:
        """Examples per second at the large batch."""
        return self.batch_size / (self.batch32_ms / 1000.0) if self.batch32_ms > 0 else 0.0


def measure_speed(
    fns: Mapping[str, LogitsFn],
    single: Sequence[Batch],
    large: Batch,
    *,
    rounds: int = 5,
    warmup: int = 1,
) -> dict[str, SpeedSample]:
    """Median latencies per variant, measured round-robin (each round runs every variant once per input)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn(single[0].input_ids, single[0].attention_mask)
            fn(large.input_ids, large.attention_mask)
    b1: dict[str, list[float]] = {k: [] for k in fns}
    b32: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for s in single:
                fn(s.input_ids, s.attention_mask)
            b1[name].append((time.perf_counter() - t0) / len(single) * 1000.0)
            t0 = time.perf_counter()
            fn(large.input_ids, large.attention_mask)
            b32[name].append((time.perf_counter() - t0) * 1000.0)
    return {
        k: SpeedSample(statistics.median(b1[k]), statistics.median(b32[k]), int(large.input_ids.shape[0])) for k in fns
    }


def speed_inputs(batches: Sequence[Batch], *, singles: int = 8, batch_size: int = 32) -> tuple[list[Batch], Batch]:
    """Real evaluation examples for the speed test: ``singles`` one-example batches and one large batch.

    Both are taken across the length distribution (not only the shortest), padded to their longest member.
    """
    rows: list[tuple[np.ndarray, np.ndarray]] = []
    for b in batches:
        for j in range(b.input_ids.shape[0]):
            n = int(b.attention_mask[j].sum())
            rows.append((b.input_ids[j, :n], b.attention_mask[j, :n]))
    if not rows:
        raise ValueError("no evaluation examples to measure speed on")
    step = max(1, len(rows) // singles)
    single = [Batch(r[0][None, :], r[1][None, :], [0]) for r in rows[::step][:singles]]
    step = max(1, len(rows) // batch_size)
    chosen = rows[::step][:batch_size]
    width = max(len(r[0]) for r in chosen)
    ids = np.zeros((len(chosen), width), dtype=np.int64)
    mask = np.zeros((len(chosen), width), dtype=np.int64)
    for j, (i, m) in enumerate(chosen):
        ids[j, : len(i)] = i
        mask[j, : len(m)] = m
    return single, Batch(ids, mask, list(range(len(chosen))))
