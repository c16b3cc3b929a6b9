"""The evaluation split the quantize step measures on: exactly the training engine's (``deepseek_workers.data``).

Using the training helper's module (rather than a reader of our own) guarantees that both steps agree on the
split and on what valid data is: a separate ``dataset.eval`` file (or the operator's ``evalDatasetPath``) as is;
else a built-in dataset's official test split; else ``evalFraction`` of the rows shuffled with
``training.seed``; then ``maxEvalSamples`` rows sampled with ``seed + 1``. Problems raise BadDataError (exit 65)
naming the file, line and field.
"""

from __future__ import annotations

from deepseek_workers.builtin_data import TextExample
from deepseek_workers.data import load_training_data
from deepseek_workers.runconfig import TrainRunConfig


def eval_rows(cfg: TrainRunConfig, model_labels: list[str] | None = None) -> list[TextExample]:
    """The evaluation rows of ``cfg``; ``model_labels`` (a classifier's labels) must cover every label used."""
    return list(load_training_data(cfg, model_labels=model_labels).eval)
