"""The artifact: manifest contents, atomic publication, and refusal of anything corrupt, truncated or partial."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from deepseek_workers.artifact import (
    FORMAT_VERSION,
    AlreadyPublishedError,
    ArtifactBuilder,
    is_complete,
    open_artifact,
    read_manifest,
    write_artifact,
)
from deepseek_workers.errors import BadArtifactError
from deepseek_workers.runconfig import EXIT_BAD_ARTIFACT, SourceRef

from tests.fixtures.s3 import S3Server

SOURCE = SourceRef(kind="DeepSeekTraining", namespace="team-a", name="r8", uid="1234-abcd", generation=3)
WEIGHTS = bytes(range(256)) * 4096  # 1 MiB


def _fill(art: ArtifactBuilder) -> None:
    (art.dir / "fp32").mkdir()
    (art.dir / "fp32" / "model.safetensors").write_bytes(WEIGHTS)
    (art.dir / "fp32" / "config.json").write_text('{"model_type": "bert"}')
    (art.dir / "onnx").mkdir()
    (art.dir / "onnx" / "model.onnx").write_bytes(b"onnx" * 100)
    art.add_variant("fp32", "fp32", "hf-safetensors")
    art.add_variant("onnx-fp32", "onnx/model.onnx", "onnx", info={"opset": 17})
    art.served_variant = "fp32"
    art.metrics = {"fp32": {"accuracy": 0.9}}
    art.extra = {"labels": ["a", "b"]}


def _publish(uri: str) -> None:
    with write_artifact(uri, version="v3", source=SOURCE, task="text-classification") as art:
        _fill(art)


def test_manifest_lists_every_file_with_hash_size_source_and_versions(tmp_path: Path) -> None:
    uri = str(tmp_path / "out" / "v3")
    _publish(uri)
    m = read_manifest(uri)
    assert m.format_version == FORMAT_VERSION
    assert m.version == "v3"
    assert m.source == SOURCE
    assert m.served_variant == "fp32"
    assert not m.over_budget
    paths = [f.path for f in m.files]
    assert paths == ["fp32/config.json", "fp32/model.safetensors", "metrics.json", "onnx/model.onnx"]
    weights = next(f for f in m.files if f.path == "fp32/model.safetensors")
    assert weights.size == len(WEIGHTS)
    import hashlib

    assert weights.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert m.total_size == sum(f.size for f in m.files)
    assert {"python", "deepseek-operator", "torch"} <= set(m.libraries)
    assert m.variants["onnx-fp32"].info == {"opset": 17}
    assert m.created_at.endswith("Z")
    raw = json.loads((tmp_path / "out" / "v3" / "manifest.json").read_text())
    assert raw["source"]["uid"] == "1234-abcd"
    assert raw["servedVariant"] == "fp32"  # camelCase on the wire, like the run config

    art = open_artifact(uri)
    assert art.metrics == {"fp32": {"accuracy": 0.9}}
    assert art.variant_path("fp32") == tmp_path / "out" / "v3" / "fp32"
    assert art.manifest.extra == {"labels": ["a", "b"]}
    with pytest.raises(BadArtifactError, match=r"no variant 'int8'.*fp32, onnx-fp32"):
        art.variant("int8")


def _crashing_write(uri: str) -> None:
    with write_artifact(uri, version="v1", source=SOURCE, task="text-classification") as art:
        _fill(art)
        raise RuntimeError("killed mid-write")


def _bad_served_variant(uri: str) -> None:
    with write_artifact(uri, version="v1", source=SOURCE, task="causal-lm") as art:
        _fill(art)
        art.served_variant = "int8"


def test_writer_crash_publishes_nothing(tmp_path: Path) -> None:
    uri = str(tmp_path / "v1")
    with pytest.raises(RuntimeError, match="mid-write"):
        _crashing_write(uri)
    assert not (tmp_path / "v1").exists()
    assert list(tmp_path.iterdir()) == []


def test_builder_refuses_inconsistent_variants(tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match="does not exist"),
        write_artifact(str(tmp_path / "v1"), version="v1", source=SOURCE, task="causal-lm") as art,
    ):
        art.add_variant("int8", "int8", "int8-safetensors")
    with pytest.raises(ValueError, match="served variant 'int8'"):
        _bad_served_variant(str(tmp_path / "v1"))
    assert not (tmp_path / "v1").exists()


def test_republishing_needs_overwrite(tmp_path: Path) -> None:
    uri = str(tmp_path / "v3")
    _publish(uri)
    with pytest.raises(AlreadyPublishedError):
        _publish(uri)
    with write_artifact(uri, version="v3", source=SOURCE, task="text-classification", overwrite=True) as art:
        _fill(art)
        art.metrics = {"fp32": {"accuracy": 0.95}}
    assert open_artifact(uri).metrics["fp32"]["accuracy"] == 0.95


def _tamper(root: Path) -> None:
    p = root / "fp32" / "model.safetensors"
    data = bytearray(p.read_bytes())
    data[12345] ^= 0xFF  # same size, different content
    p.write_bytes(bytes(data))


def _truncate(root: Path) -> None:
    p = root / "fp32" / "model.safetensors"
    p.write_bytes(p.read_bytes()[: len(WEIGHTS) // 2])


def _delete_file(root: Path) -> None:
    (root / "onnx" / "model.onnx").unlink()


def _delete_manifest(root: Path) -> None:
    (root / "manifest.json").unlink()


def _corrupt_manifest(root: Path) -> None:
    p = root / "manifest.json"
    p.write_text(p.read_text()[:100])


def _unlisted_file(root: Path) -> None:
    (root / "fp32" / "pytorch_model.bin").write_bytes(b"pickle that nobody listed")


def _escaping_manifest(root: Path) -> None:
    p = root / "manifest.json"
    m = json.loads(p.read_text())
    m["files"][0]["path"] = "../../etc/passwd"
    p.write_text(json.dumps(m))


def _future_format(root: Path) -> None:
    p = root / "manifest.json"
    m = json.loads(p.read_text())
    m["formatVersion"] = "deepseek.ai/artifact-v9"
    p.write_text(json.dumps(m))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_tamper, r"corrupt or was modified: sha256 of fp32/model\.safetensors"),
        (_truncate, r"truncated or corrupt: fp32/model\.safetensors is 524288 bytes, manifest\.json says 1048576"),
        (_delete_file, r"incomplete: onnx/model\.onnx \(listed in manifest\.json\) is missing"),
        (_delete_manifest, r"missing or incomplete: it has no manifest\.json"),
        (_corrupt_manifest, r"corrupt manifest\.json \(not valid JSON"),
        (_unlisted_file, r"contains fp32/pytorch_model\.bin, which manifest\.json does not list"),
        (_escaping_manifest, r"invalid manifest\.json: files\.0\.path: .*relative path inside the artifact"),
        (_future_format, r"format 'deepseek\.ai/artifact-v9'; this worker reads 'deepseek\.ai/artifact-v1'"),
    ],
)
def test_damaged_local_artifact_is_refused(tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    uri = str(tmp_path / "v3")
    _publish(uri)
    assert is_complete(uri)
    damage(tmp_path / "v3")
    with pytest.raises(BadArtifactError, match=message) as info:
        open_artifact(uri)
    assert info.value.exit_code == EXIT_BAD_ARTIFACT
    assert uri in info.value.message


def test_size_is_checked_even_without_hashing(tmp_path: Path) -> None:
    uri = str(tmp_path / "v3")
    _publish(uri)
    _truncate(tmp_path / "v3")
    assert not is_complete(uri)
    with pytest.raises(BadArtifactError, match="truncated"):
        open_artifact(uri, check_hashes=False)


def test_artifact_round_trips_through_s3(tmp_path: Path, s3_bucket: str, s3_server: S3Server) -> None:
    uri = f"{s3_bucket}/trainings/r8/v3"
    _publish(uri)
    assert is_complete(uri)
    cache = tmp_path / "cache"
    art = open_artifact(uri, cache_dir=cache)
    assert art.root.is_relative_to(cache)
    assert (art.variant_path("fp32") / "model.safetensors").read_bytes() == WEIGHTS
    assert art.metrics == {"fp32": {"accuracy": 0.9}}
    assert art.manifest.source == SOURCE
    # A second open reuses the verified download.
    assert open_artifact(uri, cache_dir=cache).root == art.root

    client = s3_server.client()
    bucket = s3_bucket.removeprefix("s3://")
    key = "trainings/r8/v3/fp32/model.safetensors"
    client.put_object(Bucket=bucket, Key=key, Body=WEIGHTS[:-1] + b"\x00")
    with pytest.raises(BadArtifactError, match=r"sha256 of fp32/model\.safetensors"):
        open_artifact(uri, cache_dir=tmp_path / "cache2")
    assert not (tmp_path / "cache2").exists() or not any(
        p.name == "manifest.json" for p in (tmp_path / "cache2").rglob("*")
    ), "a failed download must not leave a cache entry behind"

    client.put_object(Bucket=bucket, Key=key, Body=WEIGHTS[:1000])
    assert not is_complete(uri)
    with pytest.raises(BadArtifactError, match="truncated"):
        open_artifact(uri, cache_dir=tmp_path / "cache3")

    client.put_object(Bucket=bucket, Key="trainings/r8/v3/extra.pkl", Body=b"x")
    with pytest.raises(BadArtifactError, match=r"contains extra\.pkl"):
        open_artifact(uri, cache_dir=tmp_path / "cache4")

    client.delete_object(Bucket=bucket, Key="trainings/r8/v3/manifest.json")
    assert not is_complete(uri)
    with pytest.raises(BadArtifactError, match=r"no manifest\.json"):
        open_artifact(uri, cache_dir=tmp_path / "cache5")


def test_modules_import_without_torch() -> None:
    code = (
        "import sys, deepseek_workers.artifact, deepseek_workers.storage\n"
        "bad = [m for m in ('torch', 's3fs', 'fsspec', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
