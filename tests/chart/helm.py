"""Running the real helm binary (built by the testbed) on charts/deepseek-operator and reading what it renders."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "deepseek-operator"
ALL_ON_VALUES = CHART / "ci" / "all-on-values.yaml"
NAMESPACED_VALUES = CHART / "ci" / "namespaced-values.yaml"


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML implements YAML 1.1, where `5e-05` is a string; Go (helm, kubectl, the API server) reads YAML 1.2,
    where it is a number. Comparisons of rendered manifests must read them as Go does."""


Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def load_all(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.load_all(text, Loader=Yaml12Loader) if doc]


@dataclass(frozen=True)
class Helm:
    binary: Path
    home: Path

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        env.pop("KUBECONFIG", None)  # template and lint must not depend on any cluster
        res = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
        if check and res.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def values_args(self, values: Mapping[str, Any] | None, files: Sequence[Path], tmp: Path) -> list[str]:
        args: list[str] = []
        for f in files:
            args += ["-f", str(f)]
        if values:
            path = tmp / f"values-{len(list(tmp.glob('values-*.yaml')))}.yaml"
            path.write_text(yaml.safe_dump(dict(values)))
            args += ["-f", str(path)]
        return args

    def template(
        self,
        tmp: Path,
        values: Mapping[str, Any] | None = None,
        *,
        files: Sequence[Path] = (),
        release: str = "ds",
        namespace: str = "deepseek-system",
        chart: Path = CHART,
        extra: Sequence[str] = (),
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            "template",
            release,
            str(chart),
            "--namespace",
            namespace,
            *self.values_args(values, files, tmp),
            *extra,
            check=check,
        )

    def render(
        self,
        tmp: Path,
        values: Mapping[str, Any] | None = None,
        *,
        files: Sequence[Path] = (),
        release: str = "ds",
        namespace: str = "deepseek-system",
        chart: Path = CHART,
    ) -> list[dict[str, Any]]:
        """helm template → the manifests (parsed as YAML 1.2)."""
        out = self.template(tmp, values, files=files, release=release, namespace=namespace, chart=chart).stdout
        return load_all(out)


def by_kind(docs: Sequence[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: Sequence[Mapping[str, Any]], kind: str, name: str | None = None) -> Mapping[str, Any]:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def kinds(docs: Sequence[Mapping[str, Any]]) -> set[str]:
    return {str(d["kind"]) for d in docs}


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """The first path where two parsed documents differ (for readable assertion messages), or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                return f"{path}.{key}: only in {'first' if key in a else 'second'}"
            found = first_difference(a[key], b[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if a == b else f"{path}: {a!r} != {b!r}"
