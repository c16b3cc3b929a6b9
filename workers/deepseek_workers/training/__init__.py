"""Training engine (issue 6): `run_training(cfg)` is what `deepseek-worker train` calls.

This package's `__init__` and `launch` stay torch-free (the operator imports `launch`); the engine itself is
imported on first use.
"""

from __future__ import annotations

from deepseek_workers.runconfig import TrainRunConfig


def run_training(cfg: TrainRunConfig) -> None:
    """Train, evaluate and publish the model a run config describes (raises WorkerError for expected failures)."""
    from deepseek_workers.training.engine import train

    train(cfg)
