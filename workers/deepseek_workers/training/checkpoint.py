"""Resumable checkpoints under `<outputUri>/checkpoints/step-<N>/`, written atomically.

A checkpoint is a directory of torch-serialised payloads (model weights, optimizer, scheduler, gradient scaler,
every rank's RNG states, the data position) plus a `COMPLETE` marker written last that lists each file's size
and SHA-256 and the run's fingerprint. Publication goes through `Storage.staging_dir` (local: staged in a
hidden sibling and renamed; S3: every object before the marker). A reader only trusts a directory whose marker
exists and whose files match it, and only when the fingerprint (the settings that shape the training
trajectory) is its own: a checkpoint of a different configuration is skipped, never half-applied. The newest
`KEEP` checkpoints are kept.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import torch

from deepseek_workers.progress import now_rfc3339
from deepseek_workers.storage import Storage, StorageError

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
MARKER = "COMPLETE"
KEEP = 2
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    step: int
    uri: str
    payloads: dict[str, Any]


def _store(output_uri: str) -> Storage:
    return Storage.from_uri(output_uri).child(CHECKPOINTS_DIR)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save(output_uri: str, step: int, fingerprint: str, payloads: dict[str, Any]) -> str:
    """Write `payloads` (name -> torch-serialisable object) as checkpoint `step`; returns its URI."""
    store = _store(output_uri)
    with store.staging_dir(f"step-{step}", marker=MARKER, overwrite=True) as stage:
        files = {}
        for name, obj in payloads.items():
            path = stage / f"{name}.pt"
            torch.save(obj, path)
            files[path.name] = {"size": path.stat().st_size, "sha256": _sha256(path.read_bytes())}
        marker = {"step": step, "fingerprint": fingerprint, "files": files, "createdAt": now_rfc3339()}
        (stage / MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
    _prune(store)
    return f"{store.uri}/step-{step}"


def _steps(store: Storage) -> list[int]:
    """Steps that have a checkpoint directory (complete or not), newest first."""
    local = store.local_path()
    if local is not None:
        names = {p.name for p in local.iterdir()} if local.is_dir() else set()
    else:
        names = {f.split("/", 1)[0] for f in store.list_files()}
    return sorted((int(m.group(1)) for n in names if (m := _STEP_DIR.match(n))), reverse=True)


def _prune(store: Storage) -> None:
    complete = [s for s in _steps(store) if store.is_file(f"step-{s}/{MARKER}")]
    for step in complete[KEEP:]:
        store.remove(f"step-{step}")


def remove_stale_staging(output_uri: str) -> None:
    """Delete half-written checkpoint directories a killed writer left behind (local outputs only)."""
    local = _store(output_uri).local_path()
    if local is not None and local.is_dir():
        for child in local.iterdir():
            if child.name.startswith(".") and child.is_dir():
                Storage.from_uri(str(child)).remove()


def load_latest(output_uri: str, fingerprint: str) -> Checkpoint | None:
    """The newest complete, intact checkpoint written by this configuration, or None."""
    store = _store(output_uri)
    for step in _steps(store):
        name = f"step-{step}"
        uri = f"{store.uri}/{name}"
        if not store.is_file(f"{name}/{MARKER}"):
            log.warning("checkpoint %s is incomplete (no %s); skipping it", uri, MARKER)
            continue
        marker = json.loads(store.read_text(f"{name}/{MARKER}"))
        if marker.get("fingerprint") != fingerprint:
            log.warning("checkpoint %s belongs to a different training configuration; not resuming from it", uri)
            continue
        try:
            payloads = _read_verified(store, name, marker["files"])
        except (OSError, ValueError, RuntimeError, StorageError) as err:
            log.warning("checkpoint %s is damaged (%s); trying an older one", uri, err)
            continue
        return Checkpoint(step=step, uri=uri, payloads=payloads)
    return None


def _read_verified(store: Storage, name: str, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    payloads = {}
    for file, meta in files.items():
        data = store.read_bytes(f"{name}/{file}")
        if len(data) != meta["size"] or _sha256(data) != meta["sha256"]:
            raise ValueError(f"{file} does not match its recorded size and SHA-256")
        # weights_only: a checkpoint holds tensors and plain containers only; never unpickle arbitrary objects.
        payloads[file.removesuffix(".pt")] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return payloads
