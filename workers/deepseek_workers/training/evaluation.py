"""Evaluation metrics: accuracy and macro-F1 (classification), perplexity (causal LM).

Each rank evaluates its shard of the evaluation rows and contributes sums (a confusion matrix, or the summed
negative log-likelihood and token count); the sums are all-reduced, so every rank ends with the metrics of the
whole evaluation set.
"""

from __future__ import annotations

import math

import torch


def classification_metrics(confusion: torch.Tensor) -> dict[str, float]:
    """Accuracy and macro-F1 from a (true, predicted) confusion matrix.

    Macro-F1 averages over the classes that occur in the true or the predicted labels (scikit-learn's default
    when no label list is given); a class with no true and no predicted rows has no F1 to average.
    """
    c = confusion.double()
    total = c.sum()
    tp = c.diag()
    true_n = c.sum(dim=1)
    pred_n = c.sum(dim=0)
    present = (true_n + pred_n) > 0
    precision = torch.where(pred_n > 0, tp / pred_n.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(true_n > 0, tp / true_n.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
    accuracy = float(tp.sum() / total) if total > 0 else math.nan
    macro_f1 = float(f1[present].mean()) if bool(present.any()) else math.nan
    return {"accuracy": accuracy, "macroF1": macro_f1}


def perplexity(nll_sum: float, tokens: float) -> float:
    """exp(mean negative log-likelihood per predicted token)."""
    if tokens <= 0:
        return math.nan
    mean = nll_sum / tokens
    return math.exp(mean) if mean < 700 else math.inf
