"""The model artifact: a versioned directory with a manifest that lists every file with its sha256 and size.

Layout and guarantees are in docs/artifact.md. In short::

    <artifact>/manifest.json   written last; lists every other file (sha256, size), the variants, the source
    <artifact>/metrics.json    what the producing step measured
    <artifact>/fp32/ int8/ onnx/ adapter/ ...

Writing (``write_artifact``) stages the files locally and publishes them atomically (storage.Storage). Reading
(``open_artifact``) verifies the manifest -- every listed file present with the listed size and sha256, and no
unlisted files -- and refuses anything else with a BadArtifactError (exit code 66). Torch-free: the operator
may import this module to read manifests (``read_manifest``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import platform
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from deepseek_workers.errors import BadArtifactError
from deepseek_workers.runconfig import SourceRef
from deepseek_workers.storage import AlreadyPublishedError, Storage, StorageError

log = logging.getLogger(__name__)

FORMAT_VERSION: Final = "deepseek.ai/artifact-v1"
MANIFEST: Final = "manifest.json"
METRICS: Final = "metrics.json"

# Distributions whose versions are recorded in every manifest (those installed).
RECORDED_LIBRARIES: Final = (
    "deepseek-operator",
    "torch",
    "torchao",
    "transformers",
    "tokenizers",
    "safetensors",
    "peft",
    "onnx",
    "onnxruntime",
)

VariantFormat = Literal["hf-safetensors", "int8-safetensors", "onnx", "peft-adapter"]


class _Doc(BaseModel):
    # camelCase on the wire like the run config; unknown fields are ignored so that a reader of format v1
    # accepts documents from a newer v1 writer that added optional fields.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


def _safe_relative(value: str) -> str:
    p = PurePosixPath(value)
    if not value or p.is_absolute() or ".." in p.parts or "\\" in value:
        raise ValueError(f"{value!r} must be a relative path inside the artifact")
    return p.as_posix()


class FileEntry(_Doc):
    path: str
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    size: Annotated[int, Field(ge=0)]

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        return _safe_relative(value)


class VariantEntry(_Doc):
    """One loadable form of the model: a directory (HF / INT8 safetensors) or a file (ONNX)."""

    path: str
    format: VariantFormat
    # Free-form facts about the variant, e.g. {"method": "int8-dynamic", "implementation": "torchao"}.
    info: dict[str, Any] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        return _safe_relative(value)


class Manifest(_Doc):
    format_version: Literal["deepseek.ai/artifact-v1"] = FORMAT_VERSION
    version: str
    created_at: str
    source: SourceRef
    task: str
    # The variant a server should load when it is not told otherwise (fp32 when INT8 went over budget).
    served_variant: str
    over_budget: bool = False
    variants: dict[str, VariantEntry]
    libraries: dict[str, str] = Field(default_factory=dict)
    # Anything else the producer wants on record (labels, base model, quantization settings).
    extra: dict[str, Any] = Field(default_factory=dict)
    total_size: int = 0
    files: list[FileEntry]


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in RECORDED_LIBRARIES:
        with contextlib.suppress(PackageNotFoundError):
            versions[dist] = dist_version(dist)
    return versions


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------------------
# Writing


class ArtifactBuilder:
    """Collects an artifact in a local staging directory (``.dir``); ``write_artifact`` publishes it."""

    def __init__(self, directory: Path, *, version: str, source: SourceRef, task: str) -> None:
        self.dir = directory
        self.version = version
        self.source = source
        self.task = task
        self.variants: dict[str, VariantEntry] = {}
        self.served_variant: str | None = None
        self.over_budget = False
        self.metrics: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}

    def add_variant(self, name: str, path: str, fmt: VariantFormat, *, info: Mapping[str, Any] | None = None) -> None:
        """Register a variant whose files are already under ``self.dir / path``."""
        entry = VariantEntry(path=path, format=fmt, info=dict(info or {}))
        if not (self.dir / entry.path).exists():
            raise ValueError(f"variant {name!r}: {entry.path} does not exist in the artifact")
        self.variants[name] = entry

    def _finish(self) -> Manifest:
        if not self.variants:
            raise ValueError("an artifact needs at least one variant")
        served = self.served_variant or next(iter(self.variants))
        if served not in self.variants:
            raise ValueError(f"served variant {served!r} is not one of {sorted(self.variants)}")
        (self.dir / METRICS).write_text(json.dumps(self.metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        files = []
        for p in sorted(self.dir.rglob("*")):
            if p.is_file() and p.relative_to(self.dir).as_posix() != MANIFEST:
                files.append(
                    FileEntry(path=p.relative_to(self.dir).as_posix(), sha256=sha256_file(p), size=p.stat().st_size)
                )
        manifest = Manifest(
            version=self.version,
            created_at=now_rfc3339(),
            source=self.source,
            task=self.task,
            served_variant=served,
            over_budget=self.over_budget,
            variants=self.variants,
            libraries=library_versions(),
            extra=self.extra,
            total_size=sum(f.size for f in files),
            files=files,
        )
        (self.dir / MANIFEST).write_text(
            manifest.model_dump_json(by_alias=True, indent=2) + "\n",
            encoding="utf-8",
        )
        return manifest


@contextlib.contextmanager
def write_artifact(
    uri: str,
    *,
    version: str,
    source: SourceRef,
    task: str,
    overwrite: bool = False,
) -> Iterator[ArtifactBuilder]:
    """Build an artifact in a staging directory and publish it at ``uri`` when the block ends without error.

    ::

        with write_artifact(uri, version="v3", source=cfg.source, task="text-classification") as art:
            model.save_pretrained(art.dir / "fp32")
            art.add_variant("fp32", "fp32", "hf-safetensors")
            art.metrics = {...}
        # here the artifact is complete at uri (manifest written last)

    A complete artifact already at ``uri`` raises AlreadyPublishedError unless ``overwrite``.
    """
    storage = Storage.from_uri(uri)
    with storage.staging_dir("", marker=MANIFEST, overwrite=overwrite) as staging:
        builder = ArtifactBuilder(staging, version=version, source=source, task=task)
        yield builder
        builder._finish()


# ---------------------------------------------------------------------------------------------------------
# Reading


class Artifact:
    """A verified artifact available as a local directory (object-store artifacts are downloaded first)."""

    def __init__(self, uri: str, root: Path, manifest: Manifest) -> None:
        self.uri = uri
        self.root = root
        self.manifest = manifest

    @property
    def metrics(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.root / METRICS).read_text(encoding="utf-8"))
        return data

    def variant(self, name: str) -> VariantEntry:
        try:
            return self.manifest.variants[name]
        except KeyError:
            raise BadArtifactError(
                f"artifact {self.uri} has no variant {name!r}; it has: {', '.join(sorted(self.manifest.variants))}"
            ) from None

    def variant_path(self, name: str) -> Path:
        return self.root / self.variant(name).path


def _parse_manifest(uri: str, raw: bytes) -> Manifest:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadArtifactError(f"artifact {uri} has a corrupt {MANIFEST} (not valid JSON: {err})") from None
    if isinstance(data, dict) and data.get("formatVersion") not in (None, FORMAT_VERSION):
        raise BadArtifactError(
            f"artifact {uri} has format {data.get('formatVersion')!r}; this worker reads {FORMAT_VERSION!r}"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as err:
        fields = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise BadArtifactError(f"artifact {uri} has an invalid {MANIFEST}: {fields}") from None


def _read_manifest_bytes(storage: Storage, uri: str) -> bytes:
    try:
        return storage.read_bytes(MANIFEST)
    except FileNotFoundError:
        raise BadArtifactError(
            f"artifact {uri} is missing or incomplete: it has no {MANIFEST} (the writer may not have finished)"
        ) from None
    except StorageError as err:
        raise BadArtifactError(f"cannot read artifact {uri}: {err}") from None


def _storage(uri: str) -> Storage:
    try:
        return Storage.from_uri(uri)
    except StorageError as err:
        raise BadArtifactError(f"cannot open artifact: {err}") from None


def read_manifest(uri: str) -> Manifest:
    """The parsed manifest of the artifact at ``uri`` (no file hashes checked). Torch- and download-free."""
    return _parse_manifest(uri, _read_manifest_bytes(_storage(uri), uri))


def verify_directory(uri: str, root: Path, manifest: Manifest, *, check_hashes: bool = True) -> None:
    """Check that ``root`` holds exactly the manifest's files with their sizes (and hashes)."""
    listed = {f.path for f in manifest.files}
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {MANIFEST}
    for name, variant in manifest.variants.items():
        if variant.path not in listed and not any(f.startswith(variant.path + "/") for f in listed):
            raise BadArtifactError(f"artifact {uri} is inconsistent: variant {name!r} ({variant.path}) has no files")
    for extra in sorted(present - listed):
        raise BadArtifactError(
            f"artifact {uri} contains {extra}, which {MANIFEST} does not list (tampered or mixed with another write)"
        )
    for entry in manifest.files:
        path = root / entry.path
        if not path.is_file():
            raise BadArtifactError(f"artifact {uri} is incomplete: {entry.path} (listed in {MANIFEST}) is missing")
        size = path.stat().st_size
        if size != entry.size:
            raise BadArtifactError(
                f"artifact {uri} is truncated or corrupt: {entry.path} is {size} bytes, {MANIFEST} says {entry.size}"
            )
        if check_hashes:
            digest = sha256_file(path)
            if digest != entry.sha256:
                raise BadArtifactError(
                    f"artifact {uri} is corrupt or was modified: sha256 of {entry.path} is {digest[:16]}..., "
                    f"{MANIFEST} says {entry.sha256[:16]}..."
                )


def _default_cache_dir() -> Path:
    from deepseek_workers.builtin_models import model_cache_dir

    return model_cache_dir() / "artifacts"


def open_artifact(uri: str, *, cache_dir: Path | None = None, check_hashes: bool = True) -> Artifact:
    """Verify the artifact at ``uri`` and return it as a local directory.

    Local artifacts are verified in place. Object-store artifacts are downloaded into ``cache_dir`` (default:
    ``$DEEPSEEK_MODEL_CACHE/artifacts``), keyed by the manifest's hash, then verified; a verified copy is
    reused. Raises BadArtifactError when anything is missing, truncated, modified or unlisted.
    """
    storage = _storage(uri)
    raw = _read_manifest_bytes(storage, uri)
    manifest = _parse_manifest(uri, raw)
    local = storage.local_path()
    if local is not None:
        verify_directory(uri, local, manifest, check_hashes=check_hashes)
        return Artifact(uri, local, manifest)

    try:
        unlisted = sorted(set(storage.list_files()) - {f.path for f in manifest.files} - {MANIFEST})
    except (FileNotFoundError, StorageError) as err:
        raise BadArtifactError(f"cannot read artifact {uri}: {err}") from None
    if unlisted:
        raise BadArtifactError(
            f"artifact {uri} contains {unlisted[0]}, which {MANIFEST} does not list (tampered or mixed with another "
            "write)"
        )
    key = hashlib.sha256(uri.encode() + b"\0" + raw).hexdigest()[:24]
    base = cache_dir or _default_cache_dir()
    dest = base / key
    if (dest / MANIFEST).is_file():
        with contextlib.suppress(BadArtifactError):
            verify_directory(uri, dest, manifest, check_hashes=check_hashes)
            return Artifact(uri, dest, manifest)
        shutil.rmtree(dest, ignore_errors=True)  # a damaged cache entry: fetch again
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=base))
    try:
        for entry in manifest.files:
            try:
                storage.get_file(entry.path, tmp / entry.path)
            except FileNotFoundError:
                raise BadArtifactError(
                    f"artifact {uri} is incomplete: {entry.path} (listed in {MANIFEST}) is missing"
                ) from None
            except StorageError as err:
                raise BadArtifactError(f"cannot download artifact {uri}: {err}") from None
        (tmp / MANIFEST).write_bytes(raw)
        verify_directory(uri, tmp, manifest, check_hashes=check_hashes)
        try:
            tmp.rename(dest)
        except OSError:
            if not (dest / MANIFEST).is_file():  # not a concurrent winner: a real error
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Artifact(uri, dest, manifest)


def is_complete(uri: str) -> bool:
    """Whether ``uri`` holds a published artifact: a valid manifest and every listed file at its listed size.

    Cheap (no download, no hashing): for "was this already published?" checks. Loading verifies hashes.
    """
    try:
        storage = _storage(uri)
        manifest = _parse_manifest(uri, _read_manifest_bytes(storage, uri))
        present = set(storage.list_files())
        return all(f.path in present and storage.size(f.path) == f.size for f in manifest.files)
    except (BadArtifactError, StorageError):
        return False


__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "METRICS",
    "AlreadyPublishedError",
    "Artifact",
    "ArtifactBuilder",
    "FileEntry",
    "Manifest",
    "VariantEntry",
    "is_complete",
    "library_versions",
    "open_artifact",
    "read_manifest",
    "verify_directory",
    "write_artifact",
]
