"""What the server runs: one small interface per task, whatever the model format underneath.

* :class:`TextClassifier` — ``encode`` (text -> token ids, on the event loop: fast, and the length is needed
  for validation and length grouping) and ``predict`` (a batch of token-id lists -> class probabilities, on
  the model thread). Torch (fp32 or INT8) and ONNX Runtime implementations.
* :class:`CausalLM` — ``encode``, ``chat_prompt`` and ``generate`` (a batch of prompts with their own limits
  and stop strings, streaming text deltas through per-request callbacks).

Loading goes through :func:`load_backend`, which resolves the run config's artifact and variant.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
from typing_extensions import TypeIs

from deepseek_workers.errors import BadArtifactError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@runtime_checkable
class TextClassifier(Protocol):
    task: Literal["text-classification"]
    labels: list[str]
    max_tokens: int
    device: str
    runtime: str  # what runs the forward pass: torch-eager, torchscript or onnxruntime

    def encode(self, text: str) -> list[int]: ...

    def predict(self, batch: Sequence[Sequence[int]]) -> np.ndarray: ...


@dataclass(eq=False)
class GenerationRequest:
    """One prompt of a generation batch. ``on_text`` receives text deltas (from the model thread)."""

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    on_text: Callable[[str], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def sampling_key(self) -> tuple[bool, float, float, int | None]:
        greedy = self.temperature == 0.0
        return (greedy, 0.0 if greedy else self.temperature, 1.0 if greedy else self.top_p, self.seed)


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]


@runtime_checkable
class CausalLM(Protocol):
    task: Literal["causal-lm"]
    max_tokens: int  # context window: prompt + completion
    device: str
    runtime: str

    def encode(self, text: str) -> list[int]: ...

    def chat_prompt(self, messages: list[dict[str, str]]) -> str: ...

    def generate(self, batch: Sequence[GenerationRequest]) -> list[GenerationResult]: ...


Backend = TextClassifier | CausalLM


def is_classifier(backend: Backend) -> TypeIs[TextClassifier]:
    """The backend's task, read from its attribute: a runtime Protocol ``isinstance`` inspects every member on
    each call, which is measurable on the per-request path."""
    return backend.task == "text-classification"


@dataclass
class LoadedModel:
    backend: Backend
    name: str
    version: str
    variant: str
    load_seconds: float


# ---------------------------------------------------------------------------------------------------------
# Torch and ONNX Runtime implementations


def _torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_quota(cgroup_root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs this container may use (cgroup v2 ``cpu.max``), or None when unlimited or unknown."""
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def threads_per_batch(concurrent_batches: int, cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """torch intra-op threads for each of ``concurrent_batches`` batches: the usable CPUs split between them."""
    cpus = os.cpu_count() or 1
    quota = cpu_quota(cgroup_root)
    usable = max(1, min(cpus, math.floor(quota) if quota else cpus))
    return max(1, usable // concurrent_batches)


def configure_threads(concurrent_batches: int = 1) -> int:
    """Size torch's intra-op pool to the CPUs the pod may use (unless OMP_NUM_THREADS says otherwise).

    torch defaults to every core of the node; under a 2-CPU limit on a 64-core node its spinning OpenMP
    threads are throttled and a forward pass gets many times slower. Batches that run at once share the CPUs.
    """
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        return int(torch.get_num_threads())
    threads = threads_per_batch(concurrent_batches)
    torch.set_num_threads(threads)
    return threads


def _raw_tokenizer(tokenizer: Any) -> Any:
    """The Rust tokenizer behind a fast HF tokenizer, without truncation or padding (we check lengths)."""
    backend = tokenizer.backend_tokenizer
    backend.no_truncation()
    backend.no_padding()
    return backend


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text``. The batch call without offsets: the ids are the same as ``encode``'s, without the
    character offsets nobody here reads (MiniLM's WordPiece, 65 tokens on one AVX2 core: 180 -> 100 µs, which
    is on the event loop for every request)."""
    return tokenizer.encode_batch_fast([text])[0].ids  # type: ignore[no-any-return]


def _max_tokens(config: Any, tokenizer: Any) -> int:
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    usable = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    return min(usable) if usable else 512


TORCHSCRIPT_ENV = "DEEPSEEK_SERVE_TORCHSCRIPT"  # "0": serve the eager model even where a trace would do


class TorchClassifier:
    task: Literal["text-classification"] = "text-classification"

    def __init__(self, model: torch.nn.Module, tokenizer: Any, labels: list[str], device: str) -> None:
        self.model = model
        self.labels = labels
        self.device = device
        self._tok = _raw_tokenizer(tokenizer)
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.max_tokens = _max_tokens(model.config, tokenizer)
        self.runtime = "torch-eager"
        self._forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = self._eager

    def encode(self, text: str) -> list[int]:
        return _token_ids(self._tok, text)

    def _eager(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask).logits  # type: ignore[no-any-return]

    def _probabilities(
        self, forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batch: Sequence[Sequence[int]]
    ) -> np.ndarray:
        import torch

        ids, mask = _pad(batch, self.pad_id)
        with torch.inference_mode():
            logits = forward(torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device))
            return logits.float().softmax(-1).cpu().numpy()

    def predict(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        return self._probabilities(self._forward, batch)

    def use_torchscript(self) -> str | None:
        """Serve a TorchScript trace of the model if it answers exactly as the eager model; else say why not.

        Why: a traced forward runs in C++ without taking the GIL for each operator, so the event loop's HTTP
        work no longer stalls the model thread (measured on MiniLM, one AVX2 core, sorted groups of 4 with
        3 ms of Python per request beside it: eager 32.5/s, traced 39.4/s) and a single forward loses its
        per-operator Python time (34 ms -> 29 ms). A trace records one path through the Python code, so
        models whose control flow depends on the data (the dynamic-sparse router) stay eager, and every trace
        is checked against the eager model on other shapes, with and without padding, before it is used.
        """
        import warnings

        import torch

        if os.environ.get(TORCHSCRIPT_ENV, "1") == "0":
            return f"{TORCHSCRIPT_ENV}=0"
        from deepseek_workers.models.sparse import MODEL_TYPE as SPARSE

        if getattr(self.model.config, "model_type", "") == SPARSE:
            return "the dynamic-sparse router's control flow depends on the data"
        vocab = int(getattr(self.model.config, "vocab_size", 1000))
        rng = np.random.default_rng(0)

        def sample(lengths: list[int]) -> list[list[int]]:
            return [rng.integers(min(1000, vocab // 2), vocab, size=n).tolist() for n in lengths]

        example = sample([16, 9])  # padding in the example: the masked path is the one recorded
        ids, mask = _pad(example, self.pad_id)
        try:
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings and the deprecation notice
                traced = torch.jit.trace(  # type: ignore[no-untyped-call]
                    self.model,
                    example_kwarg_inputs={
                        "input_ids": torch.from_numpy(ids).to(self.device),
                        "attention_mask": torch.from_numpy(mask).to(self.device),
                    },
                    strict=False,
                    check_trace=False,
                )

            def forward(i: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
                out = traced(input_ids=i, attention_mask=m)
                return out["logits"] if isinstance(out, dict) else out[0]  # type: ignore[no-any-return]

            tolerance = 1e-4 if next(self.model.parameters()).dtype == torch.float32 else 2e-2
            for lengths in ([7], [29, 12, 1], [min(64, self.max_tokens)] * 2 + [3, 40, 17]):
                batch = sample(lengths)
                diff = np.abs(self._probabilities(forward, batch) - self._probabilities(self._eager, batch)).max()
                if not diff <= tolerance:
                    return f"the trace differs from the eager model by {diff:.2g} on lengths {lengths}"
        except Exception as err:  # any failure to trace leaves the eager model serving
            return f"tracing failed: {type(err).__name__}: {str(err)[:200]}"
        self._forward, self.runtime = forward, "torchscript"
        return None


class OnnxClassifier:
    task: Literal["text-classification"] = "text-classification"

    def __init__(self, session: Any, tokenizer: Any, labels: list[str], max_tokens: int) -> None:
        self.session = session
        self.labels = labels
        self.device = "cuda" if "CUDAExecutionProvider" in session.get_providers() else "cpu"
        self.runtime = "onnxruntime"
        self._tok = _raw_tokenizer(tokenizer)
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.max_tokens = max_tokens
        self._inputs = {i.name for i in session.get_inputs()}

    def encode(self, text: str) -> list[int]:
        return _token_ids(self._tok, text)

    def predict(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        ids, mask = _pad(batch, self.pad_id)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        logits = self.session.run(None, {k: v for k, v in feed.items() if k in self._inputs})[0]
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)  # type: ignore[no-any-return]


def _pad(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(x) for x in batch)
    ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for i, x in enumerate(batch):
        ids[i, : len(x)] = x
        mask[i, : len(x)] = 1
    return ids, mask


class TorchCausalLM:
    task: Literal["causal-lm"] = "causal-lm"
    runtime = "torch-eager"

    def __init__(self, model: Any, tokenizer: Any, device: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self._tok = _raw_tokenizer(tokenizer)
        self.max_tokens = _max_tokens(model.config, tokenizer)
        eos = model.generation_config.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else next(iter(self.eos_ids), 0))

    def encode(self, text: str) -> list[int]:
        return _token_ids(self._tok, text)

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            # No template shipped: a plain transcript the model can continue.
            lines = [f"{m['role']}: {m['content']}" for m in messages]
            return "\n".join([*lines, "assistant:"])
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def generate(self, batch: Sequence[GenerationRequest]) -> list[GenerationResult]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        width = max(len(r.prompt_ids) for r in batch)
        # Left padding: every row's next token is predicted at the same position.
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids) :] = 1
        rows = [_RowDecoder(self.tokenizer, r, self.eos_ids) for r in batch]

        class _PerRowStop(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
                new = input_ids[:, width:]
                if new.shape[1] > 0:
                    for row, tok in zip(rows, new[:, -1].tolist(), strict=True):
                        row.push(tok)
                return torch.tensor([row.finished for row in rows], device=input_ids.device)

        key = batch[0].sampling_key
        greedy, temperature, top_p, seed = key
        generator_kwargs: dict[str, Any] = {}
        if seed is not None:
            torch.manual_seed(seed)
        if greedy:
            generator_kwargs.update(do_sample=False)
        else:
            generator_kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        with torch.inference_mode():
            self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                max_new_tokens=max(r.max_new_tokens for r in batch),
                stopping_criteria=StoppingCriteriaList([_PerRowStop()]),
                pad_token_id=self.pad_id,
                **generator_kwargs,
            )
        return [row.result() for row in rows]


class _RowDecoder:
    """Incremental detokenisation of one row: emits text deltas, applies stop strings and token limits."""

    def __init__(self, tokenizer: Any, request: GenerationRequest, eos_ids: set[int]) -> None:
        self.tok = tokenizer
        self.req = request
        self.eos_ids = eos_ids
        self.ids: list[int] = []
        self.emitted = ""
        self.finished = False
        self.reason: Literal["stop", "length"] = "length"

    def push(self, token: int) -> None:
        if self.finished:
            return
        if self.req.cancelled.is_set():
            self.finished, self.reason = True, "stop"
            return
        if token in self.eos_ids:
            self.finished, self.reason = True, "stop"
            self._emit(final=True)
            return
        self.ids.append(token)
        self._emit(final=False)
        if not self.finished and len(self.ids) >= self.req.max_new_tokens:
            self.finished, self.reason = True, "length"
            self._emit(final=True)

    def _emit(self, final: bool) -> None:
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        for s in self.req.stop:
            cut = text.find(s)
            if cut >= 0:
                text, self.finished, self.reason, final = text[:cut], True, "stop", True
        if not final:
            # Hold back a trailing partial character and anything that may be the start of a stop string.
            if text.endswith("\ufffd"):
                return
            hold = max((len(s) - 1 for s in self.req.stop), default=0)
            text = text[: len(text) - hold] if hold else text
        if len(text) > len(self.emitted) and text.startswith(self.emitted):
            delta, self.emitted = text[len(self.emitted) :], text
            if self.req.on_text is not None:
                self.req.on_text(delta)
        elif final and text != self.emitted and not text.startswith(self.emitted):
            self.emitted = text  # a stop string cut into already-emitted text cannot be unsent

    def result(self) -> GenerationResult:
        if not self.finished:
            self._emit(final=True)
        return GenerationResult(self.emitted, len(self.req.prompt_ids), len(self.ids), self.reason)


# ---------------------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class ModelSource:
    """What the run config points at, known before any weights are read (fast, so bad input fails at once)."""

    uri: str
    variant: str
    task: Literal["text-classification", "causal-lm"]
    version: str
    artifact: bool  # True: a published artifact (manifest verified on load); False: a plain HF folder


def _local_dir(uri: str) -> Path:
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    path = Path(uri)
    if not path.is_dir():
        raise BadArtifactError(f"artifactUri {uri!r} is not a directory")
    return path


def _task_of(model_dir: Path) -> Literal["text-classification", "causal-lm"]:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise BadArtifactError(f"{model_dir}: cannot read config.json ({err})") from None
    archs = config.get("architectures") or []
    if any(a.endswith("ForCausalLM") for a in archs):
        return "causal-lm"
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "text-classification"
    raise BadArtifactError(f"{model_dir}: architectures {archs} is neither a sequence classifier nor a causal LM")


def describe(uri: str, variant: str) -> ModelSource:
    """Check the run config's model reference: an artifact (by its manifest) or a plain HF folder (fp32 only)."""
    from deepseek_workers.artifact import read_manifest

    is_local = "://" not in uri or uri.startswith("file://")
    if is_local and not (_local_dir(uri) / "manifest.json").is_file():
        root = _local_dir(uri)
        if not (root / "config.json").is_file():
            raise BadArtifactError(f"{uri}: neither an artifact (manifest.json) nor a model folder (config.json)")
        if variant != "fp32":
            raise BadArtifactError(f"{uri} is a plain model folder (fp32 only); variant {variant!r} needs an artifact")
        return ModelSource(uri, variant, _task_of(root), root.name, artifact=False)
    manifest = read_manifest(uri)  # no hashing or download yet: that happens in load_backend
    if variant not in manifest.variants:
        have = ", ".join(sorted(manifest.variants))
        raise BadArtifactError(f"artifact {uri} has no variant {variant!r}; it has: {have}")
    if manifest.task not in ("text-classification", "causal-lm"):
        raise BadArtifactError(f"artifact {uri} has task {manifest.task!r}; expected text-classification or causal-lm")
    if manifest.over_budget and variant == "int8":
        log.warning(
            "artifact %s: INT8 lost more accuracy than allowed; its servedVariant is %s", uri, manifest.served_variant
        )
    task: Literal["text-classification", "causal-lm"] = (
        "causal-lm" if manifest.task == "causal-lm" else "text-classification"
    )
    return ModelSource(uri, variant, task, manifest.version, artifact=True)


def _labels(model_dir: Path, config: Any, extra: dict[str, Any] | None = None) -> list[str]:
    labels_file = model_dir / "labels.json"
    if labels_file.is_file():
        return [str(x) for x in json.loads(labels_file.read_text())]
    if extra and isinstance(extra.get("labels"), list):
        return [str(x) for x in extra["labels"]]
    id2label = getattr(config, "id2label", None) or {}
    return [str(id2label[i]) for i in sorted(id2label)]


def load_backend(uri: str, variant: str, concurrent_batches: int = 1) -> Backend:
    """Load, verify and wrap the model. Raises BadArtifactError (exit 66) with the reason when it cannot."""
    source = describe(uri, variant)
    try:
        if not source.artifact:
            log.info("torch intra-op threads per batch: %d", configure_threads(concurrent_batches))
            return _load_hf(_local_dir(uri), source.task, None)
        from deepseek_workers.artifact import open_artifact

        art = open_artifact(uri)  # sha256 of every file; s3:// is downloaded to the model cache first
        # After verification: fail fast first.
        log.info("torch intra-op threads per batch: %d", configure_threads(concurrent_batches))
        entry = art.variant(variant)
        path = art.variant_path(variant)
        # Config, tokenizer and labels live with the fp32 model; INT8 and ONNX variants reuse them.
        base = art.variant_path("fp32") if "fp32" in art.manifest.variants else path
        if entry.format == "hf-safetensors":
            return _load_hf(path, source.task, art.manifest.extra)
        if entry.format == "onnx":
            if source.task != "text-classification":
                raise BadArtifactError("ONNX variants serve text classification only")
            return _load_onnx(path, base, art.manifest.extra)
        if entry.format == "int8-safetensors":
            return _load_int8(path, base, source.task, art.manifest.extra)
        raise BadArtifactError(f"artifact {uri}: variant {variant!r} has format {entry.format!r}, not servable")
    except BadArtifactError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise BadArtifactError(f"{uri}: cannot load the model: {type(err).__name__}: {err}") from None


def _tokenizer(*dirs: Path) -> Any:
    from transformers import AutoTokenizer

    for d in dirs:
        if (d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(d)
            if not getattr(tokenizer, "is_fast", False):
                raise BadArtifactError(f"{d}: a fast tokenizer (tokenizer.json) is required")
            return tokenizer
    raise BadArtifactError(f"no tokenizer in {', '.join(str(d) for d in dirs)}")


def _load_hf(model_dir: Path, task: str, extra: dict[str, Any] | None) -> Backend:
    from transformers import AutoConfig

    tokenizer = _tokenizer(model_dir)
    device = _torch_device()
    if task == "causal-lm":
        from transformers import AutoModelForCausalLM

        lm: Any = AutoModelForCausalLM.from_pretrained(model_dir)
        lm = lm.to(device).eval()
        return TorchCausalLM(lm, tokenizer, device)
    from transformers import AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model_dir)
    model: Any = AutoModelForSequenceClassification.from_pretrained(model_dir)
    model = model.to(device).eval()
    return _classifier(model, tokenizer, _labels(model_dir, config, extra), device, model_dir)


def _classifier(model: Any, tokenizer: Any, labels: list[str], device: str, where: Path) -> TorchClassifier:
    if len(labels) != model.config.num_labels:
        raise BadArtifactError(f"{where}: {len(labels)} labels for a model with {model.config.num_labels} outputs")
    classifier = TorchClassifier(model, tokenizer, labels, device)
    why_not = classifier.use_torchscript()
    if why_not:
        log.info("serving the eager model (no TorchScript trace): %s", why_not)
    else:
        log.info("serving a TorchScript trace of the model (checked against the eager model on 3 batch shapes)")
    return classifier


def _load_onnx(onnx_file: Path, base: Path, extra: dict[str, Any] | None) -> Backend:
    import onnxruntime as ort
    from transformers import AutoConfig

    tokenizer = _tokenizer(onnx_file.parent, base)
    config = AutoConfig.from_pretrained(base)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(os.environ.get("DEEPSEEK_ONNX_THREADS", "0"))
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    try:
        session = ort.InferenceSession(str(onnx_file), opts, providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types for unreadable models
        raise BadArtifactError(f"{onnx_file}: cannot load the ONNX model: {err}") from None
    return OnnxClassifier(session, tokenizer, _labels(base, config, extra), _max_tokens(config, tokenizer))


def _load_int8(path: Path, base: Path, task: str, extra: dict[str, Any] | None) -> Backend:
    import importlib

    try:
        # The INT8 format and its loader belong to the quantization package (docs/quantization.md).
        int8 = importlib.import_module("deepseek_workers.quantization.int8")
    except ImportError:
        raise BadArtifactError("this worker build cannot load int8-safetensors variants") from None
    device = _torch_device()
    model: Any = int8.load_int8(path, device=device)
    model = model.eval()
    tokenizer = _tokenizer(path, base)
    if task == "causal-lm":
        return TorchCausalLM(model, tokenizer, device)
    return _classifier(model, tokenizer, _labels(base, model.config, extra), device, path)


WARM_UP_PASSES = 3
WARM_UP_AGREEMENT = 0.10  # a third pass for a shape only if its first two timings differ by more than this


def warm_up(backend: Backend, max_batch_size: int, concurrent_batches: int = 1) -> list[tuple[int, int, float]]:
    """Run the model on representative shapes (first-call costs paid before ready); returns timings.

    For classifiers the timings (batch size, length, seconds) are the batch planner's cost table: batch sizes
    1, 2, 4, ... up to the largest batch, lengths 16, 64 and 256 (up to the model's limit), leaving out shapes
    over 4,096 tokens (past that, cost grows in proportion to the tokens). With ``concurrent_batches`` > 1 each
    shape runs on that many threads at once, as batches do under load: calls running side by side share the
    memory bandwidth that streams the weights, which makes each call's fixed cost larger and bigger groups
    worth more than one call alone shows.

    Each shape's figure is its fastest of two or three timings taken in separate passes over all the shapes
    (a third only where the first two disagree). Why passes rather than repeats in place: on a shared machine
    a busy spell lasts longer than one shape's repeats and skews a whole row of the table, and the planner
    then picks group sizes for the noise. Measured on MiniLM (two batches at once, two shared AVX2 cores),
    five warm-ups each: repeats in place gave cells varying by 17 % (coefficient of variation) and tables
    that planned mean groups of 1.9 to 4.8 over the same pools of requests; three full passes gave cells
    varying by 7 %, and these passes gave tables planning 2.2 to 3.6. (What made small planned groups cost
    throughput in the server was mostly the per-call cost no warm-up sees: SERVER_CALL_OVERHEAD_S.) It takes
    longer (MiniLM with batches of up to 32: 12-15 s instead of 5-6 s), once, before the server is ready.
    """
    samples: list[tuple[int, int, float]] = []
    if isinstance(backend, TextClassifier):
        backend.predict([[1] * 8])  # first call: allocations, kernel selection
        sizes = [1 << k for k in range(7) if 1 << k < max_batch_size] + [max_batch_size]
        lengths = sorted({min(x, backend.max_tokens) for x in (16, 64, 256)})
        shapes = [(n, length) for length in lengths for n in sizes if n == 1 or n * length <= 4096]
        timings: dict[tuple[int, int], list[float]] = {shape: [] for shape in shapes}
        with ThreadPoolExecutor(concurrent_batches, thread_name_prefix="warm-up") as pool:
            for pass_no in range(WARM_UP_PASSES):
                for shape in shapes:
                    seen = timings[shape]
                    if pass_no >= 2 and max(seen) <= min(seen) * (1 + WARM_UP_AGREEMENT):
                        continue
                    n, length = shape
                    seen.append(_call_seconds(backend, [[1] * length] * n, pool, concurrent_batches))
        samples = [(n, length, min(timings[(n, length)])) for n, length in shapes]
    else:
        prompt = backend.encode("Hello")
        backend.generate([GenerationRequest(prompt_ids=prompt, max_new_tokens=2, temperature=0.0)])
    return samples


def _call_seconds(backend: TextClassifier, batch: list[list[int]], pool: ThreadPoolExecutor, at_once: int) -> float:
    """Seconds of one ``predict`` call, the mean over ``at_once`` identical calls started together."""
    start = threading.Barrier(at_once)

    def timed() -> float:
        start.wait()
        t0 = time.perf_counter()
        backend.predict(batch)
        return time.perf_counter() - t0

    futures = [pool.submit(timed) for _ in range(at_once)]
    return sum(f.result() for f in futures) / at_once
