"""Model server (issue 8). Placeholder until it lands: refuses to run."""

from deepseek_workers.errors import WorkerError
from deepseek_workers.runconfig import ServeRunConfig


def run_server(cfg: ServeRunConfig) -> None:
    raise WorkerError("the model server is not built yet")
