"""The generated CRDs: in sync with the models, structural, bounded, documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from deepseek_operator.api import crdgen
from deepseek_operator.api.schema import SchemaError, structural, walk
from deepseek_workers.runconfig import SpecModel
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[2]


def _crds() -> dict[str, dict[str, Any]]:
    return {k.kind: crdgen.crd(k) for k in crdgen.KINDS}


def _schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = _crds()[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_committed_crds_and_docs_match_the_models() -> None:
    stale = [str(p.relative_to(ROOT)) for p, text in crdgen.outputs(ROOT).items() if p.read_text() != text]
    assert not stale, f"out of date (run `make crds`): {stale}"


def test_check_mode_reports_drift(tmp_path: Path) -> None:
    (tmp_path / "crds").mkdir()
    (tmp_path / "docs").mkdir()
    assert crdgen.main(["--root", str(tmp_path), "--check"]) == 1  # nothing generated yet
    assert crdgen.main(["--root", str(tmp_path)]) == 0
    assert crdgen.main(["--root", str(tmp_path), "--check"]) == 0
    crd_file = tmp_path / "crds" / "deepseek.ai_deepseektrainings.yaml"
    crd_file.write_text(crd_file.read_text().replace("dstrain", "dst"))
    assert crdgen.main(["--root", str(tmp_path), "--check"]) == 1


def test_module_entry_point_writes_both_files(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "deepseek_operator.api.crdgen", "--root", str(tmp_path)], check=True, timeout=120
    )
    names = sorted(p.name for p in (tmp_path / "crds").iterdir())
    assert names == ["deepseek.ai_deepseekinferences.yaml", "deepseek.ai_deepseektrainings.yaml"]
    doc = yaml.safe_load((tmp_path / "crds" / names[1]).read_text())
    assert doc["spec"]["names"]["shortNames"] == ["dstrain"]


def test_names_subresources_and_columns() -> None:
    crds = _crds()
    train, infer = crds["DeepSeekTraining"]["spec"], crds["DeepSeekInference"]["spec"]
    assert train["group"] == infer["group"] == "deepseek.ai"
    assert train["scope"] == infer["scope"] == "Namespaced"
    assert train["names"]["categories"] == infer["names"]["categories"] == ["deepseek"]
    assert (train["names"]["shortNames"], infer["names"]["shortNames"]) == (["dstrain"], ["dsinfer"])
    tv, iv = train["versions"][0], infer["versions"][0]
    assert tv["name"] == iv["name"] == "v1alpha1"
    assert tv["subresources"] == {"status": {}}
    assert iv["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    main_columns = lambda v: [c["name"] for c in v["additionalPrinterColumns"] if not c.get("priority")]  # noqa: E731
    assert main_columns(tv) == ["Phase", "Progress", "Accuracy", "Age"]
    assert main_columns(iv) == ["Ready", "Replicas", "URL", "Age"]


def _resolves(schema: dict[str, Any], json_path: str) -> bool:
    node = schema
    for part in json_path.split("[")[0].strip(".").split("."):
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return False
    return True


@pytest.mark.parametrize("kind", ["DeepSeekTraining", "DeepSeekInference"])
def test_columns_scale_and_selectable_fields_point_at_real_fields(kind: str) -> None:
    version = _crds()[kind]["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    paths = [c["jsonPath"] for c in version["additionalPrinterColumns"] if not c["jsonPath"].startswith(".metadata")]
    paths += [f["jsonPath"] for f in version["selectableFields"]]
    paths += [p for k, p in version["subresources"].get("scale", {}).items()]
    missing = [p for p in paths if not _resolves(schema, p)]
    assert not missing


@pytest.mark.parametrize("kind", ["DeepSeekTraining", "DeepSeekInference"])
def test_schema_is_structural_and_every_field_documented(kind: str) -> None:
    schema = _schema(kind)
    for part in ("spec", "status"):
        for path, node in walk(schema["properties"][part], part):
            assert not {"$ref", "allOf", "oneOf"} & set(node), path
            assert node.get("type") or node.get("x-kubernetes-int-or-string"), f"{path}: untyped"
            element = path.endswith(("[]", "{}")) and node.get("type") != "object"
            assert element or node.get("description"), f"{path}: no description (kubectl explain would be empty)"
            if "anyOf" in node:
                assert node.get("x-kubernetes-int-or-string"), f"{path}: only int-or-string may use anyOf"
            assert node.get("additionalProperties") is not False, path


@pytest.mark.parametrize("kind", ["DeepSeekTraining", "DeepSeekInference"])
def test_spec_is_bounded_so_cel_costs_stay_in_budget(kind: str) -> None:
    # The API server estimates CEL cost from maxLength/maxItems/maxProperties; unbounded fields make the
    # immutability and map rules too expensive to install.
    for path, node in walk(_schema(kind)["properties"]["spec"], "spec"):
        t = node.get("type")
        if t == "string" or node.get("x-kubernetes-int-or-string"):
            assert "maxLength" in node or "enum" in node, f"{path}: string without maxLength"
        if t == "array":
            assert "maxItems" in node, f"{path}: array without maxItems"
        if t == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, f"{path}: map without maxProperties"


def test_defaults_show_in_descriptions_for_kubectl_explain() -> None:
    training = _schema("DeepSeekTraining")["properties"]["spec"]["properties"]["training"]
    assert training["default"] == {}
    precision = training["properties"]["precision"]
    assert (precision["default"], precision["enum"]) == ("bf16", ["fp32", "bf16", "fp16"])
    assert precision["description"].endswith("Default: bf16.")
    exclusive = training["properties"]["learningRate"]
    assert (exclusive["minimum"], exclusive["exclusiveMinimum"]) == (0.0, True)


def test_cel_rules_of_the_shared_runconfig_models_reach_the_crd() -> None:
    spec = _schema("DeepSeekTraining")["properties"]["spec"]["properties"]
    messages = {r["message"] for r in spec["model"]["x-kubernetes-validations"]}
    assert "set exactly one model source: builtin, pvc or uri" in messages
    dataset_rules = {r["message"] for r in spec["dataset"]["x-kubernetes-validations"]}
    assert "set exactly one dataset source: builtin, pvc or uri" in dataset_rules
    assert spec["training"]["properties"]["lora"]["properties"]["targetModules"]["x-kubernetes-list-type"] == "set"


def test_immutability_rules_cover_every_spec_field_but_run_policy() -> None:
    rules = _schema("DeepSeekTraining")["x-kubernetes-validations"]
    guarded = {r["fieldPath"].removeprefix(".spec.") for r in rules if r.get("reason") == "FieldValueForbidden"}
    spec_fields = set(_schema("DeepSeekTraining")["properties"]["spec"]["properties"])
    assert guarded == spec_fields - {"runPolicy"}
    assert all("oldSelf" in r["rule"] for r in rules)


def test_unsupported_unions_are_refused() -> None:
    class Bad(SpecModel):
        value: int | list[int]

    with pytest.raises(SchemaError, match="value"):
        structural(Bad)


def test_int_or_string_keeps_string_bounds() -> None:
    class Q(BaseModel):
        q: int | str

    node = structural(Q)["properties"]["q"]
    assert node["x-kubernetes-int-or-string"] is True
    assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}]
