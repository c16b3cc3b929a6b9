"""Pure parts of the dev cluster's node agent: environment and downward API, image configuration from
Dockerfiles, path resolution inside a container root, CRI log records."""

from __future__ import annotations

import base64
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from deepseek_testbed.node_agent_env import (
    EnvError,
    command_line,
    container_env,
    expand,
    field_value,
    parse_quantity,
    resource_value,
)
from deepseek_testbed.node_agent_images import ImageConfig, image_short_name, parse_dockerfile
from deepseek_testbed.node_agent_sandbox import in_root
from deepseek_testbed.node_agent_server import _parse_time, render

INDEX = "batch.kubernetes.io/job-completion-index"
POD: dict[str, Any] = {
    "metadata": {
        "name": "train-0",
        "namespace": "ml",
        "uid": "u-1",
        "labels": {"app": "x"},
        "annotations": {"batch.kubernetes.io/job-completion-index": "3"},
    },
    "spec": {"nodeName": "local-exec", "serviceAccountName": "worker", "containers": []},
    "status": {"podIP": "10.245.1.2", "podIPs": [{"ip": "10.245.1.2"}], "hostIP": "10.245.1.1"},
}


@pytest.mark.parametrize(
    ("text", "value"),
    [("500m", "0.5"), ("2", "2"), ("4Gi", str(4 * 2**30)), ("1e3", "1000"), ("1k", "1000"), ("128Mi", str(2**27))],
)
def test_parse_quantity(text: str, value: str) -> None:
    assert parse_quantity(text) == Decimal(value)


def test_parse_quantity_rejects_garbage() -> None:
    with pytest.raises(EnvError, match="invalid quantity '4 GB'"):
        parse_quantity("4 GB")


def test_expand_like_the_kubelet() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)", env) == "1-two"
    assert expand("$$(A)", env) == "$(A)"  # escaped
    assert expand("$(MISSING)", env) == "$(MISSING)"  # unknown references stay


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("metadata.name", "train-0"),
        ("metadata.namespace", "ml"),
        ("metadata.uid", "u-1"),
        ("metadata.labels['app']", "x"),
        ("metadata.annotations['batch.kubernetes.io/job-completion-index']", "3"),
        ("spec.nodeName", "local-exec"),
        ("spec.serviceAccountName", "worker"),
        ("status.podIP", "10.245.1.2"),
        ("status.hostIP", "10.245.1.1"),
        ("status.podIPs", "10.245.1.2"),
    ],
)
def test_field_refs(path: str, value: str) -> None:
    assert field_value(POD, path) == value


def test_unknown_field_ref_names_valid_ones() -> None:
    with pytest.raises(EnvError, match=r"fieldRef 'spec.hostname' is not supported \(valid: metadata.name"):
        field_value(POD, "spec.hostname")


def test_resource_refs_round_up_and_fall_back_to_node() -> None:
    container = {"resources": {"requests": {"cpu": "250m"}, "limits": {"memory": "1Gi"}}}
    assert resource_value(container, {"resource": "requests.cpu"}, {}) == "1"
    assert resource_value(container, {"resource": "requests.cpu", "divisor": "1m"}, {}) == "250"
    assert resource_value(container, {"resource": "limits.memory", "divisor": "1Mi"}, {}) == "1024"
    assert resource_value(container, {"resource": "limits.cpu"}, {"cpu": "8"}) == "8"  # unset: node allocatable


def test_container_env_precedence_sources_and_expansion() -> None:
    objects = {
        ("ConfigMap", "settings"): {"data": {"LEVEL": "debug", "MODE": "from-configmap"}},
        ("Secret", "creds"): {"data": {"TOKEN": base64.b64encode(b"s3cret").decode()}},
    }
    container = {
        "name": "w",
        "envFrom": [{"configMapRef": {"name": "settings"}}, {"secretRef": {"name": "creds"}, "prefix": "APP_"}],
        "env": [
            {"name": "MODE", "value": "explicit wins"},
            {
                "name": "INDEX",
                "valueFrom": {
                    "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
                },
            },
            {"name": "URL", "value": "http://$(KUBERNETES_SERVICE_HOST):443/$(INDEX)"},
            {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "TOKEN"}}},
            {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "x", "optional": True}}},
        ],
    }
    env = container_env(
        POD,
        container,
        base={"KUBERNETES_SERVICE_HOST": "10.96.0.1", "MODE": "image"},
        lookup=lambda kind, name: objects.get((kind, name)),
        allocatable={},
    )
    assert env["MODE"] == "explicit wins"
    assert env["LEVEL"] == "debug"
    assert env["APP_TOKEN"] == "s3cret"
    assert env["KEY"] == "s3cret"
    assert env["INDEX"] == "3"
    assert env["URL"] == "http://10.96.0.1:443/3"
    assert "OPT" not in env


@pytest.mark.parametrize(
    ("container", "message"),
    [
        ({"name": "w", "envFrom": [{"configMapRef": {"name": "nope"}}]}, 'configmap "nope" not found'),
        (
            {"name": "w", "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "missing"}}}]},
            "couldn't find key missing in Secret ml/s",
        ),
    ],
)
def test_container_env_missing_sources(container: dict[str, Any], message: str) -> None:
    with pytest.raises(EnvError, match=message):
        container_env(POD, container, base={}, lookup=lambda k, n: {"data": {}} if n == "s" else None, allocatable={})


def test_command_line_follows_entrypoint_and_cmd_rules() -> None:
    image = ImageConfig(entrypoint=["deepseek-worker"], cmd=["--help"])
    env = {"CFG": "/etc/deepseek/run.json"}
    assert command_line({"name": "w"}, env, image) == ["deepseek-worker", "--help"]
    assert command_line({"name": "w", "args": ["train", "--config", "$(CFG)"]}, env, image) == [
        "deepseek-worker",
        "train",
        "--config",
        "/etc/deepseek/run.json",
    ]
    assert command_line({"name": "w", "command": ["torchrun"], "args": ["-m", "x"]}, env, image) == [
        "torchrun",
        "-m",
        "x",
    ]
    assert command_line({"name": "w", "command": ["python"]}, env, image) == ["python"]  # CMD dropped
    with pytest.raises(EnvError, match="sets no command and image 'busybox' is not one of this repository's"):
        command_line({"name": "w", "image": "busybox"}, env, None)


DOCKERFILE = """
FROM python:3.11-slim AS build
ENV VIRTUAL_ENV=/opt/venv
RUN echo build
FROM nvidia/cuda:12 AS runtime
# the runtime stage
ENV PATH=/opt/venv/bin:$PATH \\
    PYTHONUNBUFFERED=1 \\
    HOME=/tmp
USER 65532:65532
WORKDIR /src
ENTRYPOINT ["deepseek-worker"]
CMD ["--help"]
"""


def test_parse_dockerfile_final_stage_maps_the_venv() -> None:
    config = parse_dockerfile(DOCKERFILE, venv="/work/repo/.venv")
    assert config.entrypoint == ["deepseek-worker"]
    assert config.cmd == ["--help"]
    assert config.user == "65532:65532"
    assert config.workdir == "/src"
    assert config.env["PYTHONUNBUFFERED"] == "1"
    assert config.env["HOME"] == "/tmp"
    assert config.env["PATH"].startswith("/work/repo/.venv/bin:/usr/local/sbin")


@pytest.mark.parametrize(
    ("image", "name"),
    [("ghcr.io/deepseek-operator/worker:0.1.0", "worker"), ("worker", "worker"), ("r/operator@sha256:ab", "operator")],
)
def test_image_short_name(image: str, name: str) -> None:
    assert image_short_name(image) == name


def test_in_root_follows_links_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    (root / "var").mkdir()
    (root / "var" / "run").symlink_to("/run")  # absolute: must stay inside the root
    (root / "data").symlink_to("var/../run")
    assert in_root(str(root), "/var/run/secrets/x") == f"{root}/run/secrets/x"
    assert in_root(str(root), "/data/y") == f"{root}/run/y"
    assert in_root(str(root), "/../../etc") == f"{root}/etc"


def test_log_records_render_with_and_without_timestamps() -> None:
    records = [
        ("2026-01-01T00:00:00.123456789Z", "stdout", True, b"line one"),
        ("2026-01-01T00:00:01.000000000Z", "stderr", False, b"part "),
        ("2026-01-01T00:00:01.500000000Z", "stderr", True, b"two"),
    ]
    assert render(records, timestamps=False) == b"line one\npart two\n"
    assert render(records[:1], timestamps=True) == b"2026-01-01T00:00:00.123456789Z line one\n"
    assert _parse_time(records[0][0]).microsecond == 123456
