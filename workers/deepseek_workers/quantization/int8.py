"""INT8 models: quantize the Linear weights once, store them runtime-neutrally, run them with the fastest kernel.

Stored format (``int8/`` of an artifact, self-contained; see docs/quantization.md):

- ``model.safetensors``: the whole state dict, where each quantized Linear ``<m>`` has ``<m>.weight`` as int8
  ``[out, in]`` and ``<m>.weight_scale`` as float32 ``[out]`` (symmetric, per output channel: w = q * scale);
  every other tensor is stored as it was. Tied tensors are stored once (safetensors forbids aliases).
- ``quantization.json``: format, method, task, the quantized modules, those kept in float, tied aliases.
- ``config.json`` and the tokenizer files, so that the directory loads on its own (e.g. on an edge device).

Plain int8 data plus scales (no pickles, no library-private tensor subclasses) means the file is verifiable
by hash, loadable without code execution, and independent of the runtime that executes it:

- ``fbgemm``: torch's dynamic-quantized Linear (x86 FBGEMM/oneDNN VNNI kernels); int8-dynamic on CPU. Measured
  the fastest on the pinned torch in eager mode (docs/quantization.md), but deprecated upstream, so it is used
  only when it still exists.
- ``torchao``: torchao's Int8Tensor weights (dynamic per-token activations, or weight-only); any device.

The weights are quantized by torchao (``Int8Tensor.from_hp``, symmetric per-row), and both runtimes are fed
the same int8 values and scales, so the stored model is exactly what either runtime computes with.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import torch
from torch import nn

from deepseek_workers.errors import BadArtifactError

log = logging.getLogger(__name__)

INT8_FORMAT: Final = "deepseek.ai/int8-v1"
WEIGHTS_FILE: Final = "model.safetensors"
META_FILE: Final = "quantization.json"

Method = Literal["int8-dynamic", "int8-weight-only"]
Runtime = Literal["fbgemm", "torchao"]
METHODS: Final = ("int8-dynamic", "int8-weight-only")

# Modules kept in float by name (last path component): classification/LM heads (small, sensitive, or tied to
# the embeddings) and mixture-of-experts routers, whose top-k decisions INT8 noise would flip.
DEFAULT_KEEP_FLOAT: Final = ("classifier", "score", "lm_head", "router", "gate")
MIN_FEATURES: Final = 16  # smaller Linears gain nothing from INT8


@contextmanager
def _quiet_deprecations() -> Iterator[None]:
    # torch marks its quantized-tensor API deprecated; we use it knowingly, behind a runtime check.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, message=r".*quantiz.*deprecated.*")
        yield


def fbgemm_available() -> bool:
    """Whether this torch still ships the dynamic-quantized Linear with an x86 engine."""
    try:
        with _quiet_deprecations():
            import torch.ao.nn.quantized.dynamic
    except ImportError:
        return False
    return any(e in torch.backends.quantized.supported_engines for e in ("x86", "fbgemm"))


def default_runtime(method: str, device: str) -> Runtime:
    """The runtime that measured fastest for this method and device (docs/quantization.md)."""
    if method == "int8-dynamic" and device == "cpu" and fbgemm_available():
        return "fbgemm"
    return "torchao"


def runtime_candidates(method: str, task: str, device: str = "cpu") -> list[Runtime]:
    """Runtimes the quantize step evaluates, in order; the first within the accuracy budget is published.

    One runtime per case today. fbgemm quantizes activations per tensor (7-bit range): fine for BERT-style
    classifiers (0.0 points lost on R8), but it wrecks small causal LMs (SmolLM2-135M: next-token accuracy
    0.31 -> 0.18), where torchao's per-token activations hold up, so causal LMs use torchao. No fallback from
    fbgemm to torchao for classifiers: on CPU torchao's eager INT8 measured 0.45x (2 threads) to 1.17x (1 thread)
    the speed of fp32, so the fallback would publish an INT8 model about as slow as fp32 or slower; over budget,
    fp32 is served instead.
    """
    first = default_runtime(method, device)
    if first == "fbgemm" and task != "text-classification":
        return ["torchao"]
    return [first]


def _usable(runtime: object, method: str, device: str) -> bool:
    if runtime == "torchao":
        return True
    return runtime == "fbgemm" and method == "int8-dynamic" and device == "cpu" and fbgemm_available()


def record_runtime(directory: Path, runtime: Runtime) -> None:
    """Note in quantization.json which runtime the published numbers were measured with (loaders prefer it)."""
    meta = read_meta(directory)
    meta["runtime"] = runtime
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------
# Choosing and quantizing


def _tied_parameter_names(model: nn.Module) -> set[str]:
    """Names of parameters that share storage with another parameter (e.g. lm_head tied to the embeddings)."""
    by_ptr: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_ptr.setdefault(p.data_ptr(), []).append(name)
    return {n for names in by_ptr.values() if len(names) > 1 for n in names}


def select_linears(model: nn.Module, keep_float: Iterable[str] = DEFAULT_KEEP_FLOAT) -> tuple[list[str], list[str]]:
    """(modules to quantize, Linear modules kept in float) by the rules above."""
    keep = set(keep_float)
    tied = _tied_parameter_names(model)
    chosen, kept = [], []
    for name, module in model.named_modules():
        if type(module) is not nn.Linear:
            continue
        last = name.rsplit(".", 1)[-1]
        if (
            last in keep
            or f"{name}.weight" in tied
            or min(module.in_features, module.out_features) < MIN_FEATURES
            or module.weight.dtype not in (torch.float32, torch.bfloat16, torch.float16)
        ):
            kept.append(name)
        else:
            chosen.append(name)
    return chosen, kept


@dataclass
class Int8Weights:
    """A model's state with its chosen Linear weights as int8 + per-channel scales (ready to save)."""

    tensors: dict[str, torch.Tensor]
    modules: list[str]
    kept_float: list[str]
    tied: dict[str, str] = field(default_factory=dict)  # dropped alias -> stored name


def quantize_weights(model: nn.Module, keep_float: Iterable[str] = DEFAULT_KEEP_FLOAT) -> Int8Weights:
    """Quantize the selected Linear weights (symmetric int8 per output channel, by torchao)."""
    from torchao.quantization.granularity import PerRow
    from torchao.quantization.quantize_.workflows.int8.int8_tensor import Int8Tensor

    chosen, kept = select_linears(model, keep_float)
    if not chosen:
        raise BadArtifactError(
            f"{type(model).__name__} has no Linear layer that INT8 quantization applies to "
            f"(Linear layers kept in float: {', '.join(kept) or 'none'})"
        )
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[int, str] = {}
    for name, t in model.state_dict(keep_vars=False).items():
        ptr = t.data_ptr()
        if ptr in seen and t.numel() > 0:
            tied[name] = seen[ptr]
            continue
        seen[ptr] = name
        tensors[name] = t.detach().contiguous().clone()
    for name in chosen:
        weight = tensors[f"{name}.weight"].float()
        qt = Int8Tensor.from_hp(weight, PerRow())
        tensors[f"{name}.weight"] = qt.qdata.contiguous()
        tensors[f"{name}.weight_scale"] = qt.scale.reshape(-1).float().contiguous()
    return Int8Weights(tensors=tensors, modules=chosen, kept_float=kept, tied=tied)


def save_int8(
    model: nn.Module,
    directory: Path,
    *,
    method: Method,
    task: str,
    keep_float: Iterable[str] = DEFAULT_KEEP_FLOAT,
) -> dict[str, Any]:
    """Quantize ``model`` and write the int8 format into ``directory`` (config.json included); returns the meta.

    The caller copies the tokenizer files next to it.
    """
    from safetensors.torch import save_file

    if method not in METHODS:
        raise ValueError(f"unknown INT8 method {method!r}; valid: {', '.join(METHODS)}")
    weights = quantize_weights(model, keep_float)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(weights.tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "int8": INT8_FORMAT})
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "save_pretrained"):
        raise BadArtifactError(f"{type(model).__name__} has no Hugging Face config to save with its INT8 weights")
    config.save_pretrained(directory)
    meta: dict[str, Any] = {
        "format": INT8_FORMAT,
        "method": method,
        "task": task,
        "weights": "int8 symmetric per output channel (w = q * scale), quantized by torchao Int8Tensor.from_hp",
        "activations": "int8 dynamic (per token or per batch, by runtime)" if method == "int8-dynamic" else "float",
        "modules": weights.modules,
        "keptFloat": weights.kept_float,
        "tied": weights.tied,
    }
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


# ---------------------------------------------------------------------------------------------------------
# Loading and running


def read_meta(directory: Path) -> dict[str, Any]:
    path = directory / META_FILE
    try:
        meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadArtifactError(f"{directory} is not an INT8 model directory: {META_FILE} is missing") from None
    except (OSError, ValueError) as err:
        raise BadArtifactError(f"{path} is unreadable: {err}") from None
    if meta.get("format") != INT8_FORMAT:
        raise BadArtifactError(f"{path}: format {meta.get('format')!r} is not {INT8_FORMAT!r}")
    if meta.get("method") not in METHODS:
        raise BadArtifactError(f"{path}: method {meta.get('method')!r} is not one of {', '.join(METHODS)}")
    if not isinstance(meta.get("modules"), list) or not isinstance(meta.get("tied", {}), dict):
        raise BadArtifactError(f"{path}: 'modules' must be a list and 'tied' a mapping")
    return meta


def register_architectures() -> None:
    """Import the project's own architectures (the dynamic-sparse model) so the Auto classes know them."""
    if importlib.util.find_spec("deepseek_workers.models") is not None:
        importlib.import_module("deepseek_workers.models")


def _auto_class(task: str) -> Any:
    register_architectures()
    if task == "causal-lm":
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM
    if task == "text-classification":
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification
    raise BadArtifactError(f"unknown task {task!r}; valid: text-classification, causal-lm")


def _split(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def _install_fbgemm(model: nn.Module, name: str, q: torch.Tensor, scale: torch.Tensor) -> None:
    with _quiet_deprecations():
        from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

        parent, attr = _split(model, name)
        old = getattr(parent, attr)
        new = DynamicQuantizedLinear(  # type: ignore[no-untyped-call]
            old.in_features, old.out_features, bias_=old.bias is not None, dtype=torch.qint8
        )
        zero = torch.zeros(q.shape[0], dtype=torch.long)
        # Re-quantizing q*scale with the same scale reproduces q exactly (tested).
        qweight = torch.quantize_per_channel(q.float() * scale[:, None], scale.double(), zero, 0, torch.qint8)
        new.set_weight_bias(qweight, None if old.bias is None else old.bias.detach().float())
    setattr(parent, attr, new)


def _install_torchao(model: nn.Module, name: str, q: torch.Tensor, scale: torch.Tensor, method: str) -> None:
    from torchao.quantization.granularity import PerRow
    from torchao.quantization.quant_primitives import MappingType
    from torchao.quantization.quantize_.workflows.int8.int8_tensor import Int8Tensor, QuantizeTensorToInt8Kwargs

    module = model.get_submodule(name)
    assert isinstance(module, nn.Linear)
    act = (
        QuantizeTensorToInt8Kwargs(granularity=PerRow(), mapping_type=MappingType.SYMMETRIC)
        if method == "int8-dynamic"
        else None
    )
    dtype = module.weight.dtype
    s = scale.to(dtype=torch.float32, device=module.weight.device)[:, None]
    hp = q.to(module.weight.device).float() * s
    # Passing the stored scale makes from_hp reproduce the stored int8 values exactly.
    weight = Int8Tensor.from_hp(hp.to(dtype), PerRow(), scale=s, act_quant_kwargs=act)
    module.weight = nn.Parameter(weight, requires_grad=False)


def load_int8(directory: Path, *, runtime: Runtime | None = None, device: str = "cpu") -> nn.Module:
    """Build the model from ``directory`` (config + INT8 weights) for ``runtime``.

    Default: the runtime the quantize step measured (``runtime`` in quantization.json) when it can run on
    ``device``, else the fastest for the method and device.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_meta(directory)
    method: str = meta["method"]
    if runtime is None:
        recorded = meta.get("runtime")
        runtime = recorded if _usable(recorded, method, device) else default_runtime(method, device)
    if runtime == "fbgemm" and (method != "int8-dynamic" or device != "cpu" or not fbgemm_available()):
        raise BadArtifactError(f"runtime fbgemm runs int8-dynamic on CPU only (here: {method} on {device})")
    from transformers import AutoConfig

    register_architectures()
    try:
        config = AutoConfig.from_pretrained(directory)
        tensors = load_file(str(directory / WEIGHTS_FILE))
    except (OSError, ValueError, SafetensorError) as err:
        raise BadArtifactError(f"{directory}: cannot read the INT8 model: {err}") from None
    model: nn.Module = _auto_class(meta["task"]).from_config(config)
    modules: list[str] = meta["modules"]
    quantized: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    try:
        for name in modules:
            q, scale = tensors.pop(f"{name}.weight"), tensors.pop(f"{name}.weight_scale")
            if q.dtype != torch.int8 or scale.shape != (q.shape[0],):
                raise BadArtifactError(f"{directory}: {name} is not int8 with one scale per output channel")
            quantized[name] = (q, scale)
    except KeyError as err:
        raise BadArtifactError(f"{directory}: {WEIGHTS_FILE} lacks {err.args[0]}") from None
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    allowed = {f"{m}.weight" for m in modules} | set(meta.get("tied", {}))
    if unexpected or set(missing) - allowed:
        raise BadArtifactError(
            f"{directory}: weights do not match the model config (missing {sorted(set(missing) - allowed)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]})"
        )
    model.eval().to(device)
    for name, (q, scale) in quantized.items():
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear) or tuple(module.weight.shape) != tuple(q.shape):
            raise BadArtifactError(f"{directory}: {name} is not a Linear of shape {tuple(q.shape)} in this model")
        if runtime == "fbgemm":
            _install_fbgemm(model, name, q, scale)
        else:
            _install_torchao(model, name, q, scale, method)
    model.requires_grad_(False)
    model.int8_runtime = runtime  # type: ignore[assignment]  # for logs and metrics
    return model


def quantize_in_memory(
    model: nn.Module, *, method: Method, runtime: Runtime | None = None, keep_float: Iterable[str] = DEFAULT_KEEP_FLOAT
) -> nn.Module:
    """Quantize a float model in place (same rules and numerics as save_int8 + load_int8), for benchmarks."""
    device = next(model.parameters()).device.type
    runtime = runtime or default_runtime(method, device)
    weights = quantize_weights(model, keep_float)
    for name in weights.modules:
        q, scale = weights.tensors[f"{name}.weight"], weights.tensors[f"{name}.weight_scale"]
        if runtime == "fbgemm":
            _install_fbgemm(model, name, q, scale)
        else:
            _install_torchao(model, name, q, scale, method)
    model.requires_grad_(False)
    return model
