"""Finding (and if needed building) the control-plane binaries.

`tools/testbed/build.sh` builds them from the Go module proxy into a cache directory keyed by version and
prints that directory on its last stdout line; when everything is cached it only checks and returns at once.
`DEEPSEEK_TESTBED_BIN` points at a ready directory instead (for an installed copy without the repository).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from deepseek_testbed.errors import TestbedError

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok", "helm")
BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "build.sh"


class Writer(Protocol):
    def write(self, text: str, /) -> int: ...
    def flush(self) -> None: ...


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of every component binary (all in one directory)."""

    directory: Path

    def __getitem__(self, name: str) -> Path:
        if name not in COMPONENTS:
            raise KeyError(f"unknown component {name!r}; known: {', '.join(COMPONENTS)}")
        return self.directory / name

    def missing(self) -> list[str]:
        return [c for c in COMPONENTS if not os.access(self.directory / c, os.X_OK)]


def ensure_binaries(progress: Writer | None = None) -> Binaries:
    """Return the binaries, building them with build.sh first if any is missing (a cold build takes ~10 min).

    Build progress (stderr of build.sh) goes to `progress` (default: this process's stderr).
    """
    override = os.environ.get("DEEPSEEK_TESTBED_BIN")
    if override:
        bins = Binaries(Path(override).resolve())
        if missing := bins.missing():
            raise TestbedError(f"DEEPSEEK_TESTBED_BIN={override} lacks {', '.join(missing)}")
        return bins
    if not BUILD_SCRIPT.is_file():
        raise TestbedError(
            f"{BUILD_SCRIPT} not found (deepseek_testbed is not running from the repository): "
            "set DEEPSEEK_TESTBED_BIN to a directory holding " + ", ".join(COMPONENTS)
        )
    out: Writer = progress if progress is not None else sys.stderr
    proc = subprocess.Popen(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    assert proc.stdout is not None
    # build.sh logs progress on stderr; relay it live so a cold build does not look like a hang.
    err_lines: list[str] = []
    for line in proc.stderr:
        err_lines.append(line)
        out.write(line)
        out.flush()
    stdout = proc.stdout.read()
    code = proc.wait()
    if code != 0:
        raise TestbedError(f"{BUILD_SCRIPT} failed with exit code {code}; last output:\n" + "".join(err_lines[-40:]))
    lines = stdout.strip().splitlines()
    if not lines:
        raise TestbedError(f"{BUILD_SCRIPT} printed no binary directory")
    bins = Binaries(Path(lines[-1]))
    if missing := bins.missing():
        raise TestbedError(f"{BUILD_SCRIPT} finished but {bins.directory} lacks {', '.join(missing)}")
    return bins
