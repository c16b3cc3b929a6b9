"""INT8 of the training engine's dynamic-sparse (mixture-of-experts) model, registered with the Auto classes.

Tiny real `SparseGatedFor*` models (random weights, the engine's own classes): quantized to int8/, loaded back
through the same loader the server uses, router and heads kept float, outputs close to fp32. And when the
architecture cannot be resolved, the loader says which model_type is unknown instead of a transformers trace.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from deepseek_workers.artifact import write_artifact
from deepseek_workers.builtin_models import minilm_path
from deepseek_workers.errors import BadArtifactError
from deepseek_workers.modelio import load_model
from deepseek_workers.models.sparse import (
    SparseGatedConfig,
    SparseGatedForCausalLM,
    SparseGatedForSequenceClassification,
)
from deepseek_workers.quantization import int8 as q8
from deepseek_workers.runconfig import SourceRef
from torch import nn
from transformers import AutoTokenizer

SOURCE = SourceRef(kind="DeepSeekTraining", namespace="ns", name="sparse", uid="u-1", generation=1)


def _config(**kw: object) -> SparseGatedConfig:
    shape: dict[str, object] = {
        "vocab_size": 200,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "expert_size": 64,
        "max_position_embeddings": 64,
        "dropout": 0.0,
    }
    return SparseGatedConfig(**{**shape, **kw})


def _classifier(vocab_size: int = 200) -> SparseGatedForSequenceClassification:
    torch.manual_seed(0)
    labels = {"num_labels": 3, "id2label": {0: "a", 1: "b", 2: "c"}, "label2id": {"a": 0, "b": 1, "c": 2}}
    cfg = _config(vocab_size=vocab_size, **labels)
    cfg.architectures = ["SparseGatedForSequenceClassification"]
    return SparseGatedForSequenceClassification(cfg).eval()


def _inputs(batch: int = 4, length: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.randint(5, 200, (batch, length), generator=g),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
    }


@pytest.mark.parametrize("method", ["int8-dynamic", "int8-weight-only"])
def test_sparse_classifier_quantizes_and_loads(tmp_path: Path, method: q8.Method) -> None:
    model = _classifier()
    meta = q8.save_int8(model, tmp_path, method=method, task="text-classification")
    # Experts and attention are quantized; routers and the classifier head stay float.
    assert any(".experts." in m for m in meta["modules"])
    assert not any(m.endswith("router") for m in meta["modules"])
    assert any(k.endswith("router") for k in meta["keptFloat"])
    loaded = q8.load_int8(tmp_path)
    assert isinstance(loaded, SparseGatedForSequenceClassification)
    router = loaded.get_submodule(next(k for k in meta["keptFloat"] if k.endswith("router")))
    assert type(router) is nn.Linear
    assert router.weight.dtype == torch.float32
    inputs = _inputs()
    with torch.inference_mode():
        ref, got = model(**inputs).logits, loaded(**inputs).logits
    assert torch.allclose(got, ref, atol=0.05), (got - ref).abs().max()


def test_sparse_causal_lm_keeps_tied_head_and_generates(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = _config(is_causal=True, tie_word_embeddings=True)
    cfg.architectures = ["SparseGatedForCausalLM"]
    model = SparseGatedForCausalLM(cfg).eval()
    meta = q8.save_int8(model, tmp_path, method="int8-dynamic", task="causal-lm")
    assert "lm_head" not in meta["modules"]
    loaded = q8.load_int8(tmp_path)
    assert isinstance(loaded, SparseGatedForCausalLM)
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight  # still tied
    ids = _inputs(batch=1, length=6)
    with torch.inference_mode():
        out = loaded.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 10)


def test_sparse_artifact_loads_through_modelio(tmp_path: Path) -> None:
    model = _classifier()
    uri = tmp_path / "v1"
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())  # a real tokenizer; the model is tiny
    with write_artifact(str(uri), version="v1", source=SOURCE, task="text-classification") as art:
        model.save_pretrained(art.dir / "fp32")
        tokenizer.save_pretrained(art.dir / "fp32")
        art.add_variant("fp32", "fp32", "hf-safetensors")
        q8.save_int8(model, art.dir / "int8", method="int8-dynamic", task="text-classification")
        tokenizer.save_pretrained(art.dir / "int8")
        art.add_variant("int8", "int8", "int8-safetensors")
        art.served_variant = "int8"
    fp32 = load_model(uri, "fp32")
    int8 = load_model(uri, "int8")
    assert fp32.labels == int8.labels == ["a", "b", "c"]
    assert isinstance(int8.model, SparseGatedForSequenceClassification)
    ids, mask = (t.numpy() for t in _inputs().values())
    assert (abs(int8.logits(ids, mask) - fp32.logits(ids, mask)) < 0.05).all()


def test_unknown_architecture_is_named(tmp_path: Path) -> None:
    int8 = tmp_path / "int8"
    q8.save_int8(_classifier(), int8, method="int8-dynamic", task="text-classification")
    config = json.loads((int8 / "config.json").read_text())
    config["model_type"] = "not_a_registered_model"
    (int8 / "config.json").write_text(json.dumps(config))
    with pytest.raises(BadArtifactError, match="not_a_registered_model"):
        q8.load_int8(int8)
    plain = tmp_path / "plain"  # a plain Hugging Face folder (no manifest) with the same config
    shutil.copytree(int8, plain)
    with pytest.raises(BadArtifactError, match="not_a_registered_model"):
        load_model(plain, "fp32")


def test_quantize_step_runs_on_a_sparse_trained_artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`deepseek-worker quantize` on what the train step leaves for a sparse classifier: it completes and says
    what it published (tiny random model, so its accuracy is arbitrary: INT8 is either published or refused as
    over budget, never quietly worse)."""
    from deepseek_workers import cli

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    model = _classifier(vocab_size=tokenizer.vocab_size)
    out = tmp_path / "out"
    with write_artifact(str(out / "trained" / "v1"), version="v1", source=SOURCE, task="text-classification") as art:
        model.save_pretrained(art.dir / "fp32")
        tokenizer.save_pretrained(art.dir / "fp32")
        art.add_variant("fp32", "fp32", "hf-safetensors")
    data = tmp_path / "eval.jsonl"
    words = ["oil prices rose", "the bank cut rates", "wheat exports fell", "profits doubled", "shares were sold"]
    data.write_text("".join(json.dumps({"text": w, "label": "abc"[i % 3]}) + "\n" for i, w in enumerate(words * 4)))
    config = {
        "source": SOURCE.model_dump(by_alias=True),
        "model": {"task": "text-classification", "builtin": {"name": "all-minilm-l6-v2"}},
        "dataset": {"uri": f"file://{data}", "eval": {"uri": f"file://{data}"}, "maxLength": 16},
        "quantization": {"method": "int8-dynamic", "maxAccuracyDrop": 0.05, "exportOnnx": True},
        "outputUri": str(out),
        "artifactVersion": "v1",
    }
    (tmp_path / "run.json").write_text(json.dumps(config))
    monkeypatch.setattr(cli, "TERMINATION_LOG", tmp_path / "termination-log")
    assert cli.main(["quantize", "--config", str(tmp_path / "run.json")]) == 0
    published = load_model(out / "v1", "auto")
    assert isinstance(published.model, SparseGatedForSequenceClassification)
    manifest = published.artifact.manifest if published.artifact else None
    assert manifest is not None
    assert "fp32" in manifest.variants
    assert ("int8" in manifest.variants) != manifest.over_budget
    metrics = json.loads((out / "v1" / "metrics.json").read_text())
    assert metrics["variants"]["int8"]["quantizedModules"] > 0
    assert metrics["quantization"]["servedVariant"] == manifest.served_variant
    # ONNX: exported and checked, or left out with the reason recorded (never a crash of the step).
    onnx = metrics["variants"]["onnx-fp32"]
    assert onnx["published"] == ("onnx-fp32" in manifest.variants)
    assert onnx["published"] or onnx["note"]
