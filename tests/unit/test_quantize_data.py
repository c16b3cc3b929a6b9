"""The evaluation split the quantize step measures on: rules, file formats, and clear errors for bad data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from deepseek_workers.errors import BadDataError
from deepseek_workers.quantization.data import eval_rows, split_off_eval
from deepseek_workers.runconfig import TrainRunConfig, parse_train_config


def _cfg(dataset: dict[str, Any], task: str = "text-classification", **extra: Any) -> TrainRunConfig:
    return parse_train_config(
        {
            "source": {"kind": "DeepSeekTraining", "namespace": "ns", "name": "n"},
            "model": {"task": task, "builtin": {"name": "all-minilm-l6-v2"}},
            "dataset": dataset,
            "outputUri": "/tmp/out",
            "artifactVersion": "v1",
            **extra,
        }
    )


def test_builtin_with_official_test_split() -> None:
    rows = eval_rows(_cfg({"builtin": "reuters-r8", "maxEvalSamples": 50}))
    assert rows == eval_rows(_cfg({"builtin": "reuters-r8", "maxEvalSamples": 50}))
    assert len(rows) == 50
    assert {r.label for r in rows} <= {"earn", "acq", "crude", "trade", "money-fx", "interest", "ship", "grain"}


def test_builtin_without_test_split_is_split_by_seed() -> None:
    a = eval_rows(_cfg({"builtin": "rotten-tomatoes", "evalFraction": 0.05}))
    b = eval_rows(_cfg({"builtin": "rotten-tomatoes", "evalFraction": 0.05}))
    c = eval_rows(_cfg({"builtin": "rotten-tomatoes", "evalFraction": 0.05}, training={"seed": 7}))
    assert a == b
    assert a != c
    assert len(a) == round(12808 * 0.05)


def test_split_rule() -> None:
    from deepseek_workers.builtin_data import TextExample

    rows = [TextExample(str(i), "x") for i in range(10)]
    held = split_off_eval(rows, 0.2, seed=1)
    assert len(held) == 2
    assert held == split_off_eval(rows, 0.2, seed=1)
    assert len(split_off_eval(rows[:2], 0.1, seed=1)) == 1  # never empty


def test_jsonl_and_csv_files(tmp_path: Path) -> None:
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps({"body": f"text {i}", "topic": "a" if i % 2 else "b"}) for i in range(20)))
    cfg = _cfg({"uri": f"file://{jl}", "textField": "body", "labelField": "topic", "evalFraction": 0.25})
    rows = eval_rows(cfg)
    assert len(rows) == 5
    assert all(r.text.startswith("text ") for r in rows)
    csv_file = tmp_path / "e.csv"
    csv_file.write_text('text,label\n"hello, world",pos\nbye,neg\n')
    rows = eval_rows(_cfg({"uri": f"file://{jl}", "eval": {"uri": f"file://{csv_file}"}, "format": "csv"}))
    assert [(r.text, r.label) for r in rows] == [("hello, world", "pos"), ("bye", "neg")]


def test_eval_path_from_the_operator_wins(tmp_path: Path) -> None:
    f = tmp_path / "eval.jsonl"
    f.write_text('{"text": "only row", "label": "x"}\n')
    rows = eval_rows(_cfg({"builtin": "reuters-r8"}, evalDatasetPath=str(f)))
    assert [r.text for r in rows] == ["only row"]


def test_causal_lm_needs_no_labels(tmp_path: Path) -> None:
    f = tmp_path / "lm.jsonl"
    f.write_text('{"text": "to be or not to be"}\n{"text": "that is the question"}\n')
    rows = eval_rows(_cfg({"uri": f"file://{f}", "eval": {"uri": f"file://{f}"}}, task="causal-lm"))
    assert [r.label for r in rows] == ["", ""]


@pytest.mark.parametrize(
    ("content", "fmt", "message"),
    [
        ('{"text": "a", "label": "x"}\nnot json\n', "jsonl", r"line 2: not valid JSON"),
        ('{"text": "", "label": "x"}\n', "jsonl", r"line 1: field 'text' is missing or not a non-empty string"),
        ('{"text": "a"}\n', "jsonl", r"line 1: field 'label' \(the label\) is missing"),
        ("[1, 2]\n", "jsonl", r"line 1: expected a JSON object"),
        ("\n\n", "jsonl", r"has no rows"),
        ("body,label\nx,y\n", "csv", r"no column 'text' \(columns: body, label\)"),
        ("", "csv", r"empty CSV file"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, content: str, fmt: str, message: str) -> None:
    f = tmp_path / "bad.txt"
    f.write_text(content)
    cfg = _cfg({"uri": f"file://{f}", "eval": {"uri": f"file://{f}"}, "format": fmt})
    with pytest.raises(BadDataError, match=message) as info:
        eval_rows(cfg)
    assert str(f) in info.value.message


def test_missing_file(tmp_path: Path) -> None:
    cfg = _cfg({"uri": f"file://{tmp_path}/nope.jsonl"})
    with pytest.raises(BadDataError, match="does not exist"):
        eval_rows(cfg)


def test_file_on_s3(s3_bucket: str) -> None:
    from deepseek_workers.storage import Storage

    Storage.from_uri(s3_bucket + "/data").write_text("eval.jsonl", '{"text": "t", "label": "l"}\n')
    rows = eval_rows(_cfg({"uri": f"{s3_bucket}/data/eval.jsonl", "eval": {"uri": f"{s3_bucket}/data/eval.jsonl"}}))
    assert [(r.text, r.label) for r in rows] == [("t", "l")]
