"""Publishing the trained fp32 model as an artifact (format and guarantees: docs/artifact.md).

The train step writes `<outputUri>/trained/<version>` when a quantize step follows, else the published
`<outputUri>/<version>` directly, through `deepseek_workers.artifact.write_artifact` (atomic: local rename, or
every object before the manifest on S3):

```
fp32/          config.json, model.safetensors, tokenizer files (LoRA: the merged model)   variant "fp32"
adapter/       the LoRA adapter in peft format (when LoRA was used)                       variant "adapter"
metrics.json   {"fp32": {evaluation metrics}, "training": {everything else the run measured}}
manifest.json  written last; `extra` holds labels, maxLength, baseModel, precision, lora, fingerprint, steps
```
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from deepseek_workers.artifact import Manifest, read_manifest, write_artifact
from deepseek_workers.errors import BadArtifactError, BadConfigError
from deepseek_workers.runconfig import TrainRunConfig
from deepseek_workers.storage import AlreadyPublishedError, Storage, StorageError

# Evaluation results (what a quantize step compares INT8 against) go under "fp32"; the rest under "training".
EVAL_KEYS = ("accuracy", "macroF1", "evalLoss", "perplexity")


def destination(cfg: TrainRunConfig) -> str:
    """Where the train step publishes: `trained/<version>` when a quantize step follows, else `<version>`."""
    sub = f"trained/{cfg.artifact_version}" if cfg.quantization.enabled else cfg.artifact_version
    return f"{cfg.output_uri.rstrip('/')}/{sub}"


def published(cfg: TrainRunConfig, fingerprint: str) -> Manifest | None:
    """The manifest of this run's artifact if it is already published by the same configuration, else None.

    A version published by a *different* configuration is a conflict: versions are immutable.
    """
    dest = destination(cfg)
    try:
        if not Storage.from_uri(dest).is_file("manifest.json"):
            return None
        manifest = read_manifest(dest)
    except (StorageError, BadArtifactError):
        return None  # nothing usable there (an incomplete leftover is replaced when we publish)
    if manifest.extra.get("fingerprint") != fingerprint:
        raise BadConfigError(
            f"artifactVersion {cfg.artifact_version!r} is already published at {dest} by a different training "
            "configuration; versions are immutable, so use a new artifactVersion"
        )
    return manifest


def split_metrics(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    return {
        "fp32": {k: v for k, v in metrics.items() if k in EVAL_KEYS},
        "training": {k: v for k, v in metrics.items() if k not in EVAL_KEYS},
    }


def flat_metrics(document: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for section in ("training", "fp32"):
        out.update({k: float(v) for k, v in (document.get(section) or {}).items()})
    return out


def publish_trained(
    cfg: TrainRunConfig,
    *,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    lora: bool,
    metrics: dict[str, float],
    extra: dict[str, Any],
) -> str:
    """Write the artifact for `cfg` and return its URI. `model` is unwrapped (a peft model when `lora`)."""
    dest = destination(cfg)
    try:
        with write_artifact(
            dest, version=cfg.artifact_version, source=cfg.source, task=cfg.model.task, overwrite=False
        ) as art:
            if lora:
                model.save_pretrained(str(art.dir / "adapter"))  # type: ignore[operator]
                merged = model.merge_and_unload()  # type: ignore[operator]
                merged.save_pretrained(str(art.dir / "fp32"))
            else:
                model.save_pretrained(str(art.dir / "fp32"))  # type: ignore[operator]
            tokenizer.save_pretrained(str(art.dir / "fp32"))
            art.add_variant("fp32", "fp32", "hf-safetensors", info={"precision": "fp32", "merged": lora})
            if lora:
                art.add_variant("adapter", "adapter", "peft-adapter", info={"base": extra.get("baseModel", "")})
            art.served_variant = "fp32"
            art.metrics = split_metrics(metrics)
            art.extra = extra
    except AlreadyPublishedError as err:
        raise BadConfigError(f"{err}; versions are immutable, so use a new artifactVersion") from None
    return dest
