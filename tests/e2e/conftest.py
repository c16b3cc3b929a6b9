"""Fixtures of the end-to-end tier: one dev cluster per session (control plane, the `local-exec` node whose
pods the node agent runs as local processes, the CRDs and the operator as a process).

It is a control plane of its own, apart from the `kube_cluster` fixture's: there, kwok's fake GPU nodes would
take the pods; here every pod must really run.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator
from typing import Any

import pytest
from deepseek_testbed import ensure_binaries
from deepseek_testbed.devcluster import DevCluster
from deepseek_testbed.process import tail

_CLUSTER = pytest.StashKey[DevCluster]()


@pytest.fixture(scope="session")
def dev_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    cluster = DevCluster(tmp_path_factory.mktemp("devcluster"), binaries=ensure_binaries())
    request.config.stash[_CLUSTER] = cluster
    with cluster:
        yield cluster


class Kubectl:
    """kubectl against the dev cluster, in one namespace, JSON in and out."""

    def __init__(self, cluster: DevCluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace

    def __call__(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> str:
        return self.cluster.cp.kubectl("-n", self.namespace, *args, input=input, check=check, timeout=timeout).stdout

    def apply(self, manifest: str | dict[str, Any] | list[dict[str, Any]]) -> None:
        text = (
            manifest
            if isinstance(manifest, str)
            else json.dumps(
                {"apiVersion": "v1", "kind": "List", "items": manifest} if isinstance(manifest, list) else manifest
            )
        )
        self("apply", "-f", "-", input=text)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(self("get", kind, name, "-o", "json"))
        return obj

    def try_get(self, kind: str, name: str) -> dict[str, Any] | None:
        out = self.cluster.cp.kubectl("-n", self.namespace, "get", kind, name, "-o", "json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None


@pytest.fixture
def kube(dev_cluster: DevCluster, request: pytest.FixtureRequest) -> Iterator[Kubectl]:
    """kubectl in a fresh namespace of the dev cluster that enforces Pod Security `restricted` (as the project's
    pods must pass it); deleted afterwards, not awaited."""
    name = dev_cluster.cp.create_namespace(
        prefix=request.node.name[:40], labels={"pod-security.kubernetes.io/enforce": "restricted"}
    )
    yield Kubectl(dev_cluster, name)
    dev_cluster.cp.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    cluster = item.config.stash.get(_CLUSTER, None)
    if cluster is not None and report.failed and "dev_cluster" in getattr(item, "fixturenames", ()):
        report.sections.append(
            ("dev cluster node-agent log (last 60 lines)", tail(cluster.cp.log_dir / "node-agent.log", 60))
        )
        report.sections.append(
            (f"dev cluster operator log ({cluster.operator_mode}, last 60 lines)", cluster.operator_logs(60))
        )
        report.sections.append(("dev cluster logs", f"all logs: {cluster.cp.log_dir}"))
    return report
