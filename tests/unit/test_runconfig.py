"""The run config contract: validation errors name the field, and it imports without torch."""

import subprocess
import sys

import pytest
from deepseek_workers import runconfig


def _minimal() -> dict[str, object]:
    return {
        "source": {"kind": "DeepSeekTraining", "namespace": "ml", "name": "r8"},
        "model": {"builtin": {"name": "all-minilm-l6-v2"}},
        "dataset": {"builtin": "reuters-r8"},
        "outputUri": "/out",
        "artifactVersion": "v1",
    }


def test_minimal_config_gets_defaults_and_round_trips() -> None:
    cfg = runconfig.parse_train_config(_minimal())
    assert cfg.training.precision == "bf16"
    assert cfg.quantization.method == "int8-dynamic"
    again = runconfig.parse_train_config(runconfig.dump(cfg))
    assert again == cfg


def test_errors_name_every_bad_field() -> None:
    bad = _minimal() | {"training": {"batchSize": 0, "precision": "fp8"}}
    with pytest.raises(runconfig.RunConfigError) as err:
        runconfig.parse_train_config(bad)
    msg = str(err.value)
    assert "training.batchSize" in msg
    assert "training.precision" in msg


def test_two_model_sources_are_refused() -> None:
    bad = _minimal() | {"model": {"builtin": {"name": "all-minilm-l6-v2"}, "uri": "s3://b/m"}}
    with pytest.raises(runconfig.RunConfigError, match="exactly one model source"):
        runconfig.parse_train_config(bad)


def test_runconfig_and_operator_import_without_torch() -> None:
    code = "import sys, deepseek_workers.runconfig, deepseek_operator; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
