"""Training engine (issue 6). Placeholder until the engine lands: refuses to run rather than pretend."""

from deepseek_workers.errors import WorkerError
from deepseek_workers.runconfig import TrainRunConfig


def run_training(cfg: TrainRunConfig) -> None:
    raise WorkerError("the training engine is not built yet")
