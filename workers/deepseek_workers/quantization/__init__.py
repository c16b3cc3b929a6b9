"""INT8 quantization, ONNX export and artifact publishing: `deepseek-worker quantize` (docs/quantization.md).

Heavy modules (torch, torchao, onnxruntime) are imported inside the functions, so importing this package is
cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deepseek_workers.runconfig import TrainRunConfig


def run_quantization(cfg: TrainRunConfig) -> None:
    """Quantize ``<outputUri>/trained/<version>``, evaluate it, publish ``<outputUri>/<version>``."""
    from deepseek_workers.quantization.run import run_quantization as run

    run(cfg)
