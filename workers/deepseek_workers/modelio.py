"""Load any variant of a model artifact (fp32, int8, onnx-fp32, onnx-int8) for inference: the server's entry point.

::

    from deepseek_workers.modelio import load_model

    m = load_model("s3://models/team-a/r8/v3", "int8")   # or a local path; variant "auto" = servedVariant
    m.variant, m.runtime, m.task, m.labels, m.tokenizer, m.config
    logits = m.logits(input_ids, attention_mask)           # numpy int64 [batch, length] -> float32 logits
    m.model      # the torch module (fp32 / int8 variants; generate() works for causal LMs)
    m.session    # the onnxruntime.InferenceSession (onnx variants)

The artifact is verified first (every file's size and sha256; s3:// is downloaded into the model cache) and
anything wrong raises BadArtifactError (exit code 66). A plain Hugging Face folder (config.json, no manifest)
loads too, as fp32 only. When ``int8`` (or ``onnx-int8``) is asked for but the artifact has none because INT8
went over its accuracy budget, the float variant is loaded instead and ``fallback_reason`` says why; pass
``allow_fallback=False`` to get an error instead.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from deepseek_workers.artifact import MANIFEST, Artifact, open_artifact
from deepseek_workers.errors import BadArtifactError

log = logging.getLogger(__name__)

VARIANTS: Final = ("fp32", "int8", "onnx-fp32", "onnx-int8")
FALLBACKS: Final = {"int8": "fp32", "onnx-int8": "onnx-fp32"}


@dataclass
class LoadedModel:
    variant: str  # the variant actually loaded
    requested: str  # what the caller asked for
    task: str  # text-classification | causal-lm
    runtime: str  # torch | fbgemm | torchao | onnxruntime
    directory: Path  # the variant's directory (config + tokenizer live here)
    tokenizer: Any
    config: Any
    labels: list[str]
    model: Any = None  # torch.nn.Module for torch variants
    session: Any = None  # onnxruntime.InferenceSession for ONNX variants
    device: str = "cpu"
    artifact: Artifact | None = None
    fallback_reason: str | None = None
    load_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Model logits for a padded batch (numpy in, numpy float32 out) whatever the variant."""
        from deepseek_workers.quantization.evaluate import onnx_logits_fn, torch_logits_fn

        if self.session is not None:
            return onnx_logits_fn(self.session)(input_ids, attention_mask)
        return torch_logits_fn(self.model, self.device)(input_ids, attention_mask)


def _labels(config: Any) -> list[str]:
    id2label = getattr(config, "id2label", None) or {}
    return [str(id2label[i]) for i in sorted(id2label)]


def _task_from_config(config: Any) -> str:
    archs = getattr(config, "architectures", None) or []
    if any(str(a).endswith("ForCausalLM") for a in archs):
        return "causal-lm"
    if any(str(a).endswith("ForSequenceClassification") for a in archs):
        return "text-classification"
    raise BadArtifactError(
        f"cannot tell the task from architectures {archs}: expected a *ForSequenceClassification or *ForCausalLM"
    )


def _auto_class(task: str) -> Any:
    from deepseek_workers.quantization.int8 import _auto_class as auto

    return auto(task)


def resolve_variant(artifact: Artifact, requested: str, *, allow_fallback: bool = True) -> tuple[str, str | None]:
    """(variant to load, reason when it is not the requested one)."""
    manifest = artifact.manifest
    if requested == "auto":
        return manifest.served_variant, None
    if requested not in VARIANTS:
        raise BadArtifactError(f"unknown variant {requested!r}; valid: auto, {', '.join(VARIANTS)}")
    if requested in manifest.variants:
        return requested, None
    fallback = FALLBACKS.get(requested)
    if allow_fallback and manifest.over_budget and fallback in manifest.variants:
        reason = (
            f"artifact {artifact.uri} has no {requested} variant: INT8 lost more accuracy than the budget "
            f"allowed (QuantizationOverBudget), so {fallback} is served instead"
        )
        return fallback, reason
    raise BadArtifactError(
        f"artifact {artifact.uri} has no variant {requested!r}; it has: {', '.join(sorted(manifest.variants))}"
    )


def load_model(
    source: str | Path,
    variant: str = "auto",
    *,
    device: str = "cpu",
    runtime: str | None = None,
    onnx_threads: int = 0,
    allow_fallback: bool = True,
    cache_dir: Path | None = None,
) -> LoadedModel:
    """Verify and load ``variant`` of the artifact (or plain HF folder) at ``source``; see the module doc."""
    t0 = time.perf_counter()
    uri = str(source)
    local = Path(uri[len("file://") :] if uri.startswith("file://") else uri)
    artifact: Artifact | None = None
    reason: str | None = None
    if "://" not in uri or uri.startswith("file://"):
        if not local.exists():
            raise BadArtifactError(f"model {uri} does not exist")
        if not (local / MANIFEST).is_file() and (local / "config.json").is_file():
            if variant not in ("auto", "fp32"):
                raise BadArtifactError(
                    f"{uri} is a plain model folder (fp32 only); variant {variant!r} needs an artifact"
                )
            loaded = _load_torch_fp32(local, device)
            loaded.requested = variant
            loaded.load_seconds = time.perf_counter() - t0
            return loaded
    artifact = open_artifact(uri, cache_dir=cache_dir)
    chosen, reason = resolve_variant(artifact, variant, allow_fallback=allow_fallback)
    if reason:
        log.warning("%s", reason)
    entry = artifact.variant(chosen)
    path = artifact.root / entry.path
    try:
        if chosen == "fp32":
            loaded = _load_torch_fp32(path, device)
        elif chosen == "int8":
            loaded = _load_int8(path, device, runtime)
        else:
            loaded = _load_onnx(path, device, onnx_threads)
    except BadArtifactError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise BadArtifactError(f"artifact {uri}: cannot load variant {chosen}: {type(err).__name__}: {err}") from None
    loaded.variant = chosen
    loaded.requested = variant
    loaded.artifact = artifact
    loaded.fallback_reason = reason
    loaded.info = dict(entry.info)
    loaded.load_seconds = time.perf_counter() - t0
    return loaded


def _tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    from deepseek_workers.quantization.int8 import register_architectures

    register_architectures()
    return AutoTokenizer.from_pretrained(directory)


def _config(directory: Path) -> Any:
    """config.json of a model folder, with our own architectures (the dynamic-sparse model) registered first."""
    from transformers import AutoConfig

    from deepseek_workers.quantization.int8 import register_architectures

    register_architectures()
    try:
        return AutoConfig.from_pretrained(directory)
    except (OSError, ValueError, KeyError) as err:
        raise BadArtifactError(f"{directory}: cannot read config.json: {type(err).__name__}: {err}") from None


def _load_torch_fp32(directory: Path, device: str) -> LoadedModel:
    import torch

    config = _config(directory)
    task = _task_from_config(config)
    model = _auto_class(task).from_pretrained(directory, dtype=torch.float32).eval().to(device)
    return LoadedModel(
        variant="fp32",
        requested="fp32",
        task=task,
        runtime="torch",
        directory=directory,
        tokenizer=_tokenizer(directory),
        config=config,
        labels=_labels(config) if task == "text-classification" else [],
        model=model,
        device=device,
    )


def _load_int8(directory: Path, device: str, runtime: str | None) -> LoadedModel:
    from deepseek_workers.quantization.int8 import default_runtime, load_int8, read_meta

    meta = read_meta(directory)
    if runtime is not None and runtime not in ("fbgemm", "torchao"):
        raise BadArtifactError(f"unknown INT8 runtime {runtime!r}; valid: fbgemm, torchao")
    # No runtime given: load_int8 prefers the one the quantize step measured (recorded in quantization.json).
    model = load_int8(directory, runtime=runtime, device=device)  # type: ignore[arg-type]
    chosen = str(getattr(model, "int8_runtime", runtime or default_runtime(meta["method"], device)))
    config = _config(directory)
    return LoadedModel(
        variant="int8",
        requested="int8",
        task=meta["task"],
        runtime=chosen,
        directory=directory,
        tokenizer=_tokenizer(directory),
        config=config,
        labels=_labels(config) if meta["task"] == "text-classification" else [],
        model=model,
        device=device,
    )


def _load_onnx(path: Path, device: str, threads: int) -> LoadedModel:
    from deepseek_workers.quantization.onnx_export import session

    directory = path.parent
    config = _config(directory)
    task = _task_from_config(config)
    if task != "text-classification":
        raise BadArtifactError(f"{path}: ONNX variants are exported for text classification only")
    sess = session(path, threads=threads, device=device)
    runtime_device = "cuda" if "CUDAExecutionProvider" in sess.get_providers() else "cpu"
    return LoadedModel(
        variant="onnx",
        requested="onnx",
        task=task,
        runtime="onnxruntime",
        directory=directory,
        tokenizer=_tokenizer(directory),
        config=config,
        labels=_labels(config),
        session=sess,
        device=runtime_device,
    )


Runtime = Literal["torch", "fbgemm", "torchao", "onnxruntime"]
