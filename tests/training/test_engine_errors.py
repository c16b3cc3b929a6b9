"""Bad run configs, data and models end with a clear message, the termination log and a distinct exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from deepseek_workers import cli
from deepseek_workers.runconfig import EXIT_BAD_ARTIFACT, EXIT_BAD_CONFIG, EXIT_BAD_DATA

from tests.training.helpers import config_dict, read_json, write_config


def _run(tmp_path: Path, data: dict[str, Any] | str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    termination = tmp_path / "termination-log"
    monkeypatch.setattr(cli, "TERMINATION_LOG", termination)
    path = tmp_path / "run.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    code = cli.main(["train", "--config", str(path)])
    return code, termination.read_text(encoding="utf-8") if termination.exists() else ""


def _data(tmp_path: Path, name: str, content: str) -> str:
    (tmp_path / name).write_text(content, encoding="utf-8")
    return f"file://{tmp_path / name}"


GOOD_ROWS = "".join(json.dumps({"text": f"row {i}", "label": "ab"[i % 2]}) + "\n" for i in range(40))


@pytest.mark.parametrize(
    ("case", "expected_code", "expected_message"),
    [
        ("missing model", EXIT_BAD_CONFIG, "invalid run config: model: Field required"),
        ("not json", EXIT_BAD_CONFIG, "invalid run config"),
        ("empty dataset file", EXIT_BAD_DATA, "the file is empty"),
        ("missing dataset file", EXIT_BAD_DATA, "absent.jsonl: file not found"),
        ("missing text field", EXIT_BAD_DATA, "line 1: missing field 'text' (dataset.textField)"),
        ("unknown eval label", EXIT_BAD_DATA, "unknown label 'c'; the model's labels are 'a', 'b'"),
        ("model dir without config", EXIT_BAD_ARTIFACT, "has no config.json"),
        ("sparsity on a dense model", EXIT_BAD_CONFIG, "training.sparsity applies to the dynamic-sparse model"),
        ("sequence longer than the model", EXIT_BAD_CONFIG, "dataset.maxLength 256 exceeds the 128 positions"),
        ("bad LoRA target", EXIT_BAD_CONFIG, "training.lora.targetModules"),
        ("batch larger than data", EXIT_BAD_CONFIG, "one optimizer step needs 64 rows"),
        ("heads do not divide width", EXIT_BAD_CONFIG, "hiddenSize 100 must be a multiple of heads 3"),
    ],
)
def test_bad_input_gives_a_clear_error_and_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, expected_code: int, expected_message: str
) -> None:
    out = tmp_path / "out"
    good = {"builtin": None, "uri": _data(tmp_path, "good.jsonl", GOOD_ROWS)}
    data: dict[str, Any] | str
    if case == "missing model":
        data = config_dict(out)
        del data["model"]
    elif case == "not json":
        data = "{not json"
    elif case == "empty dataset file":
        data = config_dict(out, dataset={"builtin": None, "uri": _data(tmp_path, "empty.jsonl", "")})
    elif case == "missing dataset file":
        data = config_dict(out, dataset={"builtin": None, "uri": f"file://{tmp_path}/absent.jsonl"})
    elif case == "missing text field":
        data = config_dict(out, dataset={"builtin": None, "uri": _data(tmp_path, "d.jsonl", '{"body": "x"}\n')})
    elif case == "unknown eval label":
        bad_eval = _data(tmp_path, "eval.jsonl", '{"text": "x", "label": "c"}\n')
        data = config_dict(out, dataset={**good, "eval": {"uri": bad_eval}})
    elif case == "model dir without config":
        (tmp_path / "empty-model").mkdir()
        data = config_dict(out, model={"builtin": None, "uri": f"file://{tmp_path}/empty-model"})
    elif case == "sparsity on a dense model":
        data = config_dict(
            out, model={"builtin": {"name": "all-minilm-l6-v2", "architecture": None}}, training={"sparsity": {}}
        )
    elif case == "sequence longer than the model":
        data = config_dict(out, dataset={"maxLength": 256})
    elif case == "bad LoRA target":
        data = config_dict(out, training={"lora": {"targetModules": ["no_such_layer"]}})
    elif case == "batch larger than data":
        data = config_dict(out, dataset=good, training={"batchSize": 64})
    else:
        arch = {"hiddenSize": 100, "heads": 3}
        data = config_dict(out, model={"builtin": {"name": "dynamic-sparse-transformer", "architecture": arch}})
    code, termination = _run(tmp_path, data, monkeypatch)
    assert code == expected_code
    assert expected_message in termination
    if expected_code != EXIT_BAD_CONFIG or case not in ("missing model", "not json"):
        # Once the run config parsed, the operator also sees the failure in the progress report.
        progress = read_json(out / "progress.json")
        assert progress["state"] == "failed"
        assert expected_message in progress["message"]


def test_the_worker_process_exits_with_the_code_and_message(tmp_path: Path) -> None:
    data = config_dict(tmp_path / "out", dataset={"builtin": None, "uri": _data(tmp_path, "empty.jsonl", "")})
    config = write_config(tmp_path / "run.json", data)
    termination = tmp_path / "termination-log"
    proc = subprocess.run(
        [sys.executable, "-m", "deepseek_workers.cli", "train", "--config", str(config)],
        env={**os.environ, "DEEPSEEK_TERMINATION_LOG": str(termination)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == EXIT_BAD_DATA
    assert "BadDataError" in proc.stderr
    assert "empty.jsonl: the file is empty" in termination.read_text()
    assert "Traceback" not in proc.stderr
