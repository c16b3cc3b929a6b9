"""`deepseek-worker quantize` end to end on MiniLM fine-tuned on Reuters R8 (real model, real held-out data).

One quantize run (module fixture) publishes an artifact that the tests below examine: INT8 within 1 point of
fp32, ONNX outputs matching torch, the loader's variants, the progress report, and refusal of a tampered
copy. A second run, through the S3 server, exercises the over-budget path.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from deepseek_workers import cli
from deepseek_workers.artifact import open_artifact, read_manifest, write_artifact
from deepseek_workers.errors import BadArtifactError
from deepseek_workers.modelio import load_model
from deepseek_workers.quantization import evaluate as ev
from deepseek_workers.quantization import onnx_export as ox
from deepseek_workers.runconfig import EXIT_BAD_ARTIFACT, EXIT_BAD_DATA, SourceRef
from deepseek_workers.storage import Storage

from tests.fixtures.ml import MAX_LENGTH, FineTunedClassifier

SOURCE = SourceRef(kind="DeepSeekTraining", namespace="team-a", name="r8-minilm", uid="0d4c-11", generation=3)


def publish_trained(model_dir: Path, uri: str) -> None:
    """What the train step leaves behind: <outputUri>/trained/<version>, an artifact with the fp32 variant."""
    with write_artifact(uri, version="v3", source=SOURCE, task="text-classification") as art:
        shutil.copytree(model_dir, art.dir / "fp32", ignore=shutil.ignore_patterns("labels.json"))
        art.add_variant("fp32", "fp32", "hf-safetensors")
        art.metrics = {"fp32": {"trainLoss": 0.5}}


def write_jsonl(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows))


def run_config(output_uri: str, eval_uri: str, **quantization: Any) -> dict[str, Any]:
    return {
        "apiVersion": "deepseek.ai/runconfig-v1",
        "kind": "TrainRun",
        "source": SOURCE.model_dump(by_alias=True),
        "model": {"task": "text-classification", "builtin": {"name": "all-minilm-l6-v2"}},
        "dataset": {"uri": eval_uri, "eval": {"uri": eval_uri}, "maxLength": MAX_LENGTH},
        "quantization": {"method": "int8-dynamic", "maxAccuracyDrop": 0.01, **quantization},
        "outputUri": output_uri,
        "artifactVersion": "v3",
    }


def run_cli(tmp: Path, config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    cfg = tmp / "run.json"
    cfg.write_text(json.dumps(config))
    term = tmp / "termination-log"
    term.unlink(missing_ok=True)
    monkeypatch.setattr(cli, "TERMINATION_LOG", term)
    code = cli.main(["quantize", "--config", str(cfg)])
    return code, term.read_text() if term.exists() else ""


@pytest.fixture(scope="module")
def published(finetuned_minilm_r8: FineTunedClassifier, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("quantize")
    out = tmp / "out"
    # The train step's own artifact (the training engine ran it, tests/fixtures/ml.py), where a TrainRun with
    # quantization enabled leaves it: <outputUri>/trained/<artifactVersion>.
    shutil.copytree(finetuned_minilm_r8.artifact, out / "trained" / "v3")
    eval_file = tmp / "eval.jsonl"
    write_jsonl(eval_file, [(r.text, r.label) for r in finetuned_minilm_r8.eval_rows])
    with pytest.MonkeyPatch.context() as mp:
        code, term = run_cli(tmp, run_config(str(out), f"file://{eval_file}"), mp)
    assert code == 0, term
    return {"uri": str(out / "v3"), "out": out, "tmp": tmp, "eval_file": eval_file}


def test_int8_is_within_one_point_of_fp32(published: dict[str, Any], finetuned_minilm_r8: FineTunedClassifier) -> None:
    art = open_artifact(published["uri"])
    m = art.metrics
    fp32, int8 = m["variants"]["fp32"], m["variants"]["int8"]
    assert m["evalExamples"] == len(finetuned_minilm_r8.eval_rows) == 800
    assert fp32["accuracy"] > 0.75  # a really trained model, not chance
    assert fp32["accuracy"] - int8["accuracy"] <= 0.01
    assert abs(m["quantization"]["accuracyDrop"] - (fp32["accuracy"] - int8["accuracy"])) < 1e-9
    assert int8["published"] is True
    assert m["quantization"]["overBudget"] is False
    assert m["quantization"]["servedVariant"] == "int8"
    assert art.manifest.served_variant == "int8"
    assert not art.manifest.over_budget
    # Linear weights are a quarter of their fp32 size; the embeddings stay fp32.
    assert int8["sizeBytes"] < 0.7 * fp32["sizeBytes"]
    assert m["variants"]["onnx-int8"]["sizeBytes"] < 0.3 * fp32["sizeBytes"]
    for name in ("fp32", "int8", "onnx-fp32", "onnx-int8"):
        v = m["variants"][name]
        assert v["latencyBatch1Ms"] > 0
        assert v["latencyBatch32Ms"] > 0
        assert v["throughputPerSecond"] > 0
        assert 0 <= v["macroF1"] <= 1


def test_manifest_records_source_variants_and_libraries(published: dict[str, Any]) -> None:
    m = read_manifest(published["uri"])
    assert m.source == SOURCE
    assert m.version == "v3"
    assert set(m.variants) == {"fp32", "int8", "onnx-fp32", "onnx-int8"}
    assert m.variants["int8"].format == "int8-safetensors"
    assert m.variants["int8"].info["method"] == "int8-dynamic"
    assert {"torch", "torchao", "transformers", "onnxruntime", "onnx"} <= set(m.libraries)
    assert m.extra["labels"] == sorted(m.extra["labels"])
    assert len(m.extra["labels"]) == 8
    paths = {f.path for f in m.files}
    assert {
        "fp32/model.safetensors",
        "int8/model.safetensors",
        "int8/quantization.json",
        "int8/tokenizer.json",
    } <= paths
    assert {"onnx/model.onnx", "onnx/model-int8.onnx", "metrics.json"} <= paths
    assert not (Path(published["uri"]) / "int8" / "labels.json").exists()


def test_progress_report_says_succeeded_with_metrics(published: dict[str, Any]) -> None:
    report = json.loads((published["out"] / "progress.json").read_text())
    assert report["stage"] == "quantize"
    assert report["state"] == "succeeded"
    assert report["overBudget"] is False
    assert report["artifactUri"] == published["uri"]
    metrics = report["metrics"]
    assert metrics["int8Accuracy"] >= metrics["fp32Accuracy"] - 0.01
    assert metrics["int8SizeBytes"] < metrics["fp32SizeBytes"]
    assert "int8SpeedupBatch32" in metrics
    assert "speed-up" in report["message"]


def test_onnx_outputs_match_torch(published: dict[str, Any]) -> None:
    texts = [json.loads(line)["text"] for line in published["eval_file"].read_text().splitlines()[:96]]
    fp32 = load_model(published["uri"], "fp32")
    onnx32 = load_model(published["uri"], "onnx-fp32")
    onnx8 = load_model(published["uri"], "onnx-int8")
    assert onnx32.runtime == "onnxruntime"
    batches = ev.tokenize_batches(fp32.tokenizer, texts, max_length=MAX_LENGTH)
    pairs = [(b.input_ids, b.attention_mask) for b in batches]
    c32 = ox.check_fp32(fp32.logits, onnx32.logits, pairs)
    assert c32.max_abs_diff <= 1e-3
    c8 = ox.check_int8(fp32.logits, onnx8.logits, pairs)
    assert c8.top1_agreement >= ox.INT8_MIN_AGREEMENT
    assert c8.max_abs_diff > 0  # really INT8, not a copy of the fp32 graph


def test_loader_variants_agree(published: dict[str, Any]) -> None:
    texts = [json.loads(line)["text"] for line in published["eval_file"].read_text().splitlines()[:64]]
    auto = load_model(published["uri"])
    assert auto.variant == "int8"
    assert auto.runtime in ("fbgemm", "torchao")
    assert auto.labels == read_manifest(published["uri"]).extra["labels"]
    torchao = load_model(published["uri"], "int8", runtime="torchao")
    fp32 = load_model(published["uri"], "fp32")
    batches = ev.tokenize_batches(auto.tokenizer, texts, max_length=MAX_LENGTH)
    agree = total = 0
    for b in batches:
        ref = fp32.logits(b.input_ids, b.attention_mask).argmax(-1)
        for other in (auto, torchao):
            agree += int((other.logits(b.input_ids, b.attention_mask).argmax(-1) == ref).sum())
            total += len(ref)
    assert agree / total >= 0.95
    with pytest.raises(BadArtifactError, match="unknown variant 'int4'"):
        load_model(published["uri"], "int4")


def test_plain_model_folder_loads_as_fp32(finetuned_minilm_r8: FineTunedClassifier) -> None:
    m = load_model(finetuned_minilm_r8.path)
    assert m.variant == "fp32"
    assert m.artifact is None
    with pytest.raises(BadArtifactError, match="plain model folder"):
        load_model(finetuned_minilm_r8.path, "int8")


def test_tampered_int8_weights_are_refused(published: dict[str, Any], tmp_path: Path) -> None:
    copy = tmp_path / "v3"
    shutil.copytree(published["uri"], copy)
    weights = copy / "int8" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(BadArtifactError, match=r"sha256 of int8/model\.safetensors"):
        load_model(str(copy), "int8")
    with weights.open("r+b") as f:
        f.truncate(len(data) // 3)
    with pytest.raises(BadArtifactError, match=r"truncated or corrupt: int8/model\.safetensors"):
        load_model(str(copy), "fp32")  # any variant: the whole artifact is verified


def test_rerun_after_publish_is_a_no_op(published: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    before = (Path(published["uri"]) / "manifest.json").read_bytes()
    config = run_config(str(published["out"]), f"file://{published['eval_file']}")
    code, term = run_cli(published["tmp"], config, monkeypatch)
    assert code == 0, term
    assert (Path(published["uri"]) / "manifest.json").read_bytes() == before
    report = json.loads((published["out"] / "progress.json").read_text())
    assert report["state"] == "succeeded"
    assert "already published" in report["message"]


def test_artifact_round_trips_through_s3(published: dict[str, Any], s3_bucket: str, tmp_path: Path) -> None:
    uri = f"{s3_bucket}/models/r8/v3"
    Storage.from_uri(uri).put_dir(Path(published["uri"]), last="manifest.json")
    loaded = load_model(uri, "int8", cache_dir=tmp_path / "cache")
    assert loaded.artifact is not None
    assert loaded.artifact.root.is_relative_to(tmp_path / "cache")
    local = load_model(published["uri"], "int8")
    ids = np.array([[101, 2194, 3893, 2318, 102]], dtype=np.int64)
    mask = np.ones_like(ids)
    assert np.allclose(loaded.logits(ids, mask), local.logits(ids, mask), atol=1e-5)


def test_over_budget_keeps_fp32_and_reports_it(
    published: dict[str, Any],
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A zero budget against labels that fp32 gets all right: any example INT8 decides differently is a loss.

    The evaluation set is the 32 of the 800 held-out examples on which the fp32 model is least decided (smallest margin
    between its top two classes), labelled with fp32's own predictions (a distillation-style set): fp32 scores
    1.0, and INT8's rounding flips some of these close calls, so it scores below 1.0 -- a real, measured drop.
    Input and output live on the S3 server, as in a cluster with object storage.
    """
    fp32 = load_model(published["uri"], "fp32")
    rows = [json.loads(line) for line in published["eval_file"].read_text().splitlines()]
    batches = ev.tokenize_batches(fp32.tokenizer, [r["text"] for r in rows], max_length=MAX_LENGTH)
    logits = np.zeros((len(rows), len(fp32.labels)), dtype=np.float32)
    for b in batches:
        logits[b.rows] = fp32.logits(b.input_ids, b.attention_mask)
    top2 = np.sort(logits, axis=1)[:, -2:]
    closest = np.argsort(top2[:, 1] - top2[:, 0])[:32]
    pseudo = tmp_path / "pseudo.jsonl"
    write_jsonl(pseudo, [(rows[i]["text"], fp32.labels[int(logits[i].argmax())]) for i in closest])

    out = f"{s3_bucket}/trainings/r8"
    trained_dir = Path(published["uri"]) / "fp32"
    publish_trained(trained_dir, f"{out}/trained/v3")
    Storage.from_uri(out).put_file(pseudo, "data/eval.jsonl")
    monkeypatch.setenv("DEEPSEEK_MODEL_CACHE", str(tmp_path / "cache"))
    caplog.set_level(logging.INFO, logger="deepseek_workers")
    config = run_config(out, f"{out}/data/eval.jsonl", maxAccuracyDrop=0.0, exportOnnx=False)
    code, term = run_cli(tmp_path, config, monkeypatch)
    assert code == 0, term

    art = open_artifact(f"{out}/v3", cache_dir=tmp_path / "check")
    m = art.metrics
    assert m["variants"]["fp32"]["accuracy"] == 1.0
    assert m["variants"]["int8"]["accuracy"] < 1.0, "INT8 agreed with fp32 on every example: no loss to detect"
    assert m["quantization"]["overBudget"] is True
    assert m["quantization"]["reason"] == "QuantizationOverBudget"
    assert m["quantization"]["servedVariant"] == "fp32"
    assert m["variants"]["int8"]["published"] is False
    assert "QuantizationOverBudget" in m["variants"]["int8"]["note"]
    assert art.manifest.over_budget is True
    assert art.manifest.served_variant == "fp32"
    assert "int8" not in art.manifest.variants
    assert not any(f.path.startswith("int8/") for f in art.manifest.files), "a worse model must not be published"

    reports = [
        json.loads(r.getMessage().split(" ", 1)[1]) for r in caplog.records if r.getMessage().startswith("progress {")
    ]
    final = reports[-1]
    assert final["state"] == "succeeded"
    assert final["overBudget"] is True
    assert final["message"].startswith("QuantizationOverBudget")

    served = load_model(f"{out}/v3", "int8", cache_dir=tmp_path / "serve")  # what a server asking for int8 gets
    assert served.variant == "fp32"
    assert served.fallback_reason is not None
    assert "QuantizationOverBudget" in served.fallback_reason
    with pytest.raises(BadArtifactError, match="has no variant 'int8'"):
        load_model(f"{out}/v3", "int8", allow_fallback=False, cache_dir=tmp_path / "serve")


def test_missing_trained_model_exits_66(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    eval_file = tmp_path / "eval.jsonl"
    write_jsonl(eval_file, [("oil prices rose", "crude")])
    code, term = run_cli(tmp_path, run_config(str(tmp_path / "out"), f"file://{eval_file}"), monkeypatch)
    assert code == EXIT_BAD_ARTIFACT
    assert "trained/v3" in term
    assert "no manifest.json" in term
    report = json.loads((tmp_path / "out" / "progress.json").read_text())
    assert report["state"] == "failed"


def test_unknown_eval_label_exits_65(
    published: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    shutil.copytree(published["out"] / "trained", out / "trained")
    eval_file = tmp_path / "eval.jsonl"
    write_jsonl(eval_file, [("oil prices rose", "crude"), ("the patient has a fever", "medicine")])
    code, term = run_cli(tmp_path, run_config(str(out), f"file://{eval_file}"), monkeypatch)
    assert code == EXIT_BAD_DATA
    assert "medicine" in term
    assert not (out / "v3").exists()


def test_quantization_disabled_publishes_fp32_only(
    published: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    shutil.copytree(published["out"] / "trained", out / "trained")
    eval_file = tmp_path / "eval.jsonl"
    rows = [json.loads(line) for line in published["eval_file"].read_text().splitlines()[:32]]
    write_jsonl(eval_file, [(r["text"], r["label"]) for r in rows])
    config = run_config(str(out), f"file://{eval_file}", enabled=False, exportOnnx=False)
    code, term = run_cli(tmp_path, config, monkeypatch)
    assert code == 0, term
    art = open_artifact(str(out / "v3"))
    assert set(art.manifest.variants) == {"fp32"}
    assert art.manifest.served_variant == "fp32"
    assert art.manifest.over_budget is False
    assert art.metrics["quantization"]["enabled"] is False
    assert set(art.metrics["variants"]) == {"fp32"}
    assert "quantization disabled" in json.loads((out / "progress.json").read_text())["message"]
