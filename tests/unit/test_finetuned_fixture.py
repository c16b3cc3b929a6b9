"""The shared fine-tuned model really learned: far above chance on held-out Reuters R8."""

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.fixtures.ml import FineTunedClassifier


def test_finetuned_minilm_beats_chance(finetuned_minilm_r8: FineTunedClassifier) -> None:
    tok = AutoTokenizer.from_pretrained(finetuned_minilm_r8.path)
    model = AutoModelForSequenceClassification.from_pretrained(finetuned_minilm_r8.path).eval()
    rows = finetuned_minilm_r8.eval_rows[:200]
    enc = tok([r.text for r in rows], truncation=True, max_length=64, padding=True, return_tensors="pt")
    with torch.inference_mode():
        pred = model(**enc).logits.argmax(-1).tolist()
    acc = sum(finetuned_minilm_r8.labels[p] == r.label for p, r in zip(pred, rows, strict=True)) / len(rows)
    assert acc > 0.75
