"""Checkpoints: atomic, verified, newest complete one wins, other configurations ignored."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from deepseek_workers.training import checkpoint


def _payload(value: float) -> dict[str, object]:
    return {"model": {"w": torch.full((3,), value)}, "trainer": {"step": int(value)}}


def test_roundtrip_and_retention(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    for step in (5, 10, 15):
        checkpoint.save(out, step, "fp-a", _payload(float(step)))
    kept = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert kept == ["step-10", "step-15"]  # the newest KEEP=2
    ckpt = checkpoint.load_latest(out, "fp-a")
    assert ckpt is not None
    assert ckpt.step == 15
    assert torch.equal(ckpt.payloads["model"]["w"], torch.full((3,), 15.0))
    marker = json.loads((tmp_path / "out" / "checkpoints" / "step-15" / "COMPLETE").read_text())
    assert marker["fingerprint"] == "fp-a"
    assert set(marker["files"]) == {"model.pt", "trainer.pt"}


def test_incomplete_and_damaged_checkpoints_are_skipped(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    checkpoint.save(out, 10, "fp", _payload(10.0))
    checkpoint.save(out, 20, "fp", _payload(20.0))
    root = tmp_path / "out" / "checkpoints"
    # A writer killed half-way leaves a directory without the marker (here: a newer step).
    (root / "step-30").mkdir()
    (root / "step-30" / "model.pt").write_bytes(b"partial")
    # Bit rot in the newest complete one: its hash no longer matches.
    (root / "step-20" / "model.pt").write_bytes(b"garbage")
    ckpt = checkpoint.load_latest(out, "fp")
    assert ckpt is not None
    assert ckpt.step == 10


def test_other_configuration_and_stale_staging(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    checkpoint.save(out, 10, "fp-old", _payload(1.0))
    assert checkpoint.load_latest(out, "fp-new") is None
    stale = tmp_path / "out" / "checkpoints" / ".tmp-step-40-abcd1234"
    stale.mkdir()
    checkpoint.remove_stale_staging(out)
    assert not stale.exists()
    assert (tmp_path / "out" / "checkpoints" / "step-10" / "COMPLETE").is_file()
    assert checkpoint.load_latest(str(tmp_path / "nothing"), "fp") is None
