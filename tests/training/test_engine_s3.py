"""Object-store output (a real S3 HTTP server): data in, checkpoints and artifact out, resume from S3."""

from __future__ import annotations

import json
from pathlib import Path

from deepseek_workers.artifact import open_artifact
from deepseek_workers.storage import Storage
from deepseek_workers.training import run_training

from tests.fixtures.s3 import S3Server
from tests.training.helpers import make_config


def test_training_with_s3_data_checkpoints_and_artifact(s3_bucket: str, s3_server: S3Server, tmp_path: Path) -> None:
    rows = [
        {"text": f"the market {'rose' if i % 2 else 'fell'} sharply on day {i}", "label": "ud"[i % 2]}
        for i in range(80)
    ]
    store = Storage.from_uri(s3_bucket + "/data")
    store.write_text("train.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    out = f"{s3_bucket}/runs/r1"
    cfg = make_config(
        tmp_path,
        outputUri=out,
        quantization={"enabled": True},  # a quantize step follows: the train step writes trained/<version>
        dataset={"builtin": None, "uri": f"{s3_bucket}/data/train.jsonl", "maxLength": 16},
        training={"maxSteps": 4, "checkpointEverySteps": 2, "batchSize": 8},
    )
    run_training(cfg)
    runs = Storage.from_uri(out)
    assert runs.is_file("checkpoints/step-4/COMPLETE")
    assert runs.is_file("checkpoints/step-2/COMPLETE")
    art = open_artifact(f"{out}/trained/v1")  # downloads and verifies every file's sha256
    assert art.manifest.extra["steps"] == 4
    assert (art.variant_path("fp32") / "model.safetensors").is_file()
    assert set(art.metrics) == {"fp32", "training"}

    # The pod died after its last checkpoint but before publishing: the next one resumes from S3.
    runs.remove("trained")
    run_training(cfg)
    again = open_artifact(f"{out}/trained/v1")
    assert again.manifest.extra["steps"] == 4
    assert again.metrics["fp32"] == art.metrics["fp32"]  # nothing retrained: same weights, same evaluation
    assert json.loads(runs.read_text("checkpoints/step-4/COMPLETE"))["step"] == 4
