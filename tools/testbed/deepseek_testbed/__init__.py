"""deepseek_testbed: a real Kubernetes control plane for tests and local development (never shipped).

etcd + kube-apiserver built from the Go module proxy (tools/testbed/build.sh), optionally with
kube-controller-manager, kube-scheduler and kwok-managed fake (GPU) nodes. See docs/testbed.md.
"""

from deepseek_testbed.binaries import Binaries, ensure_binaries
from deepseek_testbed.controlplane import ControlPlane, dns_label
from deepseek_testbed.errors import TestbedError
from deepseek_testbed.fates import EXIT_CODE, FATE, FATES, RUN_SECONDS, fate_annotations
from deepseek_testbed.nodes import GPU_RESOURCE, FakeNode, default_nodes
from deepseek_testbed.waiting import wait_until

__all__ = [
    "EXIT_CODE",
    "FATE",
    "FATES",
    "GPU_RESOURCE",
    "RUN_SECONDS",
    "Binaries",
    "ControlPlane",
    "FakeNode",
    "TestbedError",
    "default_nodes",
    "dns_label",
    "ensure_binaries",
    "fate_annotations",
    "wait_until",
]
