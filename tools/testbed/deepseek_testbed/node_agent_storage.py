"""Local-path storage for the dev cluster: a StorageClass and a dynamic provisioner (like Rancher's
local-path-provisioner or kind's default storage) that gives each PersistentVolumeClaim of the class a
`hostPath` PersistentVolume in a directory of the node agent, pinned to its node by node affinity.

kube-controller-manager's PV controller does the binding (it also gives claims made before the class existed
the default class). A Released volume (its claim deleted) is removed with its directory (reclaim policy
Delete). Runs with an admin identity: a kubelet may not create PersistentVolumes.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import httpx

from deepseek_testbed.node_agent_kube import Kube, KubeError, Obj, path_of

log = logging.getLogger("deepseek_testbed.node_agent")

PROVISIONER = "testbed.deepseek.ai/local-exec"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"


class LocalPathProvisioner:
    def __init__(self, kube: Kube, *, storage_class: str, node: str, root: Path, default: bool = True) -> None:
        self.kube = kube
        self.storage_class = storage_class
        self.node = node
        self.root = root
        self.default = default

    async def ensure_storage_class(self) -> None:
        body: Obj = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": self.storage_class,
                "annotations": {"storageclass.kubernetes.io/is-default-class": str(self.default).lower()},
            },
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        }
        try:
            await self.kube.create(path_of("storage.k8s.io/v1", "storageclasses"), body)
        except KubeError as e:
            if e.code != 409:
                raise

    async def run(self, interval: float = 1.0) -> None:
        while True:
            try:
                await self.sync()
            except (KubeError, httpx.HTTPError, OSError) as err:
                log.warning("local-path provisioner: %s", err)
            await asyncio.sleep(interval)

    async def sync(self) -> None:
        claims = (await self.kube.get(path_of("v1", "persistentvolumeclaims")))["items"]
        volumes = {v["metadata"]["name"]: v for v in (await self.kube.get(path_of("v1", "persistentvolumes")))["items"]}
        for pvc in claims:
            spec = pvc.get("spec") or {}
            if spec.get("storageClassName") != self.storage_class or spec.get("volumeName"):
                continue
            if (pvc.get("status") or {}).get("phase") != "Pending" or pvc["metadata"].get("deletionTimestamp"):
                continue
            name = f"pvc-{pvc['metadata']['uid']}"
            if name not in volumes:
                await self._provision(pvc, name)
        for pv in volumes.values():
            annotations = pv["metadata"].get("annotations") or {}
            if annotations.get(PROVISIONED_BY) != PROVISIONER:
                continue
            if (pv.get("status") or {}).get("phase") in ("Released", "Failed") and (
                pv["spec"].get("persistentVolumeReclaimPolicy") == "Delete"
            ):
                await self._delete(pv)

    async def _provision(self, pvc: Obj, name: str) -> None:
        directory = self.root / name
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o777)  # as local-path-provisioner: any pod user may write (no fsGroup handling)
        meta, spec = pvc["metadata"], pvc["spec"]
        body: Obj = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {PROVISIONED_BY: PROVISIONER}},
            "spec": {
                "capacity": {"storage": ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")},
                "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": self.storage_class,
                "volumeMode": spec.get("volumeMode", "Filesystem"),
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": meta["namespace"],
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
                "hostPath": {"path": str(directory), "type": "DirectoryOrCreate"},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [self.node]}
                                ]
                            }
                        ]
                    }
                },
            },
        }
        try:
            await self.kube.create(path_of("v1", "persistentvolumes"), body)
            log.info("provisioned %s for %s/%s at %s", name, meta["namespace"], meta["name"], directory)
        except KubeError as e:
            if e.code != 409:
                raise

    async def _delete(self, pv: Obj) -> None:
        path = Path(pv["spec"].get("hostPath", {}).get("path", ""))
        if path.is_relative_to(self.root) and path != self.root:
            await asyncio.to_thread(shutil.rmtree, path, True)
        try:
            await self.kube.delete(path_of("v1", "persistentvolumes", name=pv["metadata"]["name"]))
            log.info("deleted released volume %s", pv["metadata"]["name"])
        except KubeError as e:
            if e.code != 404:
                raise
