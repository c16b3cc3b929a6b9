"""Where artifacts live: a local (or PVC-mounted) path, or an ``s3://bucket/prefix`` URI through fsspec/s3fs.

A ``Storage`` is rooted at one location; every method takes paths relative to that root ("" is the root).
Torch-free, and fsspec/s3fs are imported only for s3:// URIs, so the operator can read manifests with its
small image.

Publishing a directory is atomic for readers that trust the manifest (see docs/artifact.md):

- local: the files are written into a temporary sibling on the same filesystem and renamed into place, so
  the final path either does not exist or is complete;
- s3: object stores have no rename, so every file is uploaded first and the file named ``last`` (the
  manifest) after them; a prefix without its manifest is incomplete and loaders refuse it.

S3 settings come from the standard AWS environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_REGION) plus AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL for S3-compatible stores (MinIO, Ceph, moto).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse


class StorageError(Exception):
    """A storage location is malformed, unreachable, or an operation on it failed."""


class AlreadyPublishedError(StorageError):
    """The destination already holds a complete (published) directory and overwrite was not requested."""


def _clean_relative(rel: str) -> str:
    """Normalise a relative path and refuse anything that would escape the storage root."""
    if rel in ("", "."):
        return ""
    parts = [p for p in PurePosixPath(rel).parts if p not in ("", ".")]
    if rel.startswith("/") or any(p == ".." for p in parts):
        raise StorageError(f"path {rel!r} must be relative and must not contain '..'")
    return "/".join(parts)


def s3_storage_options() -> dict[str, Any]:
    """s3fs options from the environment: an explicit endpoint for S3-compatible stores, no listing cache."""
    opts: dict[str, Any] = {"use_listings_cache": False, "skip_instance_cache": True}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["endpoint_url"] = endpoint
    return opts


class Storage:
    """Files under one root location. Create with ``Storage.from_uri``."""

    def __init__(self, uri: str, *, local_root: Path | None, fs: Any = None, fs_root: str = "") -> None:
        self.uri = uri.rstrip("/")
        self._local_root = local_root
        self._fs = fs
        self._fs_root = fs_root.rstrip("/")

    # -- construction -------------------------------------------------------------------------------------

    @classmethod
    def from_uri(cls, uri: str, **storage_options: Any) -> Storage:
        """A local absolute path, ``file:///abs/path`` or ``s3://bucket[/prefix]``."""
        if not uri:
            raise StorageError("storage location is empty; expected an absolute path, file:///path or s3://bucket")
        parsed = urlparse(uri)
        if parsed.scheme in ("", "file"):
            path = Path(unquote(parsed.path) if parsed.scheme == "file" else uri)
            if not path.is_absolute():
                raise StorageError(f"local storage location {uri!r} must be an absolute path")
            return cls(str(path), local_root=path)
        if parsed.scheme == "s3":
            if not parsed.netloc:
                raise StorageError(f"s3 location {uri!r} has no bucket; expected s3://bucket/prefix")
            try:
                import s3fs
            except ImportError:  # pragma: no cover - the worker image always has it
                raise StorageError("s3:// locations need the s3fs package") from None
            options = {**s3_storage_options(), **storage_options}
            fs = s3fs.S3FileSystem(**options)
            root = f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
            return cls(f"s3://{root}", local_root=None, fs=fs, fs_root=root)
        raise StorageError(f"unsupported storage location {uri!r}; expected an absolute path, file:// or s3://")

    # -- paths ----------------------------------------------------------------------------------------------

    @property
    def is_local(self) -> bool:
        return self._local_root is not None

    def child(self, rel: str) -> Storage:
        """A Storage rooted at ``rel`` below this one (sharing the same connection)."""
        rel = _clean_relative(rel)
        if self._local_root is not None:
            path = self._local_root / rel if rel else self._local_root
            return Storage(str(path), local_root=path)
        root = f"{self._fs_root}/{rel}" if rel else self._fs_root
        return Storage(f"s3://{root}", local_root=None, fs=self._fs, fs_root=root)

    def local_path(self, rel: str = "") -> Path | None:
        """The local filesystem path of ``rel``, or None for object storage."""
        if self._local_root is None:
            return None
        rel = _clean_relative(rel)
        return self._local_root / rel if rel else self._local_root

    def _remote(self, rel: str) -> str:
        rel = _clean_relative(rel)
        return f"{self._fs_root}/{rel}" if rel else self._fs_root

    def _wrap(self, action: str, rel: str, err: Exception) -> StorageError:
        where = f"{self.uri}/{rel}" if rel else self.uri
        return StorageError(f"cannot {action} {where}: {err}")

    # -- queries --------------------------------------------------------------------------------------------

    def exists(self, rel: str = "") -> bool:
        local = self.local_path(rel)
        if local is not None:
            return local.exists()
        try:
            return bool(self._fs.exists(self._remote(rel)))
        except Exception as err:  # s3fs/botocore raise many kinds
            raise self._wrap("check", rel, err) from err

    def is_file(self, rel: str) -> bool:
        local = self.local_path(rel)
        if local is not None:
            return local.is_file()
        try:
            return bool(self._fs.isfile(self._remote(rel)))
        except Exception as err:
            raise self._wrap("check", rel, err) from err

    def list_files(self, rel: str = "") -> list[str]:
        """Every file below ``rel`` (recursively), as sorted paths relative to ``rel``."""
        local = self.local_path(rel)
        if local is not None:
            if not local.is_dir():
                return []
            return sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
        base = self._remote(rel)
        try:
            found = self._fs.find(base)
        except FileNotFoundError:
            return []
        except Exception as err:
            raise self._wrap("list", rel, err) from err
        return sorted(str(PurePosixPath(f).relative_to(base)) for f in found if str(f) != base)

    def size(self, rel: str) -> int:
        local = self.local_path(rel)
        try:
            if local is not None:
                return local.stat().st_size
            return int(self._fs.size(self._remote(rel)))
        except Exception as err:
            raise self._wrap("stat", rel, err) from err

    # -- reading --------------------------------------------------------------------------------------------

    def read_bytes(self, rel: str) -> bytes:
        local = self.local_path(rel)
        try:
            if local is not None:
                return local.read_bytes()
            return bytes(self._fs.cat_file(self._remote(rel)))
        except FileNotFoundError:
            raise
        except Exception as err:
            raise self._wrap("read", rel, err) from err

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def get_file(self, rel: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        local = self.local_path(rel)
        try:
            if local is not None:
                shutil.copyfile(local, dest)
            else:
                self._fs.get_file(self._remote(rel), str(dest))
        except FileNotFoundError:
            raise
        except Exception as err:
            raise self._wrap("download", rel, err) from err

    def get_dir(self, rel: str, dest: Path) -> list[str]:
        """Copy every file below ``rel`` into ``dest``; returns the relative paths copied."""
        files = self.list_files(rel)
        prefix = _clean_relative(rel)
        for f in files:
            self.get_file(f"{prefix}/{f}" if prefix else f, dest / f)
        return files

    # -- writing --------------------------------------------------------------------------------------------

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write one file; a reader sees the old content or the new one, never half (rename / single PUT)."""
        local = self.local_path(rel)
        try:
            if local is not None:
                local.parent.mkdir(parents=True, exist_ok=True)
                tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.tmp")
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, local)
            else:
                self._fs.pipe_file(self._remote(rel), data)
        except Exception as err:
            raise self._wrap("write", rel, err) from err

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def put_file(self, src: Path, rel: str) -> None:
        local = self.local_path(rel)
        try:
            if local is not None:
                local.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, local)
            else:
                self._fs.put_file(str(src), self._remote(rel))
        except Exception as err:
            raise self._wrap("upload", rel, err) from err

    def put_dir(self, src: Path, rel: str = "", *, last: str | None = None) -> list[str]:
        """Copy every file below ``src`` to ``rel``; the file ``last`` (relative to src), if any, goes last."""
        files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
        ordered = [f for f in files if f != last] + ([last] if last in files else [])
        prefix = _clean_relative(rel)
        for f in ordered:
            self.put_file(src / f, f"{prefix}/{f}" if prefix else f)
        return ordered

    def remove(self, rel: str = "") -> None:
        """Delete a file or a directory tree; missing is fine."""
        local = self.local_path(rel)
        try:
            if local is not None:
                if local.is_dir() and not local.is_symlink():
                    shutil.rmtree(local)
                else:
                    local.unlink(missing_ok=True)
            elif self._fs.exists(self._remote(rel)):
                self._fs.rm(self._remote(rel), recursive=True)
        except Exception as err:
            raise self._wrap("delete", rel, err) from err

    # -- atomic publication ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def staging_dir(self, rel: str, *, marker: str, overwrite: bool = False) -> Iterator[Path]:
        """Yield a local directory to fill; on a clean exit it is published at ``rel`` atomically.

        ``marker`` is the file (relative to the directory) whose presence means "complete" -- the manifest. It
        is uploaded last to object storage. A complete destination is refused (AlreadyPublishedError) unless
        ``overwrite``; an incomplete one (left by a crashed writer) is replaced. On an exception nothing is
        published and the staging directory is removed.
        """
        rel = _clean_relative(rel)
        if self._local_root is None and "/" not in self._remote(rel):
            raise StorageError(f"cannot publish at the bucket root {self.uri}; use s3://bucket/prefix")
        dest_marker = f"{rel}/{marker}" if rel else marker
        if self.exists(dest_marker) and not overwrite:
            raise AlreadyPublishedError(f"{self.uri}/{rel} is already published (it has {marker})")
        local_dest = self.local_path(rel)
        if local_dest is not None:
            # Stage next to the destination so that the final rename stays on one filesystem.
            local_dest.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{local_dest.name}.staging-", dir=local_dest.parent))
        else:
            staging = Path(tempfile.mkdtemp(prefix="deepseek-staging-"))
        try:
            yield staging
            if not (staging / marker).is_file():
                raise StorageError(f"cannot publish {self.uri}/{rel}: the writer did not create {marker}")
            if local_dest is not None:
                self._publish_local(staging, local_dest)
            else:
                self._publish_remote(staging, rel, marker)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _publish_local(self, staging: Path, dest: Path) -> None:
        for f in staging.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        try:
            if dest.exists():
                # rename() cannot replace a non-empty directory: move the old one aside first.
                trash = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
                dest.rename(trash)
                staging.rename(dest)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                staging.rename(dest)
            dir_fd = os.open(dest.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as err:
            raise StorageError(f"cannot publish {dest}: {err}") from err

    def _publish_remote(self, staging: Path, rel: str, marker: str) -> None:
        dest_marker = f"{rel}/{marker}" if rel else marker
        # Take the old marker away first: from here on the prefix reads as incomplete until the new one lands.
        if self.exists(dest_marker):
            self.remove(dest_marker)
        self.remove(rel)  # stale objects from an earlier attempt would otherwise linger next to the new files
        self.put_dir(staging, rel, last=marker)
