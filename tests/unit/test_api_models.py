"""The operator's typed view of the resources: examples parse, defaults apply, status round-trips."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from deepseek_operator.api import (
    ApiSpecError,
    DeepSeekInferenceStatus,
    DeepSeekTrainingStatus,
    immutable_fields,
    parse_inference,
    parse_training,
)
from deepseek_operator.api.core import parse_quantity
from deepseek_workers import runconfig

from tests.unit.test_api_cases import inference_manifest, merge_patch, training_manifest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _example_docs() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["apiVersion"].startswith("deepseek.ai/"):
                found.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return found


def test_examples_cover_the_required_scenarios() -> None:
    docs = dict(_example_docs())
    trainings = [d for d in docs.values() if d["kind"] == "DeepSeekTraining"]
    assert any(d["spec"].get("training", {}).get("lora") for d in trainings)
    assert any(d["spec"].get("distributed", {}).get("workers", 1) > 1 for d in trainings)
    assert any(d["spec"]["model"].get("task") == "causal-lm" for d in trainings)
    assert any(d["spec"]["model"].get("builtin", {}).get("name") == "dynamic-sparse-transformer" for d in trainings)
    quick = docs["quickstart.yaml:DeepSeekTraining/minilm-r8"]
    assert quick["spec"]["model"]["builtin"]["name"] == "all-minilm-l6-v2"
    assert quick["spec"]["dataset"]["builtin"] == "reuters-r8"
    assert quick["spec"]["training"]["precision"] == "bf16"
    assert quick["spec"]["quantization"]["method"] == "int8-dynamic"
    serve = [d for d in docs.values() if d["kind"] == "DeepSeekInference" and d["metadata"]["name"] == "minilm-r8"]
    assert serve[0]["spec"]["model"]["trainingRef"]["name"] == "minilm-r8"


@pytest.mark.parametrize(("name", "doc"), _example_docs(), ids=[n for n, _ in _example_docs()])
def test_every_example_parses_with_the_operator_models(name: str, doc: dict[str, Any]) -> None:
    parsed = parse_training(doc) if doc["kind"] == "DeepSeekTraining" else parse_inference(doc)
    assert parsed.metadata.name == doc["metadata"]["name"]


def test_defaults_match_the_run_config_contract() -> None:
    t = parse_training(training_manifest()).spec
    assert t.training == runconfig.TrainingSpec()
    assert t.quantization == runconfig.QuantizationSpec()
    assert (t.distributed.workers, t.distributed.gpus_per_worker) == (1, 0)
    assert (t.run_policy.suspend, t.run_policy.backoff_limit) == (False, 3)
    assert t.run_policy.ttl_seconds_after_finished is None
    i = parse_inference(inference_manifest()).spec
    assert i.batching == runconfig.BatchingSpec()
    assert (i.replicas, i.service.type, i.service.port, i.monitoring.service_monitor) == (1, "ClusterIP", 80, True)
    assert i.model.variant is None  # resolved by the controller: the training's default variant


def test_every_error_is_reported_with_its_path() -> None:
    bad = merge_patch(
        training_manifest(),
        {"spec": {"training": {"batchSize": 0, "precision": "fp8"}, "distributed": {"workers": 0}}},
    )
    with pytest.raises(ApiSpecError) as err:
        parse_training(bad)
    fields = {path for path, _ in err.value.errors}
    assert fields == {"spec.training.batchSize", "spec.training.precision", "spec.distributed.workers"}
    assert str(err.value).startswith("invalid DeepSeekTraining: ")


def test_several_cross_field_violations_are_all_reported() -> None:
    bad = merge_patch(
        training_manifest(),
        {
            "spec": {
                "model": {"task": "causal-lm"},
                "training": {"sparsity": {}},
                "resources": {"limits": {"nvidia.com/gpu": 1}},
            }
        },
    )
    with pytest.raises(ApiSpecError) as err:
        parse_training(bad)
    fields = {path for path, _ in err.value.errors}
    assert fields == {"spec.model.task", "spec.training.sparsity", "spec.resources"}


def test_lists_are_indexed_in_paths() -> None:
    bad = merge_patch(training_manifest(), {"spec": {"envFrom": [{"secretRef": {"name": "ok"}}, {"prefix": "X_"}]}})
    with pytest.raises(ApiSpecError) as err:
        parse_training(bad)
    assert err.value.errors == [("spec.envFrom[1]", "set exactly one of secretRef or configMapRef")]


def test_valid_variants_of_the_cross_field_rules_are_accepted() -> None:
    sparse = {"model": {"builtin": {"name": "dynamic-sparse-transformer", "architecture": {"layers": 2}}}}
    parse_training(merge_patch(training_manifest(), {"spec": sparse | {"training": {"sparsity": {}}}}))
    causal = {"model": {"task": "causal-lm", "builtin": {"name": "smollm2-135m"}}, "dataset": {"builtin": "hamlet"}}
    parse_training(merge_patch(training_manifest(), {"spec": causal}))
    # A model from a PVC may be causal: the API cannot know, the worker checks the config.json.
    pvc_causal = {"model": {"task": "causal-lm", "builtin": None, "pvc": {"claimName": "models", "path": "llm"}}}
    parse_training(merge_patch(training_manifest(), {"spec": pvc_causal}))
    scaled = {"autoscaling": {"maxReplicas": 3}, "resources": {"requests": {"cpu": "500m"}, "limits": {"cpu": 1}}}
    parse_inference(merge_patch(inference_manifest(), {"spec": scaled}))


@pytest.mark.parametrize(
    ("text", "value"),
    [("500m", Decimal("0.5")), ("2", Decimal(2)), (3, Decimal(3)), ("1Gi", Decimal(2**30)), ("1e3", Decimal(1000))],
)
def test_quantities(text: int | str, value: Decimal) -> None:
    assert parse_quantity(text) == value


def test_request_within_limit_across_units() -> None:
    ok = {"resources": {"requests": {"memory": "512Mi"}, "limits": {"memory": "1Gi"}}}
    parse_training(merge_patch(training_manifest(), {"spec": ok}))
    bad = {"resources": {"requests": {"memory": "2G"}, "limits": {"memory": "1Gi"}}}
    with pytest.raises(ApiSpecError, match="each request must be less than or equal to the limit"):
        parse_training(merge_patch(training_manifest(), {"spec": bad}))


def test_status_round_trips_in_the_wire_format() -> None:
    wire = {
        "phase": "Running",
        "observedGeneration": 2,
        "startTime": "2026-11-28T10:00:00Z",
        "conditions": [
            {
                "type": "Running",
                "status": "True",
                "reason": "WorkersRunning",
                "message": "2/2 workers running",
                "lastTransitionTime": "2026-11-28T10:00:05Z",
                "observedGeneration": 2,
            }
        ],
        "progress": {"stage": "train", "step": 120, "totalSteps": 480, "percent": 25, "epoch": 0.75, "loss": 0.41},
        "artifacts": {"version": "v2"},
        "metrics": {"accuracy": 0.93},
        "restarts": 1,
    }
    status = DeepSeekTrainingStatus.model_validate(wire)
    assert status.start_time == datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    dumped = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped == wire | {"progress": wire["progress"] | {"epoch": 0.75}}
    # A field written by a newer operator does not break an older one.
    assert DeepSeekInferenceStatus.model_validate({"phase": "Ready", "futureField": 1}).phase == "Ready"


def test_immutable_fields_are_all_spec_fields_but_run_policy() -> None:
    fields = immutable_fields()
    assert "runPolicy" not in fields
    assert {"model", "dataset", "training", "quantization", "output", "distributed", "image"} <= set(fields)


def test_name_rule_in_the_models() -> None:
    with pytest.raises(ApiSpecError) as err:
        parse_training(training_manifest(name="x" * 49))
    assert err.value.errors[0][0] == "metadata.name"
    parse_training(training_manifest(name="x" * 48))


def test_api_imports_without_torch() -> None:
    code = "import sys, deepseek_operator.api.crdgen; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
