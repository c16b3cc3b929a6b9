"""Fake nodes that kwok manages (only nodes annotated kwok.x-k8s.io/node=fake)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
GPU_RESOURCE = "nvidia.com/gpu"
FAKE_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}


@dataclass(frozen=True)
class FakeNode:
    """A node registered with the given capacity (allocatable = capacity); kwok makes it Ready."""

    name: str
    cpu: str = "16"
    memory: str = "64Gi"
    pods: int = 110
    gpus: int = 0
    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: Sequence[Mapping[str, str]] = ()

    def manifest(self, index: int) -> dict[str, Any]:
        resources: dict[str, str] = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": str(self.pods),
            "ephemeral-storage": "500Gi",
        }
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
            "topology.kubernetes.io/zone": "testbed-a",
        }
        if self.gpus:
            resources[GPU_RESOURCE] = str(self.gpus)
            # The labels NVIDIA's GPU feature discovery would put on a real GPU node.
            labels |= {
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.count": str(self.gpus),
                "nvidia.com/gpu.product": self.gpu_product,
            }
        labels |= dict(self.labels)
        spec: dict[str, Any] = {"podCIDR": f"10.244.{index}.0/24", "podCIDRs": [f"10.244.{index}.0/24"]}
        if self.taints:
            spec["taints"] = [dict(t) for t in self.taints]
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": labels,
                "annotations": {KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE, "node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": spec,
            # Node status may be set on create (a kubelet registers this way); kwok keeps it and adds the rest.
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "addresses": [
                    {"type": "InternalIP", "address": f"10.1.0.{10 + index}"},
                    {"type": "Hostname", "address": self.name},
                ],
            },
        }


def default_nodes(gpu_nodes: int = 2, cpu_nodes: int = 1, taint: bool = False) -> list[FakeNode]:
    """`gpu-node-0..` with 8 GPUs each and `cpu-node-0..` without GPUs."""
    taints = (FAKE_TAINT,) if taint else ()
    nodes = [FakeNode(f"gpu-node-{i}", cpu="32", memory="256Gi", gpus=8, taints=taints) for i in range(gpu_nodes)]
    nodes += [FakeNode(f"cpu-node-{i}", cpu="16", memory="64Gi", taints=taints) for i in range(cpu_nodes)]
    return nodes
