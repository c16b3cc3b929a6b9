"""ONNX export of a text classifier (fp32) and its ONNX Runtime INT8 version, checked against torch.

Inputs are ``input_ids`` and ``attention_mask`` (int64, dynamic batch and sequence axes); the output is
``logits``. The fp32 graph comes from torch's dynamo-based exporter (the supported one), falling back to the
TorchScript-based exporter when a model cannot be exported that way; the INT8 graph is ONNX Runtime's
dynamic quantization of the fp32 graph (int8 weights per channel, activations quantized at run time).

Tolerances (checked on real evaluation examples, stated in docs/quantization.md):

- fp32 ONNX vs torch fp32: |logit difference| <= FP32_ATOL + FP32_RTOL * |logit|;
- INT8 ONNX vs torch fp32: max |logit difference| <= INT8_MAX_REL_DIFF of the fp32 logits' range (max - min)
  and the same top-1 class for at least INT8_MIN_AGREEMENT of the examples; its accuracy is then measured on
  the whole evaluation split and held to the accuracy budget like the torch INT8 model.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from deepseek_workers.quantization.evaluate import LogitsFn

log = logging.getLogger(__name__)

OPSET: Final = 18
FP32_ATOL: Final = 1e-4
FP32_RTOL: Final = 1e-3
INT8_MAX_REL_DIFF: Final = 0.15
INT8_MIN_AGREEMENT: Final = 0.95
FP32_FILE: Final = "model.onnx"
INT8_FILE: Final = "model-int8.onnx"


class OnnxCheckError(Exception):
    """An exported graph does not reproduce the torch model within tolerance."""


@dataclass(frozen=True)
class OutputCheck:
    max_abs_diff: float
    logit_range: float
    top1_agreement: float
    examples: int
    allclose: bool  # within the fp32 tolerance everywhere


class _LogitsOnly(torch.nn.Module):
    """Wraps a HF classifier so that the exported graph has exactly two inputs and one output."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # type: ignore[no-any-return]


def export_fp32(model: torch.nn.Module, example_ids: np.ndarray, example_mask: np.ndarray, path: Path) -> str:
    """Export ``model`` to ``path``; returns the exporter used ("dynamo" or "torchscript")."""
    wrapped = _LogitsOnly(model).eval()
    ids, mask = torch.from_numpy(example_ids), torch.from_numpy(example_mask)
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in ("onnxscript", "onnx_ir"):  # their optimisation passes log every rewrite at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        batch = torch.export.Dim("batch", min=1, max=4096)
        seq = torch.export.Dim("sequence", min=1, max=32768)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapped,
                (ids, mask),
                input_names=["input_ids", "attention_mask"],
                output_names=["logits"],
                dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        assert program is not None
        program.save(str(path), external_data=False)
        return "dynamo"
    except Exception as err:  # the dynamo exporter fails in many ways on unusual models
        log.warning("dynamo ONNX export failed (%s: %s); using the TorchScript-based exporter", type(err).__name__, err)
    axes = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (ids, mask),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return "torchscript"


def quantize_onnx(src: Path, dest: Path, *, per_channel: bool = True) -> None:
    """ONNX Runtime dynamic INT8 quantization of ``src`` (weights int8, activations uint8 at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs a pre-processing suggestion on the root logger for every model
    try:
        quantize_dynamic(str(src), str(dest), weight_type=QuantType.QInt8, per_channel=per_channel)
    finally:
        root.setLevel(level)


def session(path: Path, *, threads: int = 0, device: str = "cpu") -> Any:
    """An ONNX Runtime session on the CPU (or CUDA when asked for and available)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    # ORT's pool threads spin after each run by default; in a process that also runs torch (or next to other
    # pods on a shared node) that steals the CPU from everything else.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), opts, providers=providers)


def compare(reference: LogitsFn, candidate: LogitsFn, batches: list[tuple[np.ndarray, np.ndarray]]) -> OutputCheck:
    diffs, agree, total, close = [], 0, 0, True
    low, high = float("inf"), float("-inf")
    for ids, mask in batches:
        ref, got = reference(ids, mask), candidate(ids, mask)
        if ref.shape != got.shape:
            raise OnnxCheckError(f"ONNX output shape {got.shape} differs from torch {ref.shape}")
        diffs.append(float(np.abs(ref - got).max()))
        low, high = min(low, float(ref.min())), max(high, float(ref.max()))
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        total += ref.shape[0]
        close = close and bool(np.allclose(got, ref, atol=FP32_ATOL, rtol=FP32_RTOL))
    return OutputCheck(max(diffs), high - low, agree / total, total, close)


def check_fp32(reference: LogitsFn, candidate: LogitsFn, batches: list[tuple[np.ndarray, np.ndarray]]) -> OutputCheck:
    result = compare(reference, candidate, batches)
    if not result.allclose:
        raise OnnxCheckError(
            f"fp32 ONNX logits differ from torch by up to {result.max_abs_diff:.2e} "
            f"(tolerance {FP32_ATOL} + {FP32_RTOL} x |logit|)"
        )
    return result


def check_int8(reference: LogitsFn, candidate: LogitsFn, batches: list[tuple[np.ndarray, np.ndarray]]) -> OutputCheck:
    result = compare(reference, candidate, batches)
    limit = INT8_MAX_REL_DIFF * result.logit_range
    if result.max_abs_diff > limit or result.top1_agreement < INT8_MIN_AGREEMENT:
        raise OnnxCheckError(
            f"INT8 ONNX logits differ from torch fp32 by up to {result.max_abs_diff:.3f} (tolerance {limit:.3f} = "
            f"{INT8_MAX_REL_DIFF} x logit range {result.logit_range:.2f}) with top-1 agreement "
            f"{result.top1_agreement:.3f} (at least {INT8_MIN_AGREEMENT})"
        )
    return result
