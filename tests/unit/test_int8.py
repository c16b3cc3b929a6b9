"""The INT8 format and its runtimes, on small real transformers architectures (BERT, Llama, a custom MoE).

The models here are randomly initialised from small configs (the quantization rules and the file format do not
depend on training); the accuracy of INT8 on a really fine-tuned model is tested in test_quantize_minilm.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from deepseek_workers.errors import BadArtifactError
from deepseek_workers.quantization import int8 as q8
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput


def _bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=500,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=3,
        id2label={0: "a", 1: "b", 2: "c"},
        label2id={"a": 0, "b": 1, "c": 2},
    )
    return BertForSequenceClassification(cfg).eval()


def _llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(cfg).eval()


# A dynamic-sparse (gated mixture-of-experts) classifier registered with the Auto classes, like the training
# engine's: quantization must not assume a stock architecture.
class TinyMoEConfig(PretrainedConfig):
    model_type = "tiny-moe-test"

    def __init__(self, vocab_size: int = 200, hidden: int = 32, experts: int = 4, num_labels: int = 2, **kw: Any):
        super().__init__(num_labels=num_labels, **kw)
        self.vocab_size, self.hidden, self.experts = vocab_size, hidden, experts


class TinyMoEForSequenceClassification(PreTrainedModel):
    config_class = TinyMoEConfig

    def __init__(self, config: TinyMoEConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden)
        self.gate = nn.Linear(config.hidden, config.experts)
        self.experts = nn.ModuleList(nn.Linear(config.hidden, config.hidden) for _ in range(config.experts))
        self.classifier = nn.Linear(config.hidden, config.num_labels)
        self.post_init()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any
    ) -> SequenceClassifierOutput:
        h = self.embed(input_ids)
        top = self.gate(h).argmax(-1, keepdim=True)  # top-1 routing
        mixed = torch.stack([e(h) for e in self.experts], dim=-2)
        h = mixed.gather(-2, top.unsqueeze(-1).expand(*top.shape, h.shape[-1])).squeeze(-2)
        return SequenceClassifierOutput(logits=self.classifier(h.mean(1)))


AutoConfig.register("tiny-moe-test", TinyMoEConfig)
AutoModelForSequenceClassification.register(TinyMoEConfig, TinyMoEForSequenceClassification)


def _ids(vocab: int, batch: int = 3, length: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.randint(5, vocab, (batch, length), generator=g),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
    }


def test_selection_keeps_heads_small_and_tied_layers_float() -> None:
    chosen, kept = q8.select_linears(_bert())
    assert "classifier" in kept
    assert "bert.pooler.dense" in chosen
    assert len([c for c in chosen if ".attention.self." in c]) == 6  # q, k, v in 2 layers
    chosen, kept = q8.select_linears(_llama())
    assert "lm_head" in kept  # tied to the embeddings: stays float
    assert all(".mlp." in c or ".self_attn." in c for c in chosen)
    chosen, kept = q8.select_linears(TinyMoEForSequenceClassification(TinyMoEConfig()))
    assert set(kept) == {"gate", "classifier"}  # the router and the head stay float
    assert chosen == [f"experts.{i}" for i in range(4)]


@pytest.mark.parametrize("runtime", ["fbgemm", "torchao"])
def test_bert_int8_round_trip_is_exact_and_close_to_fp32(tmp_path: Path, runtime: q8.Runtime) -> None:
    model = _bert()
    meta = q8.save_int8(model, tmp_path, method="int8-dynamic", task="text-classification")
    stored = load_file(str(tmp_path / q8.WEIGHTS_FILE))
    name = "bert.encoder.layer.0.attention.self.query"
    assert stored[f"{name}.weight"].dtype == torch.int8
    assert stored[f"{name}.weight_scale"].shape == (64,)
    # Scales are symmetric per output channel: the largest |q| in each row is at the int8 limit.
    assert int(stored[f"{name}.weight"].to(torch.int16).abs().amax(1).min()) >= 127
    assert stored["classifier.weight"].dtype == torch.float32
    assert meta["modules"]
    assert "classifier" in meta["keptFloat"]
    assert json.loads((tmp_path / q8.META_FILE).read_text())["format"] == q8.INT8_FORMAT

    loaded = q8.load_int8(tmp_path, runtime=runtime)
    module = loaded.get_submodule(name)
    if runtime == "fbgemm":
        assert torch.equal(module.weight().int_repr(), stored[f"{name}.weight"])
    else:
        assert torch.equal(module.weight.qdata, stored[f"{name}.weight"])
    inputs = _ids(500)
    with torch.inference_mode():
        ref = model(**inputs).logits
        got = loaded(**inputs).logits
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=0.05), (got - ref).abs().max()


def test_runtimes_agree(tmp_path: Path) -> None:
    q8.save_int8(_bert(), tmp_path, method="int8-dynamic", task="text-classification")
    inputs = _ids(500)
    with torch.inference_mode():
        a = q8.load_int8(tmp_path, runtime="fbgemm")(**inputs).logits
        b = q8.load_int8(tmp_path, runtime="torchao")(**inputs).logits
    assert torch.allclose(a, b, atol=0.05)


def test_default_runtime() -> None:
    assert q8.default_runtime("int8-dynamic", "cpu") == ("fbgemm" if q8.fbgemm_available() else "torchao")
    assert q8.default_runtime("int8-weight-only", "cpu") == "torchao"
    assert q8.default_runtime("int8-dynamic", "cuda") == "torchao"


@pytest.mark.parametrize("method", ["int8-dynamic", "int8-weight-only"])
def test_causal_lm_keeps_tied_embeddings_and_generates(tmp_path: Path, method: q8.Method) -> None:
    model = _llama()
    meta = q8.save_int8(model, tmp_path, method=method, task="causal-lm")
    assert meta["tied"] == {"lm_head.weight": "model.embed_tokens.weight"}
    loaded = q8.load_int8(tmp_path)
    assert isinstance(loaded, LlamaForCausalLM)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # still tied after loading
    assert loaded.lm_head.weight.dtype == torch.float32
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    inputs = _ids(300, batch=2, length=10)
    with torch.inference_mode():
        ref = model(**inputs).logits
        got = loaded(**inputs).logits
        assert torch.allclose(got, ref, atol=0.05)
        out = loaded.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape == (2, 14)


def test_weight_only_keeps_float_activations(tmp_path: Path) -> None:
    model = _bert()
    q8.save_int8(model, tmp_path, method="int8-weight-only", task="text-classification")
    loaded = q8.load_int8(tmp_path)
    w = loaded.get_submodule("bert.encoder.layer.1.output.dense").weight
    assert type(w).__name__ == "Int8Tensor"
    assert w.act_quant_kwargs is None
    inputs = _ids(500)
    with torch.inference_mode():
        assert torch.allclose(loaded(**inputs).logits, model(**inputs).logits, atol=0.02)


def test_custom_registered_moe_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyMoEForSequenceClassification(TinyMoEConfig()).eval()
    q8.save_int8(model, tmp_path, method="int8-dynamic", task="text-classification")
    loaded = q8.load_int8(tmp_path)
    assert isinstance(loaded, TinyMoEForSequenceClassification)
    assert type(loaded.gate) is nn.Linear  # router untouched
    inputs = _ids(200)
    with torch.inference_mode():
        assert torch.allclose(loaded(**inputs).logits, model(**inputs).logits, atol=0.05)


def test_model_without_quantizable_layers_is_refused(tmp_path: Path) -> None:
    model = TinyMoEForSequenceClassification(TinyMoEConfig(hidden=8))  # all Linears below 16 features
    with pytest.raises(BadArtifactError, match="no Linear layer that INT8 quantization applies to"):
        q8.save_int8(model, tmp_path, method="int8-dynamic", task="text-classification")


def test_bad_int8_directories_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BadArtifactError, match=r"quantization\.json is missing"):
        q8.load_int8(tmp_path)
    q8.save_int8(_bert(), tmp_path, method="int8-dynamic", task="text-classification")
    meta_path = tmp_path / q8.META_FILE
    good_meta = meta_path.read_text()

    meta_path.write_text(good_meta.replace(q8.INT8_FORMAT, "deepseek.ai/int8-v0"))
    with pytest.raises(BadArtifactError, match="int8-v0"):
        q8.load_int8(tmp_path)

    meta_path.write_text(good_meta.replace('"int8-dynamic"', '"int4"'))
    with pytest.raises(BadArtifactError, match="method 'int4'"):
        q8.load_int8(tmp_path)

    meta_path.write_text(good_meta)
    tensors = load_file(str(tmp_path / q8.WEIGHTS_FILE))
    del tensors["bert.encoder.layer.0.attention.self.query.weight_scale"]
    save_file(tensors, str(tmp_path / q8.WEIGHTS_FILE))
    with pytest.raises(BadArtifactError, match=r"lacks bert\.encoder\.layer\.0\.attention\.self\.query\.weight_scale"):
        q8.load_int8(tmp_path)

    (tmp_path / q8.WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(BadArtifactError, match="cannot read the INT8 model"):
        q8.load_int8(tmp_path)


def test_fbgemm_refuses_weight_only_and_gpu(tmp_path: Path) -> None:
    q8.save_int8(_bert(), tmp_path, method="int8-weight-only", task="text-classification")
    with pytest.raises(BadArtifactError, match="runtime fbgemm runs int8-dynamic on CPU only"):
        q8.load_int8(tmp_path, runtime="fbgemm")


def test_auto_classes_load_from_the_int8_directory(tmp_path: Path) -> None:
    # The directory is self-contained: its config alone tells which architecture to build.
    q8.save_int8(_llama(), tmp_path, method="int8-weight-only", task="causal-lm")
    cfg = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(AutoModelForCausalLM.from_config(cfg), LlamaForCausalLM)


def test_recorded_runtime_is_preferred_and_candidates_by_task(tmp_path: Path) -> None:
    q8.save_int8(_bert(), tmp_path, method="int8-dynamic", task="text-classification")
    q8.record_runtime(tmp_path, "torchao")
    assert q8.read_meta(tmp_path)["runtime"] == "torchao"
    loaded = q8.load_int8(tmp_path)  # the numbers were measured with torchao: serve with torchao
    assert type(loaded.get_submodule("bert.pooler.dense").weight).__name__ == "Int8Tensor"
    if q8.fbgemm_available():
        assert q8.runtime_candidates("int8-dynamic", "text-classification") == ["fbgemm"]
    # Per-tensor activations wreck small causal LMs: they go straight to torchao's per-token path.
    assert q8.runtime_candidates("int8-dynamic", "causal-lm") == ["torchao"]
    assert q8.runtime_candidates("int8-weight-only", "text-classification") == ["torchao"]
