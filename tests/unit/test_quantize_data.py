"""The evaluation split the quantize step measures on: rules, file formats, and clear errors for bad data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from deepseek_workers.data import load_training_data
from deepseek_workers.errors import BadDataError
from deepseek_workers.quantization.data import eval_rows
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
    cfg = _cfg({"builtin": "reuters-r8", "maxEvalSamples": 50})
    rows = eval_rows(cfg)
    assert rows == load_training_data(cfg).eval  # the split training evaluated on
    assert len(rows) == 50
    assert {r.label for r in rows} <= {"earn", "acq", "crude", "trade", "money-fx", "interest", "ship", "grain"}


def test_builtin_without_test_split_is_split_by_seed() -> None:
    a = eval_rows(_cfg({"builtin": "rotten-tomatoes", "evalFraction": 0.05}))
    b = eval_rows(_cfg({"builtin": "rotten-tomatoes", "evalFraction": 0.05}))
    c = eval_rows(_cfg({"builtin": "rotten-tomatoes", "evalFraction": 0.05}, training={"seed": 7}))
    assert a == b
    assert a != c
    assert len(a) == round(12808 * 0.05)


def test_jsonl_split_and_csv_eval_file(tmp_path: Path) -> None:
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps({"body": f"text {i}", "topic": "a" if i % 2 else "b"}) for i in range(20)))
    cfg = _cfg({"uri": f"file://{jl}", "textField": "body", "labelField": "topic", "evalFraction": 0.25})
    rows = eval_rows(cfg)
    assert len(rows) == 5
    assert all(r.text.startswith("text ") for r in rows)
    train = tmp_path / "t.csv"
    train.write_text("text,label\nhi,pos\nho,neg\n")
    csv_file = tmp_path / "e.csv"
    csv_file.write_text('text,label\n"hello, world",pos\nbye,neg\n')
    rows = eval_rows(_cfg({"uri": f"file://{train}", "eval": {"uri": f"file://{csv_file}"}, "format": "csv"}))
    assert [(r.text, r.label) for r in rows] == [("hello, world", "pos"), ("bye", "neg")]


def test_eval_file_on_a_pvc_uses_the_operators_path(tmp_path: Path) -> None:
    f = tmp_path / "eval.jsonl"
    f.write_text('{"text": "only row", "label": "earn"}\n')
    # dataset.eval on a PVC: the operator mounts it and passes the file's path as evalDatasetPath.
    dataset = {"builtin": "reuters-r8", "eval": {"pvc": {"claimName": "data", "path": "r8/eval.jsonl"}}}
    rows = eval_rows(_cfg(dataset, evalDatasetPath=str(f)))
    assert [r.text for r in rows] == ["only row"]


def test_causal_lm_needs_no_labels(tmp_path: Path) -> None:
    f = tmp_path / "lm.jsonl"
    f.write_text('{"text": "to be or not to be"}\n{"text": "that is the question"}\n')
    rows = eval_rows(_cfg({"uri": f"file://{f}", "eval": {"uri": f"file://{f}"}}, task="causal-lm"))
    assert [r.label for r in rows] == ["", ""]


def test_labels_the_model_does_not_know_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "eval.jsonl"
    f.write_text('{"text": "a", "label": "earn"}\n{"text": "b", "label": "medicine"}\n')
    cfg = _cfg({"uri": f"file://{f}", "eval": {"uri": f"file://{f}"}})
    with pytest.raises(BadDataError, match="medicine"):
        eval_rows(cfg, model_labels=["earn", "acq"])


@pytest.mark.parametrize(
    ("content", "fmt"),
    [
        ('{"text": "a", "label": "x"}\nnot json\n', "jsonl"),
        ('{"text": "", "label": "x"}\n', "jsonl"),
        ('{"text": "a"}\n', "jsonl"),
        ("[1, 2]\n", "jsonl"),
        ("body,label\nx,y\n", "csv"),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, content: str, fmt: str) -> None:
    f = tmp_path / "bad.txt"
    f.write_text(content)
    cfg = _cfg({"uri": f"file://{f}", "eval": {"uri": f"file://{f}"}, "format": fmt})
    with pytest.raises(BadDataError) as info:
        eval_rows(cfg)
    assert str(f) in info.value.message


def test_missing_file(tmp_path: Path) -> None:
    cfg = _cfg({"uri": f"file://{tmp_path}/nope.jsonl"})
    with pytest.raises(BadDataError, match=r"nope\.jsonl"):
        eval_rows(cfg)


def test_file_on_s3(s3_bucket: str) -> None:
    from deepseek_workers.storage import Storage

    Storage.from_uri(s3_bucket + "/data").write_text("eval.jsonl", '{"text": "t", "label": "l"}\n')
    rows = eval_rows(
        _cfg({"uri": f"{s3_bucket}/data/eval.jsonl", "eval": {"uri": f"{s3_bucket}/data/eval.jsonl"}}), ["l", "m"]
    )
    assert [(r.text, r.label) for r in rows] == [("t", "l")]
