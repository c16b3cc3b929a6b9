"""The torch classifier is served as a TorchScript trace only where the trace answers as the eager model does."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from deepseek_workers.models.sparse import SparseGatedConfig, register
from deepseek_workers.serving.backends import TORCHSCRIPT_ENV, TorchClassifier, load_backend
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.modeling_outputs import SequenceClassifierOutput

from tests.fixtures.ml import FineTunedClassifier


def _texts_as_ids(backend: Any, model: FineTunedClassifier, n: int) -> list[list[int]]:
    return [ids for ids in (backend.encode(r.text) for r in model.eval_rows) if len(ids) <= 256][:n]


def test_minilm_is_served_traced_and_answers_like_the_eager_model(
    finetuned_minilm_r8: FineTunedClassifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    traced = load_backend(str(finetuned_minilm_r8.path), "fp32")
    assert traced.runtime == "torchscript"
    monkeypatch.setenv(TORCHSCRIPT_ENV, "0")
    eager = load_backend(str(finetuned_minilm_r8.path), "fp32")
    assert eager.runtime == "torch-eager"
    assert isinstance(traced, TorchClassifier)
    assert isinstance(eager, TorchClassifier)
    ids = _texts_as_ids(traced, finetuned_minilm_r8, 24)
    # Batches of mixed lengths (padding) and single texts, none of them the shapes the trace was checked on.
    for batch in (ids[:11], ids[11:12], sorted(ids[12:], key=len)):
        np.testing.assert_allclose(traced.predict(batch), eager.predict(batch), atol=1e-5)


class _LengthDependent(torch.nn.Module):
    """A classifier whose Python control flow depends on the input's length (a trace records one branch)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SequenceClassifierOutput:
        logits = self.inner(input_ids=input_ids, attention_mask=attention_mask).logits
        if input_ids.shape[1] > 20:
            logits = logits.flip(-1)
        return SequenceClassifierOutput(logits=logits)


def test_a_trace_that_answers_otherwise_is_not_used(finetuned_minilm_r8: FineTunedClassifier) -> None:
    inner = AutoModelForSequenceClassification.from_pretrained(finetuned_minilm_r8.path).eval()
    tokenizer = AutoTokenizer.from_pretrained(finetuned_minilm_r8.path)
    backend = TorchClassifier(_LengthDependent(inner), tokenizer, finetuned_minilm_r8.labels, "cpu")
    why_not = backend.use_torchscript()
    assert why_not is not None
    assert "differs from the eager model" in why_not
    assert backend.runtime == "torch-eager"
    long_text = _texts_as_ids(backend, finetuned_minilm_r8, 40)
    batch = [x for x in long_text if len(x) > 20][:2]
    expected = inner(input_ids=torch.tensor(batch[:1])).logits.flip(-1).softmax(-1).detach().numpy()
    np.testing.assert_allclose(backend.predict(batch[:1]), expected, atol=1e-5)


def test_the_dynamic_sparse_model_stays_eager(finetuned_minilm_r8: FineTunedClassifier) -> None:
    register()
    config = SparseGatedConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_local_experts=4,
        num_experts_per_tok=1, expert_size=16, num_labels=8,
    )  # fmt: skip
    model = AutoModelForSequenceClassification.from_config(config).eval()
    tokenizer = AutoTokenizer.from_pretrained(finetuned_minilm_r8.path)
    backend = TorchClassifier(model, tokenizer, finetuned_minilm_r8.labels, "cpu")
    why_not = backend.use_torchscript()
    assert why_not is not None
    assert "router" in why_not
    assert backend.runtime == "torch-eager"
    assert backend.predict([[101, 2000, 102]]).shape == (1, 8)
