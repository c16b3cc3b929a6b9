"""Evaluation metrics against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from deepseek_workers.training.evaluation import classification_metrics, perplexity


def test_accuracy_and_macro_f1_by_hand() -> None:
    # true \ pred: class 0: 3 right, 1 as class 1; class 1: 2 right; class 2: 1 as class 0, never predicted.
    confusion = torch.tensor([[3, 1, 0], [0, 2, 0], [1, 0, 0]])
    m = classification_metrics(confusion)
    assert m["accuracy"] == pytest.approx(5 / 7)
    f1_0 = 2 * (3 / 4) * (3 / 4) / (3 / 4 + 3 / 4)
    f1_1 = 2 * (2 / 3) * 1.0 / (2 / 3 + 1.0)
    assert m["macroF1"] == pytest.approx((f1_0 + f1_1 + 0.0) / 3)


def test_absent_classes_do_not_dilute_macro_f1() -> None:
    confusion = torch.zeros(4, 4)
    confusion[0, 0], confusion[1, 1] = 5, 5
    assert classification_metrics(confusion) == {"accuracy": 1.0, "macroF1": 1.0}


def test_perplexity() -> None:
    assert perplexity(10 * math.log(4.0), 10) == pytest.approx(4.0)
    assert math.isnan(perplexity(1.0, 0))
