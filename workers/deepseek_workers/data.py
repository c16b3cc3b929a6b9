"""Training data: read, validate and split the dataset a run config names (no torch here).

Sources: a built-in dataset (packaged files), a jsonl or csv file on a mounted PVC (`datasetPath`, resolved by
the operator) or at a URI (`file:///...` or `s3://...` through fsspec). Every problem with the data raises
BadDataError naming the file, the line and the field, and what would be valid.

Splits are deterministic from the seed: the evaluation rows are the separate eval file when one is given,
else the built-in dataset's official test split, else `evalFraction` of the shuffled rows.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass

from deepseek_workers.builtin_data import BuiltinDataMissingError, TextExample, load_builtin
from deepseek_workers.errors import BadConfigError, BadDataError
from deepseek_workers.runconfig import DatasetSpec, Location, Task, TrainRunConfig

_MAX_ERRORS_SHOWN = 3


@dataclass(frozen=True)
class PreparedData:
    """Validated rows, ready to tokenise. `labels` is the label vocabulary (empty for causal-lm)."""

    task: Task
    train: list[TextExample]
    eval: list[TextExample]
    labels: list[str]
    source: str


def load_training_data(cfg: TrainRunConfig, model_labels: list[str] | None = None) -> PreparedData:
    """Read, validate and split the run's dataset.

    `model_labels` is the label vocabulary of a model that already is a classifier (continued training): the
    data may then use only those labels.
    """
    spec = cfg.dataset
    task = cfg.model.task
    seed = cfg.training.seed
    labelled = task == "text-classification"
    official_test: list[TextExample] | None = None
    if spec.builtin is not None:
        try:
            builtin = load_builtin(spec.builtin)
        except BuiltinDataMissingError as err:
            raise BadDataError(f"dataset.builtin {spec.builtin!r}: {err}") from None
        if labelled and not any(r.label for r in builtin.train):
            raise BadConfigError(
                f"dataset.builtin {spec.builtin!r} is unlabelled text: use it with model.task causal-lm, or pick "
                "a labelled dataset (reuters-r8, rotten-tomatoes) for text-classification"
            )
        rows, official_test, source = builtin.train, builtin.test, f"builtin:{spec.builtin}"
    else:
        source = _source_of(spec.uri, cfg.dataset_path, "dataset")
        rows = read_rows(source, spec, labelled=labelled)

    eval_rows: list[TextExample] | None = None
    if spec.eval is not None:
        eval_source = _location_source(spec.eval, cfg.eval_dataset_path)
        eval_rows = read_rows(eval_source, spec, labelled=labelled)
    elif official_test is not None:
        eval_rows = list(official_test)

    train_rows = list(rows)
    random.Random(seed).shuffle(train_rows)
    if eval_rows is None:
        n_eval = max(1, round(len(train_rows) * spec.eval_fraction))
        if len(train_rows) - n_eval < 1:
            raise BadDataError(f"{source}: {len(train_rows)} rows are too few to hold out {n_eval} for evaluation")
        eval_rows, train_rows = train_rows[:n_eval], train_rows[n_eval:]
    labels = _label_vocabulary(train_rows, source, model_labels) if labelled else []
    if labelled:
        _check_known_labels(eval_rows, labels, "evaluation data")
    if spec.max_train_samples is not None:
        train_rows = train_rows[: spec.max_train_samples]
    if spec.max_eval_samples is not None and len(eval_rows) > spec.max_eval_samples:
        eval_rows = random.Random(seed + 1).sample(eval_rows, spec.max_eval_samples)
    return PreparedData(task=task, train=train_rows, eval=eval_rows, labels=labels, source=source)


def _label_vocabulary(rows: list[TextExample], source: str, model_labels: list[str] | None) -> list[str]:
    found = sorted({r.label for r in rows}, key=_label_sort_key)
    if model_labels:
        _check_known_labels(rows, model_labels, source)
        return list(model_labels)
    if len(found) < 2:
        raise BadDataError(
            f"{source}: text-classification needs at least 2 distinct labels in the training rows, found {found}"
        )
    return found


def _label_sort_key(label: str) -> tuple[int, float, str]:
    # Numeric labels in numeric order (so "10" sorts after "9"), then strings.
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def _check_known_labels(rows: Iterable[TextExample], labels: list[str], what: str) -> None:
    known = set(labels)
    unknown = sorted({r.label for r in rows if r.label not in known})
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:_MAX_ERRORS_SHOWN])
        more = f" (and {len(unknown) - _MAX_ERRORS_SHOWN} more)" if len(unknown) > _MAX_ERRORS_SHOWN else ""
        raise BadDataError(
            f"{what}: unknown label {shown}{more}; the model's labels are {', '.join(repr(x) for x in labels)}"
        )


def _source_of(uri: str | None, resolved_path: str | None, field: str) -> str:
    if resolved_path is not None:
        return resolved_path
    if uri is not None:
        return uri
    raise BadConfigError(
        f"{field}.pvc is set but the run config has no resolved {field}Path (the operator mounts the PVC and "
        f"sets {field}Path)"
    )


def _location_source(loc: Location, resolved_path: str | None) -> str:
    if loc.uri is not None:
        return loc.uri
    if resolved_path is not None:
        return resolved_path
    raise BadConfigError("dataset.eval.pvc is set but the run config has no resolved evalDatasetPath")


def _read_text(source: str) -> str:
    """The whole file as text: a local path, file:// or s3://."""
    from deepseek_workers.storage import Storage, StorageError

    try:
        raw = Storage.from_uri(source).read_bytes("")
    except FileNotFoundError:
        raise BadDataError(f"{source}: file not found") from None
    except IsADirectoryError:
        raise BadDataError(f"{source}: is a directory, expected a jsonl or csv file") from None
    except (OSError, StorageError) as err:
        raise BadDataError(f"{source}: cannot read: {err}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise BadDataError(f"{source}: not UTF-8 text (byte {err.start})") from None


def read_rows(source: str, spec: DatasetSpec, *, labelled: bool) -> list[TextExample]:
    """Parse a jsonl or csv file into examples, refusing missing fields and empty files."""
    text = _read_text(source)
    if not text.strip():
        raise BadDataError(f"{source}: the file is empty")
    records = _jsonl_records(source, text) if spec.format == "jsonl" else _csv_records(source, text, spec, labelled)
    rows = [_example(source, line, record, spec, labelled) for line, record in records]
    if not rows:
        raise BadDataError(f"{source}: no data rows")
    return rows


def _jsonl_records(source: str, text: str) -> list[tuple[int, dict[str, object]]]:
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            msg = f"{source}: line {n}: not valid JSON ({err.msg}); expected one object per line"
            raise BadDataError(msg) from None
        if not isinstance(record, dict):
            raise BadDataError(f"{source}: line {n}: expected a JSON object, got {type(record).__name__}")
        out.append((n, record))
    return out


def _csv_records(source: str, text: str, spec: DatasetSpec, labelled: bool) -> list[tuple[int, dict[str, object]]]:
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    needed = [(spec.text_field, "dataset.textField")]
    if labelled:
        needed.append((spec.label_field, "dataset.labelField"))
    for field, name in needed:
        if field not in header:
            columns = ", ".join(header)
            raise BadDataError(f"{source}: the csv header has no column {field!r} ({name}); columns: {columns}")
    return [(reader.line_num, dict(record)) for record in reader]


def _example(source: str, line: int, record: dict[str, object], spec: DatasetSpec, labelled: bool) -> TextExample:
    text = record.get(spec.text_field)
    if text is None:
        raise BadDataError(
            f"{source}: line {line}: missing field {spec.text_field!r} (dataset.textField); "
            f"fields present: {', '.join(sorted(map(str, record)))}"
        )
    if not isinstance(text, str) or not text.strip():
        raise BadDataError(f"{source}: line {line}: field {spec.text_field!r} must be a non-empty string")
    if not labelled:
        return TextExample(text, "")
    label = record.get(spec.label_field)
    if label is None or label == "":
        raise BadDataError(
            f"{source}: line {line}: missing field {spec.label_field!r} (dataset.labelField); "
            f"fields present: {', '.join(sorted(map(str, record)))}"
        )
    if isinstance(label, bool) or not isinstance(label, str | int | float):
        raise BadDataError(f"{source}: line {line}: label must be a string or a number, got {type(label).__name__}")
    return TextExample(text, str(label))
