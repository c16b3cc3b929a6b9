"""INT8 quantization and artifact publishing (issue 7). Placeholder until it lands: refuses to run."""

from deepseek_workers.errors import WorkerError
from deepseek_workers.runconfig import TrainRunConfig


def run_quantization(cfg: TrainRunConfig) -> None:
    raise WorkerError("quantization is not built yet")
