"""The dynamic-sparse gated transformer: routing, balance loss, FLOPs, save/load through the Auto classes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from deepseek_workers.models import SparseGatedConfig, SparseGatedForCausalLM, SparseGatedForSequenceClassification
from deepseek_workers.models.sparse import (
    SparseMoE,
    experts_for_fraction,
    flops_per_token,
    measured_active_fraction,
)
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification


def _config(**over: object) -> SparseGatedConfig:
    base: dict[str, object] = {
        "vocab_size": 500,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_local_experts": 10,
        "num_experts_per_tok": 2,
        "expert_size": 16,
        "max_position_embeddings": 32,
        "num_labels": 3,
    }
    base.update(over)
    return SparseGatedConfig(**base)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 500, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[3, 3:] = 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize(("experts", "fraction", "k"), [(10, 0.2, 2), (16, 0.2, 3), (8, 0.01, 1), (4, 1.0, 4)])
def test_k_is_the_nearest_whole_number_of_experts(experts: int, fraction: float, k: int) -> None:
    assert experts_for_fraction(experts, fraction) == k


def test_only_k_experts_run_per_real_token() -> None:
    torch.manual_seed(0)
    model = SparseGatedForSequenceClassification(_config()).eval()
    ids, mask = _batch()
    out = model(ids, mask)
    real = int(mask.sum())
    assert int(out.routed_tokens) == real
    assert out.expert_counts.shape == (2, 10)
    assert out.expert_counts.sum(dim=1).tolist() == [2 * real, 2 * real]  # padding is never routed
    assert measured_active_fraction(out.expert_counts, real, 10) == pytest.approx(0.2)


def test_balance_loss_is_one_when_balanced_and_e_when_collapsed() -> None:
    moe = SparseMoE(_config(num_experts_per_tok=1, num_local_experts=4))
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(4, 32) * 50)  # token with feature j set goes to expert j, confidently
    even = torch.zeros(64, 32)
    even[torch.arange(64), torch.arange(64) % 4] = 1.0
    _, aux_even, counts = moe(even)
    assert counts.tolist() == [16, 16, 16, 16]
    assert float(aux_even) == pytest.approx(1.0, rel=1e-3)  # E * sum(1/4 * 1/4)
    collapsed = torch.zeros(64, 32)
    collapsed[:, 2] = 1.0
    _, aux_collapsed, counts = moe(collapsed)
    assert counts.tolist() == [0, 0, 64, 0]
    assert float(aux_collapsed) == pytest.approx(4.0, rel=1e-3)  # E * (1 * 1): the penalty the router avoids


def test_every_expert_gets_a_gradient_even_without_tokens() -> None:
    # DDP requires every parameter in the graph; an expert that received no token still must be.
    torch.manual_seed(0)
    model = SparseGatedForSequenceClassification(_config(num_local_experts=16, num_experts_per_tok=1))
    ids, mask = _batch()
    out = model(ids[:1, :2], mask[:1, :2], labels=torch.tensor([1]))
    out.loss.backward()
    assert (out.expert_counts == 0).any()
    assert all(p.grad is not None for p in model.parameters())


def test_dense_execution_gives_the_same_output_and_padding_changes_nothing() -> None:
    torch.manual_seed(0)
    sparse = SparseGatedForSequenceClassification(_config()).eval()
    dense = SparseGatedForSequenceClassification(_config(moe_impl="dense")).eval()
    dense.load_state_dict(sparse.state_dict())
    ids, mask = _batch()
    a = sparse(ids, mask).logits
    assert torch.allclose(a, dense(ids, mask).logits, atol=1e-5)
    alone = sparse(ids[1:2, :7]).logits  # row 1 without its padding
    assert torch.allclose(alone, a[1:2], atol=1e-5)


def test_causal_model_does_not_look_ahead_and_ties_its_head() -> None:
    torch.manual_seed(0)
    lm = SparseGatedForCausalLM(_config(is_causal=True)).eval()
    assert lm.lm_head.weight is lm.model.embed_tokens.weight
    ids, _ = _batch()
    changed = ids.clone()
    changed[:, 6:] = 7
    assert torch.allclose(lm(ids).logits[:, :6], lm(changed).logits[:, :6], atol=1e-5)
    assert not torch.allclose(lm(ids).logits[:, 6:], lm(changed).logits[:, 6:])


def test_saved_models_load_through_the_auto_classes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    clf = SparseGatedForSequenceClassification(_config()).eval()
    clf.save_pretrained(tmp_path / "clf")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "clf").eval()
    assert type(again) is SparseGatedForSequenceClassification
    ids, mask = _batch()
    assert torch.equal(again(ids, mask).logits, clf(ids, mask).logits)
    lm = SparseGatedForCausalLM(_config(is_causal=True)).eval()
    lm.save_pretrained(tmp_path / "lm")
    lm2 = AutoModelForCausalLM.from_pretrained(tmp_path / "lm").eval()
    assert lm2.lm_head.weight is lm2.model.embed_tokens.weight
    generated = lm2.generate(ids[:1, :4], max_new_tokens=3, do_sample=False, use_cache=False)
    assert generated.shape == (1, 7)


def test_dynamic_int8_quantization_covers_the_experts() -> None:
    torch.manual_seed(0)
    model = SparseGatedForSequenceClassification(_config()).eval()
    q = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    assert type(q.model.layers[0].moe.experts[0].up).__name__ == "Linear"
    assert type(q.model.layers[0].moe.experts[0].up).__module__.startswith("torch.ao.nn.quantized")
    ids, mask = _batch()
    assert q(ids, mask).logits.shape == (4, 3)


def test_flops_accounting_by_hand() -> None:
    cfg = _config(hidden_size=8, expert_size=4, num_local_experts=4, num_hidden_layers=1, num_labels=2)
    est = flops_per_token(cfg, active_experts=1.0, seq_len=10)
    attn = 4 * 2 * 8 * 8 + 2 * 2 * 10 * 8
    router, expert, head = 2 * 8 * 4, 2 * 2 * 8 * 4, 2 * 8 * 2
    assert est.sparse_per_token == attn + router + expert + head
    assert est.dense_per_token == attn + 4 * expert + head
    assert est.ffn_saved_fraction == pytest.approx(1 - (router + expert) / (4 * expert))
    assert 0 < est.saved_fraction < est.ffn_saved_fraction
