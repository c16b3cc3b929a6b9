"""Causal language modelling: SmolLM2-135M with LoRA, and the sparse model from scratch, on Hamlet."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from deepseek_workers.training import run_training
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.training.helpers import make_config, read_metrics


def test_smollm2_lora_fine_tunes_on_hamlet(tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path,
        model={"task": "causal-lm", "builtin": {"name": "smollm2-135m", "architecture": None}},
        dataset={"builtin": "hamlet", "maxTrainSamples": 120, "maxEvalSamples": 20, "maxLength": 64},
        training={"batchSize": 4, "maxSteps": 4, "learningRate": 1e-3, "lora": {"r": 4}},
    )
    run_training(cfg)
    m = read_metrics(tmp_path / "v1")
    # A pretrained LM reads Shakespeare far better than chance (uniform over 49,152 tokens would be 49,152).
    assert 1.0 < m["perplexity"] < 200.0, m
    assert abs(math.log(m["perplexity"]) - m["evalLoss"]) < 1e-6
    assert m["trainableFraction"] < 0.01
    assert (tmp_path / "v1" / "adapter" / "adapter_model.safetensors").is_file()
    merged = tmp_path / "v1" / "fp32"
    tok = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    enc = tok("To be, or not to be", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 5


def test_sparse_causal_lm_learns_hamlet_from_scratch(tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path,
        model={"task": "causal-lm"},
        dataset={"builtin": "hamlet", "maxLength": 64, "evalFraction": 0.05},
        training={"batchSize": 16, "maxSteps": 40, "learningRate": 3e-3, "sparsity": {"activeFraction": 0.3}},
    )
    run_training(cfg)
    m = read_metrics(tmp_path / "v1")
    # From random weights (perplexity ~ the 30,522-token vocabulary) to a model of the text's word statistics.
    assert m["perplexity"] < 1500, m
    assert abs(m["activeFraction"] - 0.3) <= 0.05
    assert m["flopsSavedVsDense"] > 0
