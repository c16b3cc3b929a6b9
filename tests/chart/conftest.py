"""Fixtures of the chart tests: the real helm binary (from the testbed's build) and rendered manifests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deepseek_testbed import ControlPlane, wait_until
from deepseek_testbed.binaries import ensure_binaries

from tests.chart.helm import ALL_ON_VALUES, Helm


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(ensure_binaries()["helm"], tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def rendered_defaults(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return helm.render(tmp_path_factory.mktemp("render"))


@pytest.fixture(scope="session")
def rendered_all_on(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return helm.render(tmp_path_factory.mktemp("render"), files=[ALL_ON_VALUES])


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


MONITORING_CRDS = Path(__file__).resolve().parents[1] / "data" / "monitoring.coreos.com.yaml"


def install_monitoring_crds(cp: ControlPlane) -> None:
    """The Prometheus Operator's ServiceMonitor, PodMonitor and PrometheusRule kinds (minimal test CRDs)."""
    cp.kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=deepseek-tests", "-f", str(MONITORING_CRDS)
    )
    cp.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/podmonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
    )


MONITORING_CRD_NAMES = (
    "servicemonitors.monitoring.coreos.com",
    "podmonitors.monitoring.coreos.com",
    "prometheusrules.monitoring.coreos.com",
)


@pytest.fixture(scope="module")
def monitoring_crds(kube_api: ControlPlane) -> Iterator[ControlPlane]:
    """The monitoring CRDs on the shared control plane for this module only: later tests (the inference
    controller's) start from a cluster without the Prometheus Operator API and install it themselves."""
    present = set(kube_api.kubectl("get", "crd", "-o", "name").stdout.split())
    ours = [n for n in MONITORING_CRD_NAMES if f"customresourcedefinition.apiextensions.k8s.io/{n}" not in present]
    install_monitoring_crds(kube_api)
    yield kube_api
    if ours:
        kube_api.kubectl("delete", "crd", "--wait=true", "--timeout=60s", *ours)
        wait_until(
            lambda: (
                not set(ours)
                & {n.split("/", 1)[1] for n in kube_api.kubectl("get", "crd", "-o", "name").stdout.split()}
            ),
            timeout=60,
            what="the monitoring CRDs to be deleted",
        )


@pytest.fixture(scope="session")
def project_crds(kube_api: ControlPlane) -> list[str]:
    """The project's CRDs (crds/) on the session's control plane, as the controller tests install them."""
    files = sorted((Path(__file__).resolve().parents[2] / "crds").glob("*.yaml"))
    for f in files:
        kube_api.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(f))
    names = [f.stem.split("_", 1)[1] + "." + f.stem.split("_", 1)[0] for f in files]
    kube_api.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names])
    # Established comes a moment before the API server's storage for the kind answers ("storage is
    # (re)initializing", 429): wait until a list works.
    for name in names:
        wait_until(
            lambda name=name: kube_api.kubectl("get", name, "-A", check=False).returncode == 0,
            timeout=60,
            what=f"{name} to be served",
        )
    return names
