"""Resumable checkpoints under `<outputUri>/checkpoints/step-<N>/`, written atomically.

A checkpoint is a directory of torch-serialised payloads (model weights, optimizer, scheduler, gradient scaler,
every rank's RNG states, the data position) plus a `COMPLETE` marker written last that lists each file's size
and SHA-256 and the run's fingerprint. A reader only trusts a directory whose marker exists and whose files
match it, and only when the fingerprint (the settings that shape the training trajectory) is its own: a
checkpoint of a different configuration is skipped, never half-applied. The newest `KEEP` checkpoints are kept.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deepseek_workers.progress import now_rfc3339
from deepseek_workers.training import storage

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


def checkpoints_uri(output_uri: str) -> str:
    return storage.join(output_uri, CHECKPOINTS_DIR)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(output_uri: str, step: int, fingerprint: str, payloads: dict[str, Any]) -> str:
    """Write `payloads` (name -> torch-serialisable object) as checkpoint `step`; returns its URI."""
    dest = storage.join(checkpoints_uri(output_uri), f"step-{step}")
    stage = storage.StagedTree(dest, MARKER)
    try:
        files = {}
        for name, obj in payloads.items():
            path = stage.path / f"{name}.pt"
            torch.save(obj, path)
            files[path.name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
        marker = {"step": step, "fingerprint": fingerprint, "files": files, "createdAt": now_rfc3339()}
        (stage.path / MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        stage.commit()
    except BaseException:
        stage.abort()
        raise
    _prune(output_uri)
    return dest


def _steps(output_uri: str) -> list[int]:
    steps = []
    for name in storage.list_children(checkpoints_uri(output_uri)):
        m = _STEP_DIR.match(name)
        if m:
            steps.append(int(m.group(1)))
    return sorted(steps, reverse=True)


def _prune(output_uri: str) -> None:
    root = checkpoints_uri(output_uri)
    complete = [s for s in _steps(output_uri) if storage.exists(storage.join(root, f"step-{s}", MARKER))]
    for step in complete[KEEP:]:
        storage.remove_tree(storage.join(root, f"step-{step}"))


def remove_stale_staging(output_uri: str) -> None:
    """Delete half-written checkpoint directories a killed writer left behind (local outputs only)."""
    if storage.is_remote(output_uri):
        return
    root = storage.local_path(checkpoints_uri(output_uri))
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith((".tmp-", ".old-")):
                storage.remove_tree(str(child))


def load_latest(output_uri: str, fingerprint: str, scratch: Path) -> Checkpoint | None:
    """The newest complete, intact checkpoint written by this configuration, or None."""
    root = checkpoints_uri(output_uri)
    for step in _steps(output_uri):
        uri = storage.join(root, f"step-{step}")
        marker_uri = storage.join(uri, MARKER)
        if not storage.exists(marker_uri):
            log.warning("checkpoint %s is incomplete (no %s); skipping it", uri, MARKER)
            continue
        marker = json.loads(storage.read_text(marker_uri))
        if marker.get("fingerprint") != fingerprint:
            log.warning("checkpoint %s belongs to a different training configuration; not resuming from it", uri)
            continue
        local = storage.download_tree(uri, scratch / f"step-{step}")
        try:
            payloads = _read_verified(local, marker["files"])
        except (OSError, ValueError, RuntimeError) as err:
            log.warning("checkpoint %s is damaged (%s); trying an older one", uri, err)
            continue
        return Checkpoint(step=step, uri=uri, payloads=payloads)
    return None


def _read_verified(local: Path, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    payloads = {}
    for name, meta in files.items():
        path = local / name
        data = path.read_bytes()
        if len(data) != meta["size"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise ValueError(f"{name} does not match its recorded size and SHA-256")
        # weights_only: a checkpoint holds tensors and plain containers only; never unpickle arbitrary objects.
        payloads[name.removesuffix(".pt")] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return payloads
