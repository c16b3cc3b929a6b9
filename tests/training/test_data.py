"""Reading, validating and splitting datasets: clear errors for bad data, deterministic splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from deepseek_workers.data import load_training_data
from deepseek_workers.errors import BadConfigError, BadDataError

from tests.training.helpers import make_config


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _rows(n: int) -> list[dict[str, object]]:
    return [{"text": f"document number {i}", "label": ["pos", "neg", "mixed"][i % 3]} for i in range(n)]


def _cfg(tmp_path: Path, data: Path, **dataset: object):  # type: ignore[no-untyped-def]
    return make_config(
        tmp_path / "out",
        dataset={"builtin": None, "uri": f"file://{data}", **dataset},
    )


def test_jsonl_split_is_deterministic_from_the_seed(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "d.jsonl", _rows(100))
    a = load_training_data(_cfg(tmp_path, data, evalFraction=0.2))
    b = load_training_data(_cfg(tmp_path, data, evalFraction=0.2))
    assert (a.train, a.eval) == (b.train, b.eval)
    assert len(a.eval) == 20
    assert len(a.train) == 80
    assert not {r.text for r in a.train} & {r.text for r in a.eval}
    assert a.labels == ["mixed", "neg", "pos"]
    other = load_training_data(
        make_config(tmp_path / "out", dataset={"builtin": None, "uri": f"file://{data}"}, training={"seed": 7})
    )
    assert {r.text for r in other.eval} != {r.text for r in load_training_data(_cfg(tmp_path, data)).eval}


def test_csv_with_custom_fields_and_numeric_labels(tmp_path: Path) -> None:
    lines = ["body,topic"] + [f"row {i},{i % 11}" for i in range(44)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = _cfg(tmp_path, tmp_path / "d.csv", format="csv", textField="body", labelField="topic", maxTrainSamples=5)
    data = load_training_data(cfg)
    assert data.labels[:3] == ["0", "1", "2"]
    assert data.labels[-1] == "10"
    assert len(data.train) == 5


def test_builtin_reuters_evaluates_on_its_official_test_split(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, dataset={"maxTrainSamples": 50, "maxEvalSamples": 30})
    data = load_training_data(cfg)
    assert len(data.train) == 50
    assert len(data.eval) == 30
    assert len(data.labels) == 8
    assert "earn" in data.labels


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the file is empty"),
        ("\n  \n", "the file is empty"),
        ('{"text": "a", "label": "x"}\n{"label": "y"}\n', "line 2: missing field 'text'"),
        ('{"text": "a"}\n', "line 1: missing field 'label'"),
        ('{"text": "a", "label": "x"}\nnot json\n', "line 2: not valid JSON"),
        ('["a", "x"]\n', "line 1: expected a JSON object"),
        ('{"text": "", "label": "x"}\n', "must be a non-empty string"),
        ('{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n', "at least 2 distinct labels"),
    ],
)
def test_bad_jsonl_gives_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "d.jsonl").write_text(content, encoding="utf-8")
    with pytest.raises(BadDataError, match=message) as err:
        load_training_data(_cfg(tmp_path, tmp_path / "d.jsonl"))
    assert "d.jsonl" in err.value.message


def test_missing_file_and_missing_csv_column(tmp_path: Path) -> None:
    with pytest.raises(BadDataError, match="file not found"):
        load_training_data(_cfg(tmp_path, tmp_path / "nope.jsonl"))
    (tmp_path / "d.csv").write_text("text,category\na,b\n", encoding="utf-8")
    with pytest.raises(BadDataError, match=r"no column 'label' \(dataset.labelField\); columns: text, category"):
        load_training_data(_cfg(tmp_path, tmp_path / "d.csv", format="csv"))


def test_unknown_label_in_the_eval_file_is_named(tmp_path: Path) -> None:
    train = _jsonl(tmp_path / "train.jsonl", _rows(30))
    _jsonl(tmp_path / "eval.jsonl", [{"text": "t", "label": "pos"}, {"text": "u", "label": "sarcastic"}])
    cfg = _cfg(tmp_path, train, eval={"uri": f"file://{tmp_path / 'eval.jsonl'}"})
    with pytest.raises(BadDataError, match="unknown label 'sarcastic'; the model's labels are 'mixed', 'neg', 'pos'"):
        load_training_data(cfg)


def test_data_must_fit_an_existing_classifier_labels(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "d.jsonl", _rows(30))
    with pytest.raises(BadDataError, match="unknown label 'mixed'"):
        load_training_data(_cfg(tmp_path, data), model_labels=["neg", "pos"])
    ok = load_training_data(_cfg(tmp_path, data), model_labels=["pos", "neg", "mixed"])
    assert ok.labels == ["pos", "neg", "mixed"]  # the model's order wins


def test_unlabelled_builtin_refused_for_classification_and_pvc_needs_a_path(tmp_path: Path) -> None:
    with pytest.raises(BadConfigError, match="causal-lm"):
        load_training_data(make_config(tmp_path, dataset={"builtin": "hamlet"}))
    cfg = make_config(tmp_path, dataset={"builtin": None, "pvc": {"claimName": "data", "path": "d.jsonl"}})
    with pytest.raises(BadConfigError, match="datasetPath"):
        load_training_data(cfg)
    hamlet = load_training_data(make_config(tmp_path, model={"task": "causal-lm"}, dataset={"builtin": "hamlet"}))
    assert hamlet.labels == []
    assert len(hamlet.eval) >= 1
    assert all(r.label == "" for r in hamlet.train)
