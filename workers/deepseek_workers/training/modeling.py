"""Which model a run trains: resolve its directory, load tokenizer and weights, apply LoRA.

Pretrained models always come from a local directory (a built-in package, a mounted PVC, or a URI copied to the
model cache), never from a hub id. The dynamic-sparse transformer starts from random weights and borrows
all-MiniLM-L6-v2's WordPiece tokenizer.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from deepseek_workers import builtin_models
from deepseek_workers.artifact import MANIFEST, open_artifact
from deepseek_workers.errors import BadArtifactError, BadConfigError
from deepseek_workers.models import SparseGatedConfig
from deepseek_workers.models.sparse import (
    MODEL_TYPE as SPARSE_MODEL_TYPE,
)
from deepseek_workers.models.sparse import (
    SparseGatedForCausalLM,
    SparseGatedForSequenceClassification,
    experts_for_fraction,
)
from deepseek_workers.runconfig import TrainRunConfig
from deepseek_workers.storage import Storage, StorageError

log = logging.getLogger(__name__)

SPARSE_BUILTIN = "dynamic-sparse-transformer"
# LoRA targets for model families peft has no default for (ours), by config.model_type.
LORA_DEFAULT_TARGETS = {SPARSE_MODEL_TYPE: ["q_proj", "v_proj"]}
_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")


@dataclass
class LoadedModel:
    model: nn.Module  # a peft model when LoRA is on
    tokenizer: PreTrainedTokenizerBase
    description: str  # what it started from, for logs and the manifest
    model_type: str
    lora: bool
    sparse_config: SparseGatedConfig | None
    max_positions: int | None


def resolve_model_dir(cfg: TrainRunConfig, cache: Path) -> Path | None:
    """Local Hugging Face directory of the starting model (None: the sparse model trained from scratch).

    A published artifact (a directory with manifest.json, e.g. an earlier run's output) is verified file by
    file and its fp32 variant used; a plain Hugging Face folder is used as it is (an s3:// one is copied into
    `cache` first).
    """
    spec = cfg.model
    if spec.builtin is not None:
        if spec.builtin.name == SPARSE_BUILTIN:
            return None
        return builtin_models.pretrained_path(spec.builtin.name)
    if spec.pvc is not None:
        if cfg.model_path is None:
            raise BadConfigError("model.pvc is set but the run config has no resolved modelPath")
        location = cfg.model_path
    else:
        assert spec.uri is not None
        location = spec.uri
    try:
        store = Storage.from_uri(location)
        if store.is_file(MANIFEST):
            return open_artifact(location).variant_path("fp32")
        directory = store.local_path()
        if directory is None:
            directory = cache / "input-model"
            if not store.get_dir("", directory):
                raise BadArtifactError(f"model {location} is empty or does not exist")
    except StorageError as err:
        raise BadArtifactError(f"model {location}: {err}") from None
    if not directory.is_dir():
        raise BadArtifactError(f"model directory {directory} does not exist")
    if not (directory / "config.json").is_file():
        raise BadArtifactError(
            f"model directory {directory} has no config.json: expected a Hugging Face-format folder "
            "(config.json, model.safetensors, tokenizer files) or an artifact (manifest.json, fp32/)"
        )
    return directory


def existing_labels(model_dir: Path | None) -> list[str] | None:
    """The label vocabulary of a model that is already a classifier (None when it has no real labels)."""
    if model_dir is None:
        return None
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BadArtifactError(f"{model_dir}/config.json is unreadable: {err}") from None
    id2label = config.get("id2label") or {}
    labels = [str(id2label[k]) for k in sorted(id2label, key=int)]
    if not labels or all(_DEFAULT_LABEL.match(x) for x in labels):
        return None
    return labels


def load(cfg: TrainRunConfig, model_dir: Path | None, labels: list[str]) -> LoadedModel:
    """Tokenizer and fp32 model (master weights), with LoRA adapters when the run asks for them."""
    task = cfg.model.task
    torch.manual_seed(cfg.training.seed)  # a freshly initialised head or model is the same on every rank
    loaded = _sparse_from_scratch(cfg, labels) if model_dir is None else _pretrained(cfg, model_dir, labels)
    if loaded.max_positions is not None and cfg.dataset.max_length > loaded.max_positions:
        raise BadConfigError(
            f"dataset.maxLength {cfg.dataset.max_length} exceeds the {loaded.max_positions} positions "
            f"{loaded.description} supports"
        )
    if cfg.training.lora is not None:
        _apply_lora(cfg, loaded, task)
    return loaded


def _tokenizer(directory: Path) -> PreTrainedTokenizerBase:
    try:
        tok = AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as err:
        raise BadArtifactError(f"cannot load a tokenizer from {directory}: {err}") from None
    if tok.pad_token is None:
        # Causal LMs often ship without a pad token; padding positions are masked out, so EOS serves.
        tok.pad_token = tok.eos_token
    return tok


def _sparse_from_scratch(cfg: TrainRunConfig, labels: list[str]) -> LoadedModel:
    assert cfg.model.builtin is not None
    arch = cfg.model.builtin.architecture or _default_architecture()
    if arch.hidden_size % arch.heads:
        raise BadConfigError(
            f"model.builtin.architecture.hiddenSize {arch.hidden_size} must be a multiple of heads {arch.heads}"
        )
    sparsity = cfg.training.sparsity
    active = sparsity.active_fraction if sparsity is not None else 0.2
    coef = sparsity.load_balance_weight if sparsity is not None else 0.01
    tok = _tokenizer(builtin_models.minilm_path())
    causal = cfg.model.task == "causal-lm"
    extra: dict[str, Any] = {}
    if not causal:
        extra = {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": _label2id(labels)}
    config = SparseGatedConfig(
        vocab_size=len(tok),
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        num_local_experts=arch.experts,
        num_experts_per_tok=experts_for_fraction(arch.experts, active),
        expert_size=arch.expert_size,
        max_position_embeddings=arch.max_positions,
        router_aux_loss_coef=coef,
        is_causal=causal,
        pad_token_id=tok.pad_token_id,
        **extra,
    )
    model: nn.Module = SparseGatedForCausalLM(config) if causal else SparseGatedForSequenceClassification(config)
    desc = (
        f"{SPARSE_BUILTIN} ({arch.layers} layers, {arch.hidden_size} wide, {arch.experts} experts of "
        f"{arch.expert_size}, {config.num_experts_per_tok} active per token)"
    )
    return LoadedModel(model, tok, desc, SPARSE_MODEL_TYPE, False, config, arch.max_positions)


def _default_architecture() -> Any:
    from deepseek_workers.runconfig import SparseArchitecture

    return SparseArchitecture()


def _label2id(labels: list[str]) -> dict[str, int]:
    return {label: i for i, label in enumerate(labels)}


def _pretrained(cfg: TrainRunConfig, directory: Path, labels: list[str]) -> LoadedModel:
    tok = _tokenizer(directory)
    try:
        config = AutoConfig.from_pretrained(str(directory))
    except (OSError, ValueError) as err:
        raise BadArtifactError(f"{directory}/config.json is not a usable model config: {err}") from None
    model_type = str(getattr(config, "model_type", "?"))
    sparse = config if isinstance(config, SparseGatedConfig) else None
    if cfg.training.sparsity is not None and sparse is None:
        raise BadConfigError(
            "training.sparsity applies to the dynamic-sparse model only (model.builtin.name: "
            f"{SPARSE_BUILTIN}, or a directory holding one); the {model_type} model in {directory} is dense"
        )
    if sparse is not None and cfg.training.sparsity is not None:
        sparse.num_experts_per_tok = experts_for_fraction(
            sparse.num_local_experts, cfg.training.sparsity.active_fraction
        )
        sparse.router_aux_loss_coef = cfg.training.sparsity.load_balance_weight
    desc = f"{model_type} model from {directory}"
    try:
        if cfg.model.task == "text-classification":
            config.num_labels = len(labels)
            config.id2label = dict(enumerate(labels))
            config.label2id = _label2id(labels)
            if getattr(config, "pad_token_id", None) is None:
                config.pad_token_id = tok.pad_token_id
            model = AutoModelForSequenceClassification.from_pretrained(
                str(directory), config=config, dtype=torch.float32
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(str(directory), config=config, dtype=torch.float32)
    except ValueError as err:
        if "Unrecognized configuration class" in str(err):
            raise BadConfigError(f"model.task {cfg.model.task} is not supported by {desc}") from None
        raise BadArtifactError(f"cannot load {desc}: {err}") from None
    except OSError as err:
        raise BadArtifactError(f"cannot load {desc}: {err}") from None
    positions = getattr(config, "max_position_embeddings", None)
    return LoadedModel(model, tok, desc, model_type, False, sparse, int(positions) if positions else None)


def _apply_lora(cfg: TrainRunConfig, loaded: LoadedModel, task: str) -> None:
    from peft import LoraConfig, TaskType, get_peft_model

    spec = cfg.training.lora
    assert spec is not None
    targets = spec.target_modules or LORA_DEFAULT_TARGETS.get(loaded.model_type)
    # peft trains the classification head (classifier/score) in full; BERT-style models put a pooler between
    # the encoder and that head, and a frozen pooler caps what LoRA can reach (R8, 40 steps: 0.71 accuracy
    # frozen, 0.95 trained), so it counts as part of the head (+0.65% of MiniLM's parameters).
    head_extra = None
    if task == "text-classification" and any(n.rsplit(".", 1)[-1] == "pooler" for n, _ in loaded.model.named_modules()):
        head_extra = ["classifier", "score", "pooler"]
    lora_config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,
        modules_to_save=head_extra,
        task_type=TaskType.SEQ_CLS if task == "text-classification" else TaskType.CAUSAL_LM,
    )
    try:
        loaded.model = get_peft_model(loaded.model, lora_config)
    except ValueError as err:
        raise BadConfigError(f"training.lora.targetModules: {err}") from None
    loaded.lora = True


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, counting tied tensors once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total
