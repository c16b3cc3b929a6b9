"""What an image would give a container (entrypoint, default args, environment, user, working directory),
read from this repository's Dockerfiles: the node agent runs no images, so it takes the final stage's
ENTRYPOINT, CMD, ENV, USER and WORKDIR from `docker/<name>.Dockerfile` for images named `.../<name>[:tag]`.

Paths of the image's Python environment (`VIRTUAL_ENV`, e.g. /opt/venv) are mapped to the project's own
environment, so `PATH=/opt/venv/bin:$PATH` puts this venv's bin first.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


@dataclass
class ImageConfig:
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    workdir: str = "/"


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def _exec_form(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("["):
        return [str(v) for v in json.loads(value)]
    return ["/bin/sh", "-c", value]


def parse_dockerfile(text: str, *, venv: str = sys.prefix) -> ImageConfig:
    """The runtime configuration of the Dockerfile's final stage."""
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions(text):
        if ins[0] == "FROM":
            stages.append([])
        elif stages:
            stages[-1].append(ins)
    config = ImageConfig()
    image_venv = "/opt/venv"
    for stage in stages:
        for word, args in stage:
            if word == "ENV" and "VIRTUAL_ENV=" in args:
                image_venv = args.split("VIRTUAL_ENV=", 1)[1].split()[0]
    env: dict[str, str] = {"PATH": DEFAULT_PATH}
    for word, args in stages[-1] if stages else []:
        if word == "ENV":
            for item in shlex.split(args):
                key, sep, value = item.partition("=")
                if not sep:  # legacy `ENV KEY value`
                    key, _, value = args.partition(" ")
                    env[key] = _expand(value.strip(), env)
                    break
                env[key] = _expand(value, env)
        elif word == "ENTRYPOINT":
            config.entrypoint = _exec_form(args)
            config.cmd = []  # a new ENTRYPOINT resets CMD inherited before it
        elif word == "CMD":
            config.cmd = _exec_form(args)
        elif word == "USER":
            config.user = args.strip()
        elif word == "WORKDIR":
            config.workdir = args.strip()
    config.env = {k: v.replace(image_venv, venv) for k, v in env.items()}
    return config


def _expand(value: str, env: dict[str, str]) -> str:
    return _VAR.sub(lambda m: env.get(m.group(1), ""), value)


def load_images(docker_dir: Path | None, *, venv: str = sys.prefix) -> dict[str, ImageConfig]:
    """Image short name (the Dockerfile's stem: `worker`, `operator`) -> its configuration."""
    if docker_dir is None or not docker_dir.is_dir():
        return {}
    return {
        path.name.removesuffix(".Dockerfile"): parse_dockerfile(path.read_text(), venv=venv)
        for path in sorted(docker_dir.glob("*.Dockerfile"))
    }


def image_short_name(image: str) -> str:
    """`ghcr.io/deepseek-operator/worker:0.1.0@sha256:...` -> `worker`."""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[0]
