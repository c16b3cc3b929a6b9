"""Storage on a local path and on a real S3-compatible server (moto, loopback): round trips and atomic publish."""

from __future__ import annotations

from pathlib import Path

import pytest
from deepseek_workers.storage import AlreadyPublishedError, Storage, StorageError

from tests.fixtures.s3 import S3Server


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _make_src(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 10)
    (src / "sub" / "deeper" / "c.json").write_text('{"c": 1}')
    return src


def _crashing_stage(store: Storage, rel: str) -> None:
    with store.staging_dir(rel, marker="manifest.json") as staging:
        (staging / "weights.bin").write_bytes(b"half")
        raise RuntimeError("writer crashed")


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("", "empty"),
        ("relative/path", "absolute"),
        ("http://example.com/x", "unsupported"),
        ("s3:///no-bucket", "no bucket"),
    ],
)
def test_bad_locations_are_named(uri: str, needle: str) -> None:
    with pytest.raises(StorageError, match=needle):
        Storage.from_uri(uri)


def test_paths_cannot_escape_the_root(tmp_path: Path) -> None:
    store = Storage.from_uri(str(tmp_path))
    with pytest.raises(StorageError, match=r"\.\."):
        store.write_text("../escape.txt", "x")
    with pytest.raises(StorageError, match="relative"):
        store.read_bytes("/etc/passwd")
    assert not (tmp_path.parent / "escape.txt").exists()


def test_file_uri_is_local(tmp_path: Path) -> None:
    store = Storage.from_uri(f"file://{tmp_path}")
    store.write_text("x/y.txt", "hello")
    assert store.local_path("x/y.txt") == tmp_path / "x" / "y.txt"
    assert (tmp_path / "x" / "y.txt").read_text() == "hello"


def test_local_round_trip(tmp_path: Path) -> None:
    src = _make_src(tmp_path)
    store = Storage.from_uri(str(tmp_path / "dest"))
    store.put_dir(src, "copy")
    assert store.list_files("copy") == ["a.txt", "sub/b.bin", "sub/deeper/c.json"]
    assert store.exists("copy/sub/b.bin")
    assert store.is_file("copy/a.txt")
    assert not store.is_file("copy/sub")
    assert store.size("copy/sub/b.bin") == 2560
    back = tmp_path / "back"
    store.child("copy").get_dir("", back)
    assert _tree(back) == _tree(src)
    store.remove("copy/sub")
    assert store.list_files("copy") == ["a.txt"]
    store.remove("copy/does-not-exist")  # missing is fine


def test_local_write_is_atomic_replace(tmp_path: Path) -> None:
    store = Storage.from_uri(str(tmp_path))
    store.write_text("f.json", "old")
    store.write_text("f.json", "new")
    assert store.read_text("f.json") == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temporary files left behind


def test_local_staging_publishes_only_on_success(tmp_path: Path) -> None:
    store = Storage.from_uri(str(tmp_path / "out"))
    with store.staging_dir("v1", marker="manifest.json") as staging:
        (staging / "weights.bin").write_bytes(b"w" * 100)
        assert not store.exists("v1"), "the destination must not appear before the writer finished"
        (staging / "manifest.json").write_text("{}")
    assert store.list_files("v1") == ["manifest.json", "weights.bin"]
    # Only the published directory remains: no staging siblings.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["v1"]

    with pytest.raises(RuntimeError, match="crashed"):
        _crashing_stage(store, "v2")
    assert not store.exists("v2")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["v1"]


def test_staging_without_marker_is_not_published(tmp_path: Path) -> None:
    store = Storage.from_uri(str(tmp_path))
    with (
        pytest.raises(StorageError, match=r"did not create manifest\.json"),
        store.staging_dir("v1", marker="manifest.json") as staging,
    ):
        (staging / "weights.bin").write_bytes(b"w")
    assert not store.exists("v1")


def test_published_directory_is_not_overwritten_unless_asked(tmp_path: Path) -> None:
    store = Storage.from_uri(str(tmp_path))
    with store.staging_dir("v1", marker="m") as staging:
        (staging / "m").write_text("first")
    with pytest.raises(AlreadyPublishedError, match="already published"), store.staging_dir("v1", marker="m"):
        pass
    with store.staging_dir("v1", marker="m", overwrite=True) as staging:
        (staging / "m").write_text("second")
    assert store.read_text("v1/m") == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]


def test_incomplete_leftover_is_replaced(tmp_path: Path) -> None:
    store = Storage.from_uri(str(tmp_path))
    store.write_text("v1/stale.bin", "left by a crashed writer")  # no marker: incomplete
    with store.staging_dir("v1", marker="m") as staging:
        (staging / "m").write_text("done")
    assert store.list_files("v1") == ["m"]


def test_s3_round_trip(tmp_path: Path, s3_bucket: str) -> None:
    src = _make_src(tmp_path)
    store = Storage.from_uri(f"{s3_bucket}/prefix")
    assert not store.is_local
    assert store.local_path() is None
    order = store.put_dir(src, "copy", last="a.txt")
    assert order[-1] == "a.txt"
    assert store.list_files("copy") == ["a.txt", "sub/b.bin", "sub/deeper/c.json"]
    assert store.size("copy/sub/b.bin") == 2560
    assert store.read_text("copy/sub/deeper/c.json") == '{"c": 1}'
    back = tmp_path / "back"
    store.child("copy").get_dir("", back)
    assert _tree(back) == _tree(src)
    store.remove("copy/sub")
    assert store.list_files("copy") == ["a.txt"]
    with pytest.raises(FileNotFoundError):
        store.read_bytes("copy/missing")


def test_s3_staging_uploads_marker_last_and_nothing_on_failure(
    tmp_path: Path, s3_bucket: str, s3_server: S3Server
) -> None:
    store = Storage.from_uri(f"{s3_bucket}/runs")
    uploaded: list[str] = []
    real_put = store.put_file

    def recording_put(src: Path, rel: str) -> None:
        uploaded.append(rel)
        real_put(src, rel)

    store.put_file = recording_put  # type: ignore[method-assign]
    with store.staging_dir("v1", marker="manifest.json") as staging:
        (staging / "z-last-alphabetically.bin").write_bytes(b"z")
        (staging / "model" / "w.bin").parent.mkdir()
        (staging / "model" / "w.bin").write_bytes(b"w" * 10)
        (staging / "manifest.json").write_text("{}")
        assert not store.exists("v1")
    assert uploaded[-1] == "v1/manifest.json"
    assert sorted(uploaded) == ["v1/manifest.json", "v1/model/w.bin", "v1/z-last-alphabetically.bin"]

    with pytest.raises(RuntimeError, match="crashed"):
        _crashing_stage(store, "v2")
    assert not store.exists("v2")
    listed = s3_server.client().list_objects_v2(Bucket=s3_bucket.removeprefix("s3://"), Prefix="runs/v2")
    assert listed.get("KeyCount", 0) == 0


def test_s3_republish_removes_stale_objects(s3_bucket: str) -> None:
    store = Storage.from_uri(f"{s3_bucket}/runs")
    store.write_text("v1/stale.bin", "from an attempt that crashed")
    with store.staging_dir("v1", marker="m") as staging:
        (staging / "m").write_text("done")
    assert store.list_files("v1") == ["m"]
    with pytest.raises(AlreadyPublishedError), store.staging_dir("v1", marker="m"):
        pass


def test_s3_bucket_root_is_refused(s3_bucket: str) -> None:
    store = Storage.from_uri(s3_bucket)
    with pytest.raises(StorageError, match="bucket root"), store.staging_dir("", marker="m"):
        pass


def test_s3_unreachable_server_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    store = Storage.from_uri("s3://bucket/prefix")
    with pytest.raises(StorageError, match=r"s3://bucket/prefix/x"):
        store.read_bytes("x")
