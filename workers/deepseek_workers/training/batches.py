"""Tokenisation and batching: each example is tokenised once, batches are padded to their longest row.

Classification rows keep their own sequence (truncated to maxLength). Causal-LM text is tokenised without
special tokens, joined with the end-of-sequence token and cut into blocks of maxLength tokens, the standard way
to train a language model on documents of any length; the last short block is padded and its padding masked
out of the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from deepseek_workers.builtin_data import TextExample
from deepseek_workers.errors import BadDataError

IGNORE_INDEX = -100  # label of positions without a next-token target (padding)


@dataclass(frozen=True)
class Encoded:
    """Token ids per example; `labels` holds class ids (classification) or is None (causal LM)."""

    input_ids: list[list[int]]
    labels: list[int] | None
    pad_id: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def causal(self) -> bool:
        return self.labels is None


def encode_classification(
    tok: PreTrainedTokenizerBase, rows: list[TextExample], labels: list[str], max_length: int
) -> Encoded:
    ids = tok([r.text for r in rows], truncation=True, max_length=max_length)["input_ids"]
    label_id = {label: i for i, label in enumerate(labels)}
    return Encoded(input_ids=list(ids), labels=[label_id[r.label] for r in rows], pad_id=_pad_id(tok))


def encode_causal(tok: PreTrainedTokenizerBase, rows: list[TextExample], max_length: int, what: str) -> Encoded:
    eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    stream: list[int] = []
    for ids in tok([r.text for r in rows], add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        if eos is not None:
            stream.append(eos)
    blocks = [stream[i : i + max_length] for i in range(0, len(stream), max_length)]
    blocks = [b for b in blocks if len(b) >= 2]  # a block needs a next token to predict
    if not blocks:
        raise BadDataError(f"{what}: too little text to form one training sequence ({len(stream)} tokens)")
    return Encoded(input_ids=blocks, labels=None, pad_id=_pad_id(tok))


def _pad_id(tok: PreTrainedTokenizerBase) -> int:
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return int(pad) if pad is not None else 0


def collate(data: Encoded, indices: list[int], device: torch.device) -> dict[str, torch.Tensor]:
    """A padded batch: input_ids, attention_mask and labels (class ids, or token ids with padding = -100)."""
    seqs = [data.input_ids[i] for i in indices]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), data.pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    if data.labels is None:
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    else:
        labels = torch.tensor([data.labels[i] for i in indices], dtype=torch.long)
    non_blocking = device.type == "cuda"
    return {
        "input_ids": ids.to(device, non_blocking=non_blocking),
        "attention_mask": mask.to(device, non_blocking=non_blocking),
        "labels": labels.to(device, non_blocking=non_blocking),
    }
