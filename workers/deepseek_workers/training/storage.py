"""Directory trees at an output location: a local path (a mounted PVC), file:// or s3:// (through fsspec).

Writes are atomic in the way each medium allows: locally a tree is written into a hidden temporary sibling and
renamed into place; on an object store every file is uploaded before the completion marker the reader looks
for (object stores have no atomic rename).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def local_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def _fs(uri: str) -> tuple[Any, str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def exists(uri: str) -> bool:
    if not is_remote(uri):
        return local_path(uri).exists()
    fs, path = _fs(uri)
    return bool(fs.exists(path))


def read_text(uri: str) -> str:
    if not is_remote(uri):
        return local_path(uri).read_text(encoding="utf-8")
    fs, path = _fs(uri)
    with fs.open(path, "rb") as f:
        data: bytes = f.read()
    return data.decode("utf-8")


def list_children(uri: str) -> list[str]:
    """Names of the entries directly under `uri` (empty when it does not exist)."""
    if not is_remote(uri):
        p = local_path(uri)
        return sorted(c.name for c in p.iterdir()) if p.is_dir() else []
    fs, path = _fs(uri)
    if not fs.exists(path):
        return []
    return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(path, detail=False))


def remove_tree(uri: str) -> None:
    if not is_remote(uri):
        shutil.rmtree(local_path(uri), ignore_errors=True)
        return
    fs, path = _fs(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def fsync_tree(root: Path) -> None:
    """Flush every file under `root` to disk, so a rename never exposes half-written data after a crash."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class StagedTree:
    """A directory to fill locally, then `commit()` to `dest` (a local path or a URI) in one step.

    `marker` names the file written last (the reader's completeness check): locally the whole tree appears by
    rename; remotely every other file is uploaded first and the marker last.
    """

    def __init__(self, dest: str, marker: str) -> None:
        self.dest = dest
        self.marker = marker
        if is_remote(dest):
            self.path = Path(tempfile.mkdtemp(prefix="deepseek-stage-"))
        else:
            final = local_path(dest)
            final.parent.mkdir(parents=True, exist_ok=True)
            self.path = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
            self.path.mkdir()

    def commit(self) -> None:
        if not (self.path / self.marker).is_file():
            raise RuntimeError(f"staged tree has no {self.marker}")
        if is_remote(self.dest):
            self._upload()
            shutil.rmtree(self.path, ignore_errors=True)
            return
        fsync_tree(self.path)
        final = local_path(self.dest)
        if final.exists():
            # Replace an older tree of the same name: move it aside first so the new one appears by rename.
            old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            final.rename(old)
            self.path.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.path.rename(final)

    def _upload(self) -> None:
        fs, root = _fs(self.dest)
        if fs.exists(root):
            fs.rm(root, recursive=True)
        files = sorted(p for p in self.path.rglob("*") if p.is_file() and p.name != self.marker)
        for p in [*files, self.path / self.marker]:
            fs.put_file(str(p), f"{root}/{p.relative_to(self.path).as_posix()}")

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def download_tree(uri: str, dest: Path) -> Path:
    """Copy a remote tree to `dest` (a local directory) and return it; local trees are returned as they are."""
    if not is_remote(uri):
        return local_path(uri)
    fs, path = _fs(uri)
    dest.mkdir(parents=True, exist_ok=True)
    for entry in fs.find(path):
        rel = str(entry)[len(path.rstrip("/")) + 1 :]
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(entry, str(target))
    return dest
