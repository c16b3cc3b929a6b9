"""Publishing the trained fp32 model as an artifact directory (layout in docs/architecture.md, "Artifacts").

```
<dest>/fp32/          config.json, model.safetensors, tokenizer files (LoRA: the merged model)
<dest>/adapter/       the LoRA adapter (peft format), when LoRA was used
<dest>/metrics.json   what training measured
<dest>/manifest.json  written last: file list with sha256 and size, source resource, versions, run facts
```

`publish_trained` is the one function that writes it; it goes through `StagedTree`, so a local artifact
appears by rename and a remote one only gets its manifest after every file is uploaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from deepseek_workers.progress import now_rfc3339
from deepseek_workers.runconfig import TrainRunConfig
from deepseek_workers.training import storage

MANIFEST = "manifest.json"
METRICS = "metrics.json"
FORMAT_VERSION = 1


def destination(cfg: TrainRunConfig) -> str:
    """Where the train step publishes: `trained/<version>` when a quantize step follows, else `<version>`."""
    if cfg.quantization.enabled:
        return storage.join(cfg.output_uri, "trained", cfg.artifact_version)
    return storage.join(cfg.output_uri, cfg.artifact_version)


def published_manifest(dest: str) -> dict[str, Any] | None:
    """The manifest of an already published artifact at `dest`, or None."""
    uri = storage.join(dest, MANIFEST)
    try:
        if not storage.exists(uri):
            return None
        data = json.loads(storage.read_text(uri))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "peft", "deepseek-operator"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _file_list(root: Path) -> list[dict[str, Any]]:
    files = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            h = hashlib.sha256()
            with p.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            files.append({"path": p.relative_to(root).as_posix(), "size": p.stat().st_size, "sha256": h.hexdigest()})
    return files


def publish_trained(
    cfg: TrainRunConfig,
    *,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    lora: bool,
    metrics: dict[str, float],
    facts: dict[str, Any],
) -> str:
    """Write the artifact for `cfg` and return its URI. `model` is unwrapped (a peft model when `lora`)."""
    dest = destination(cfg)
    stage = storage.StagedTree(dest, MANIFEST)
    try:
        fp32 = stage.path / "fp32"
        if lora:
            model.save_pretrained(str(stage.path / "adapter"))  # type: ignore[operator]
            merged = model.merge_and_unload()  # type: ignore[operator]
            merged.save_pretrained(str(fp32))
        else:
            model.save_pretrained(str(fp32))  # type: ignore[operator]
        tokenizer.save_pretrained(str(fp32))
        (stage.path / METRICS).write_text(json.dumps(metrics, indent=2, sort_keys=True), encoding="utf-8")
        manifest = {
            "formatVersion": FORMAT_VERSION,
            "kind": "trained-model",
            "createdAt": now_rfc3339(),
            "source": cfg.source.model_dump(mode="json", by_alias=True),
            "artifactVersion": cfg.artifact_version,
            "libraries": _library_versions(),
            **facts,
            "files": _file_list(stage.path),
        }
        (stage.path / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        stage.commit()
    except BaseException:
        stage.abort()
        raise
    return dest
