"""The evaluation split the quantize step measures on, from the run config's dataset spec.

Rules (shared with training, see docs/quantization.md "Evaluation split"):

- a separate evaluation file (``dataset.eval`` / ``evalDatasetPath``) is used as it is;
- a built-in dataset with an official test split (reuters-r8) uses that split;
- otherwise the rows are shuffled with ``random.Random(training.seed)`` and the first
  ``max(1, round(n * evalFraction))`` are the evaluation split;
- ``maxEvalSamples`` then keeps a sample of that many rows, drawn with ``random.Random(training.seed + 1)``.

These are the training engine's rules (``deepseek_workers.data``); when that module is installed it is used
directly, so that both steps always agree on the split.

Files are JSON lines or CSV with a header; ``textField``/``labelField`` name the columns. Problems raise
BadDataError (exit 65) naming the file, line and field.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import io
import json
import random
from typing import Any

from deepseek_workers.builtin_data import BuiltinDataMissingError, TextExample, load_builtin
from deepseek_workers.errors import BadDataError
from deepseek_workers.runconfig import DatasetSpec, TrainRunConfig
from deepseek_workers.storage import Storage, StorageError


def _read_uri(uri: str) -> tuple[str, str]:
    """(text, display name) of a file given as an absolute path, file:// or s3:// URI."""
    parent, _, name = uri.rstrip("/").rpartition("/")
    if not name:
        raise BadDataError(f"dataset location {uri!r} names no file")
    try:
        raw = Storage.from_uri(parent or "/").read_bytes(name)
    except FileNotFoundError:
        raise BadDataError(f"dataset file {uri} does not exist") from None
    except StorageError as err:
        raise BadDataError(f"cannot read dataset file {uri}: {err}") from None
    try:
        return raw.decode("utf-8"), uri
    except UnicodeDecodeError as err:
        raise BadDataError(f"dataset file {uri} is not UTF-8 text ({err})") from None


def parse_rows(text: str, source: str, spec: DatasetSpec, *, need_labels: bool) -> list[TextExample]:
    rows: list[TextExample] = []
    tf, lf = spec.text_field, spec.label_field
    if spec.format == "jsonl":
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise BadDataError(f"{source} line {n}: not valid JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise BadDataError(f"{source} line {n}: expected a JSON object")
            rows.append(_row(obj, source, f"line {n}", tf, lf, need_labels))
    else:
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None:
            raise BadDataError(f"{source}: empty CSV file (a header row is required)")
        for field_name in (tf, lf) if need_labels else (tf,):
            if field_name not in reader.fieldnames:
                raise BadDataError(
                    f"{source}: no column {field_name!r} (columns: {', '.join(reader.fieldnames)}); "
                    "set dataset.textField / dataset.labelField"
                )
        for n, rec in enumerate(reader, start=2):
            rows.append(_row(rec, source, f"row {n}", tf, lf, need_labels))
    if not rows:
        raise BadDataError(f"{source} has no rows")
    return rows


def _row(obj: dict[str, object], source: str, where: str, tf: str, lf: str, need_labels: bool) -> TextExample:
    text = obj.get(tf)
    if not isinstance(text, str) or not text.strip():
        raise BadDataError(f"{source} {where}: field {tf!r} is missing or not a non-empty string")
    label = obj.get(lf, "")
    if need_labels and (label is None or label == ""):
        raise BadDataError(f"{source} {where}: field {lf!r} (the label) is missing")
    return TextExample(text=text, label=str(label) if label is not None else "")


def split_off_eval(rows: list[TextExample], fraction: float, seed: int) -> list[TextExample]:
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    return shuffled[: max(1, round(len(shuffled) * fraction))]


def eval_rows(cfg: TrainRunConfig, model_labels: list[str] | None = None) -> list[TextExample]:
    """The evaluation rows of ``cfg`` (see the module doc for the rules)."""
    if importlib.util.find_spec("deepseek_workers.data") is not None:
        training_data: Any = importlib.import_module("deepseek_workers.data")
        if hasattr(training_data, "load_training_data"):
            return list(training_data.load_training_data(cfg, model_labels=model_labels).eval)
    return own_eval_rows(cfg)


def own_eval_rows(cfg: TrainRunConfig) -> list[TextExample]:
    """This module's reading of the evaluation split (used when the training data module is absent)."""
    spec = cfg.dataset
    need_labels = cfg.model.task == "text-classification"
    rows: list[TextExample]
    eval_uri = cfg.eval_dataset_path or (spec.eval.uri if spec.eval and spec.eval.uri else None)
    if eval_uri:
        rows = parse_rows(*_read_uri(eval_uri), spec, need_labels=need_labels)
    elif spec.builtin:
        try:
            data = load_builtin(spec.builtin)
        except BuiltinDataMissingError as err:
            raise BadDataError(str(err)) from None
        rows = data.test if data.test else split_off_eval(data.train, spec.eval_fraction, cfg.training.seed)
    else:
        uri = cfg.dataset_path or spec.uri
        if not uri:
            raise BadDataError("dataset.pvc is set but the run config has no datasetPath (the mounted file)")
        rows = split_off_eval(
            parse_rows(*_read_uri(uri), spec, need_labels=need_labels), spec.eval_fraction, cfg.training.seed
        )
    if spec.max_eval_samples is not None and len(rows) > spec.max_eval_samples:
        rows = random.Random(cfg.training.seed + 1).sample(rows, spec.max_eval_samples)
    return rows
