# mypy: allow-untyped-calls
# (transformers' PreTrainedModel/Config hooks are untyped)
"""The built-in dynamic-sparse gated transformer: top-k mixture-of-experts feed-forward blocks.

Each block's feed-forward layer is split into `num_local_experts` small experts; a learned router (one linear
layer + softmax) picks the `num_experts_per_tok` best experts for every token, and only those run (dropless
top-k routing, as in Mixtral/DeepSeekMoE). A Switch/GShard load-balancing loss keeps the router from
collapsing onto a few experts. Every forward pass reports how many (token, expert) pairs were active, so the
active fraction and the FLOPs saved against the dense equivalent (all experts on every token) are measured, not
assumed.

The classes are ordinary transformers models (a registered config, PreTrainedModel subclasses, safetensors),
so the quantization and serving code loads them with the same `AutoModelFor*.from_pretrained(dir)` call as a
BERT or Llama model once `deepseek_workers.models` has been imported (importing it registers them).
Experts are plain `nn.Linear` pairs so that dynamic INT8 quantization (which swaps `nn.Linear`) covers them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.utils.generic import ModelOutput

MODEL_TYPE = "deepseek_sparse"


class SparseGatedConfig(PreTrainedConfig):
    """Shape of the sparse transformer; `num_experts_per_tok / num_local_experts` is the active fraction."""

    model_type = MODEL_TYPE

    vocab_size: int = 30522
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_local_experts: int = 16
    num_experts_per_tok: int = 3
    expert_size: int = 256
    max_position_embeddings: int = 512
    dropout: float = 0.1
    router_aux_loss_coef: float = 0.01
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    is_causal: bool = False
    # "sparse" runs only the chosen experts on their tokens (data-dependent shapes); "dense" runs every expert
    # on every token and zeroes the unchosen ones: identical output, static shapes (for ONNX export/tracing).
    moe_impl: str = "sparse"
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    tie_word_embeddings: bool = True


def experts_for_fraction(num_experts: int, active_fraction: float) -> int:
    """k for a requested active fraction: the nearest whole number of experts, at least one."""
    return max(1, min(num_experts, round(active_fraction * num_experts)))


@dataclass
class SparseGatedOutput(ModelOutput):
    """Model output plus the router's bookkeeping.

    `aux_loss` is the (unweighted) load-balancing loss averaged over blocks; `expert_counts` has shape
    (layers, experts): how many real (non-padding) tokens each expert processed; `routed_tokens` is the number
    of real tokens routed per block.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    expert_counts: torch.Tensor | None = None
    routed_tokens: torch.Tensor | None = None


class Expert(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.up = nn.Linear(hidden, inner)
        self.down = nn.Linear(inner, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.down(F.gelu(self.up(x)))
        return y


class SparseMoE(nn.Module):
    """Top-k gated experts over a flat batch of tokens."""

    def __init__(self, config: SparseGatedConfig) -> None:
        super().__init__()
        self.num_experts = config.num_local_experts
        self.top_k = config.num_experts_per_tok
        self.impl = config.moe_impl
        self.router = nn.Linear(config.hidden_size, self.num_experts, bias=False)
        self.experts = nn.ModuleList(Expert(config.hidden_size, config.expert_size) for _ in range(self.num_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (tokens, hidden) -> (output, aux loss, tokens per expert)."""
        # Routing in fp32 even under autocast: softmax and top-k on bf16 logits tie and flip too easily.
        probs = torch.softmax(self.router(x).float(), dim=-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        weights = (top_p / top_p.sum(dim=-1, keepdim=True)).to(x.dtype)
        chosen = F.one_hot(top_i, self.num_experts).sum(dim=1)  # (tokens, experts), 0/1
        counts = chosen.sum(dim=0)
        # Switch/GShard balance loss: E * sum_e (share of assignments to e) * (mean router prob of e); 1.0 when even.
        tokens = max(x.shape[0], 1)
        share = counts.float() / (tokens * self.top_k)
        aux = self.num_experts * torch.sum(share * probs.mean(dim=0)) if x.shape[0] else probs.sum() * 0.0
        if self.impl == "dense":
            gate = torch.zeros_like(probs, dtype=x.dtype).scatter(1, top_i, weights)
            out = torch.zeros_like(x)
            for e, expert in enumerate(self.experts):
                out = out + expert(x) * gate[:, e : e + 1]
            return out, aux, counts
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token_idx, slot = torch.where(top_i == e)
            # Run every expert, even on zero tokens, so each parameter is in the graph (DDP needs that).
            y = expert(x[token_idx]) * weights[token_idx, slot].unsqueeze(-1)
            out = out.index_add(0, token_idx, y.to(out.dtype))
        return out, aux, counts


class Attention(nn.Module):
    def __init__(self, config: SparseGatedConfig) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        b, t, d = x.shape

        def split(p: nn.Linear) -> torch.Tensor:
            out: torch.Tensor = p(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
            return out

        y = F.scaled_dot_product_attention(
            split(self.q_proj),
            split(self.k_proj),
            split(self.v_proj),
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal and mask is None,
        )
        out: torch.Tensor = self.o_proj(y.transpose(1, 2).reshape(b, t, d))
        return out


class Block(nn.Module):
    def __init__(self, config: SparseGatedConfig) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = Attention(config)
        self.ln_moe = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.moe = SparseMoE(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, causal: bool, token_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = x + self.drop(self.attn(self.ln_attn(x), mask, causal))
        # Route real tokens only: padding costs no expert FLOPs and does not skew the balance statistics.
        h = self.ln_moe(x)
        flat = h[token_mask]
        moe_out, aux, counts = self.moe(flat)
        delta = torch.zeros_like(h).masked_scatter(token_mask.unsqueeze(-1), moe_out.to(h.dtype))
        return x + self.drop(delta), aux, counts


class SparseGatedPreTrainedModel(PreTrainedModel):
    config_class = SparseGatedConfig
    config: SparseGatedConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]  # noqa: RUF012 (transformers declares it an instance attribute)


class SparseGatedModel(SparseGatedPreTrainedModel):
    """Embeddings + blocks + final norm; returns hidden states and router statistics."""

    def __init__(self, config: SparseGatedConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        assert isinstance(value, nn.Embedding)
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **_: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (hidden states, mean aux loss, expert counts (layers, experts))."""
        t = input_ids.shape[1]
        if t > self.config.max_position_embeddings:
            raise ValueError(f"sequence of {t} tokens is longer than max_position_embeddings")
        token_mask = (
            attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
        )
        causal = self.config.is_causal
        mask: torch.Tensor | None = None
        if attention_mask is not None and not bool(token_mask.all()):
            # (b, 1, t, t) boolean, True = may attend; padded query rows still see themselves (no NaN rows).
            keys = token_mask[:, None, None, :]
            mask = keys | torch.eye(t, dtype=torch.bool, device=input_ids.device)
            if causal:
                mask = mask & torch.ones(t, t, dtype=torch.bool, device=input_ids.device).tril()
        pos = torch.arange(t, device=input_ids.device)
        x = self.drop(self.embed_tokens(input_ids) + self.embed_positions(pos)[None])
        aux_total = x.new_zeros((), dtype=torch.float32)
        counts = []
        for block in self.layers:
            x, aux, c = block(x, mask, causal, token_mask)
            aux_total = aux_total + aux
            counts.append(c)
        return self.norm(x), aux_total / len(self.layers), torch.stack(counts)


class SparseGatedForSequenceClassification(SparseGatedPreTrainedModel):
    """Mean-pooled sparse encoder + linear classifier."""

    def __init__(self, config: SparseGatedConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = SparseGatedModel(config)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels or 2)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **_: Any,
    ) -> SparseGatedOutput:
        hidden, aux, counts = self.model(input_ids, attention_mask)
        if attention_mask is None:
            pooled = hidden.mean(dim=1)
        else:
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels) + self.config.router_aux_loss_coef * aux
        routed = attention_mask.sum() if attention_mask is not None else torch.tensor(input_ids.numel())
        return SparseGatedOutput(loss=loss, logits=logits, aux_loss=aux, expert_counts=counts, routed_tokens=routed)


class SparseGatedForCausalLM(SparseGatedPreTrainedModel, GenerationMixin):
    """Causal sparse decoder with an LM head tied to the token embeddings (generates without a KV cache)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}  # noqa: RUF012 (transformers' own form)

    def __init__(self, config: SparseGatedConfig) -> None:
        super().__init__(config)
        self.model = SparseGatedModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        head: nn.Module = self.lm_head
        return head

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **_: Any,
    ) -> SparseGatedOutput:
        hidden, aux, counts = self.model(input_ids, attention_mask)
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            # Predict token t+1 from position t; -100 marks positions without a target (padding).
            shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            loss = F.cross_entropy(shift_logits, labels[:, 1:].reshape(-1), ignore_index=-100)
            loss = loss + self.config.router_aux_loss_coef * aux
        routed = attention_mask.sum() if attention_mask is not None else torch.tensor(input_ids.numel())
        return SparseGatedOutput(loss=loss, logits=logits, aux_loss=aux, expert_counts=counts, routed_tokens=routed)


# ---------------------------------------------------------------------------------------------------------
# FLOPs accounting (multiply-accumulate = 2 FLOPs; forward pass; embeddings lookups are free)


@dataclass(frozen=True)
class FlopsEstimate:
    sparse_per_token: float  # at the measured number of active experts per token
    dense_per_token: float  # the same model with every expert active
    ffn_sparse_per_token: float
    ffn_dense_per_token: float

    @property
    def saved_fraction(self) -> float:
        return 1.0 - self.sparse_per_token / self.dense_per_token

    @property
    def ffn_saved_fraction(self) -> float:
        return 1.0 - self.ffn_sparse_per_token / self.ffn_dense_per_token


def flops_per_token(config: SparseGatedConfig, active_experts: float, seq_len: float) -> FlopsEstimate:
    """Forward FLOPs per token of the whole model, sparse (at `active_experts` per token) against dense."""
    d, h, e = config.hidden_size, config.expert_size, config.num_local_experts
    attn = 4 * 2 * d * d + 2 * 2 * seq_len * d  # q/k/v/o projections + scores and weighted sum
    router = 2 * d * e
    expert = 2 * 2 * d * h  # up + down projection of one expert
    head = 2 * d * (config.vocab_size if config.is_causal else config.num_labels or 2)
    layers = config.num_hidden_layers
    ffn_sparse = layers * (router + active_experts * expert)
    ffn_dense = layers * e * expert
    sparse = layers * attn + ffn_sparse + head
    dense = layers * attn + ffn_dense + head
    return FlopsEstimate(sparse, dense, ffn_sparse, ffn_dense)


def measured_active_fraction(expert_counts: torch.Tensor, routed_tokens: float, num_experts: int) -> float:
    """Share of (token, expert) pairs that ran, over all blocks."""
    layers = expert_counts.shape[0]
    total = routed_tokens * num_experts * layers
    return float(expert_counts.sum().item()) / total if total else math.nan


def expert_load_cv(expert_counts: torch.Tensor) -> float:
    """Coefficient of variation of tokens per expert (0 = perfectly even), averaged over blocks."""
    c = expert_counts.float()
    mean = c.mean(dim=1).clamp(min=1e-9)
    return float((c.std(dim=1, unbiased=False) / mean).mean().item())


_registered = False


def register() -> None:
    """Make AutoConfig / AutoModel* resolve `model_type: deepseek_sparse` (idempotent)."""
    global _registered
    if _registered:
        return
    AutoConfig.register(MODEL_TYPE, SparseGatedConfig, exist_ok=True)
    AutoModel.register(SparseGatedConfig, SparseGatedModel, exist_ok=True)
    AutoModelForSequenceClassification.register(SparseGatedConfig, SparseGatedForSequenceClassification, exist_ok=True)
    AutoModelForCausalLM.register(SparseGatedConfig, SparseGatedForCausalLM, exist_ok=True)
    _registered = True
