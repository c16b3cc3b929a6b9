"""A node agent for the dev cluster: registers a real node and runs the pods bound to it as local processes.

A development and test tool (never shipped, never for production): it plays the kubelet for one node of the
`deepseek_testbed` control plane so that the pods this project's operator renders really run the workers.
It runs the container's command in this project's Python environment (the venv's bin first on PATH), not
images. See docs/devcluster.md for what it does and does not do.

    python -m deepseek_testbed.node_agent --cluster-dir /tmp/deepseek-testbed-0   # until SIGTERM/Ctrl-C

Pieces: `node_agent_pod` (one pod: sandbox, volumes, containers, probes, restarts, status),
`node_agent_sandbox` (the container's root file system, run inside its namespaces), `node_agent_net` (pod
network), `node_agent_env` (environment, downward API), `node_agent_server` (kubelet API for `kubectl logs`),
`node_agent_storage` (local-path StorageClass and provisioner), `node_agent_kube` (API client).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import platform
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from deepseek_testbed.errors import TestbedError
from deepseek_testbed.node_agent_env import parse_quantity
from deepseek_testbed.node_agent_images import DEFAULT_PATH, ImageConfig, image_short_name, load_images
from deepseek_testbed.node_agent_kube import Kube, KubeError, Obj, path_of
from deepseek_testbed.node_agent_net import PodNetwork, make_network
from deepseek_testbed.node_agent_pod import PodRunner, file_mode_ok
from deepseek_testbed.node_agent_server import KubeletServer
from deepseek_testbed.node_agent_storage import LocalPathProvisioner
from deepseek_testbed.pki import Pki, kubeconfig_dict, write_kubeconfig

log = logging.getLogger("deepseek_testbed.node_agent")

DEFAULT_NODE_NAME = "local-exec"
NODE_AGENT_ANNOTATION = "testbed.deepseek.ai/node-agent"
LEASE_SECONDS = 40
RENEW_SECONDS = 10.0
STATUS_SECONDS = 60.0
# Without the repository's Dockerfiles (docker/*.Dockerfile), what the project's two images would run.
FALLBACK_IMAGES: dict[str, ImageConfig] = {
    name: ImageConfig(entrypoint=[f"deepseek-{name}"], env={"PYTHONUNBUFFERED": "1", "HOME": "/tmp"}, user="65532")
    for name in ("worker", "operator")
}
REPO_ROOT = Path(__file__).resolve().parents[3]
_EVENT_REPEAT_SECONDS = 30.0
MIN_CPUS = 8


def _now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _memory_total() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1])}Ki"
    return "8Gi"


def _read_first(*paths: str) -> str:
    for p in paths:
        with contextlib.suppress(OSError):
            return Path(p).read_text().strip()
    return ""


class NodeAgent:
    def __init__(
        self,
        *,
        cluster_dir: Path,
        name: str = DEFAULT_NODE_NAME,
        workdir: Path | None = None,
        network: str = "auto",
        cpu: str | None = None,
        memory: str | None = None,
        pods: int = 110,
        storage_class: str | None = "local-exec",
        hide: Sequence[Path] = (),
        images: Mapping[str, ImageConfig] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.cluster_dir = cluster_dir.resolve()
        self.node_name = name
        self.workdir = (workdir or self.cluster_dir / f"node-{name}").resolve()
        self.pods_dir = self.workdir / "pods"
        self.network: PodNetwork = make_network(network)
        self.sandbox_script = Path(__file__).with_name("node_agent_sandbox.py")
        if images is None:
            images = load_images(REPO_ROOT / "docker") or FALLBACK_IMAGES
        self.images = dict(images)
        self.extra_labels = dict(labels or {})
        self.storage_class = storage_class
        # What pods must not see of the host: the control plane's keys and every pod's private files.
        self.hide_paths = sorted({str(self.cluster_dir), str(self.workdir), *(str(p) for p in hide)})
        # What the "image" needs and no volume may hide: the venv, its base interpreter, this source tree.
        self.protect_paths = sorted({sys.prefix, sys.base_prefix, str(REPO_ROOT)})
        for p in ("cpu", "memory"):
            value = cpu if p == "cpu" else memory
            if value is not None:
                parse_quantity(value)  # fail early on a bad --cpu/--memory
        self.capacity: dict[str, str] = {
            # At least MIN_CPUS: CPU requests only steer the scheduler here (nothing is throttled), and the examples
            # ask for 2 CPUs for training besides the operator's 0.1, which must fit on a 2-core laptop.
            "cpu": cpu or str(max(os.cpu_count() or 1, MIN_CPUS)),
            "memory": memory or _memory_total(),
            "pods": str(pods),
            "ephemeral-storage": str(shutil.disk_usage(self.cluster_dir).total),
        }
        self.allocatable = dict(self.capacity)
        self.runners: dict[str, PodRunner] = {}
        self.server = KubeletServer(self)
        self.kube: Kube
        self.admin: Kube
        self._stop = asyncio.Event()
        self._events_sent: dict[tuple[str, str, str], float] = {}
        self._warned_user = False
        self._started_at = _now()
        self._tasks: list[asyncio.Task[Any]] = []

    # ------------------------------------------------------------------------------------ credentials
    def _node_kubeconfig(self, server: str) -> Path:
        # The kubelet's identity: the Node authorizer allows exactly what a kubelet of this node may do.
        self._creds.mkdir(parents=True, exist_ok=True)
        self._creds.chmod(0o700)
        user = f"system:node:{self.node_name}"
        client = self._pki.ca.issue(self._creds, "kubelet-client", user, organizations=["system:nodes"], client=True)
        return write_kubeconfig(
            self.workdir / "node.kubeconfig", kubeconfig_dict(server, self._pki.ca.cert_path, user, client=client)
        )

    def _serving_cert(self) -> tuple[Path, Path]:
        serving = self._pki.ca.issue(
            self._creds,
            "kubelet-serving",
            f"system:node:{self.node_name}",
            server=True,
            dns_names=[self.node_name, "localhost"],
            ip_addresses=sorted({self.network.node_ip, "127.0.0.1"}),
        )
        return serving.cert, serving.key

    # -------------------------------------------------------------------------------------- run
    async def run(self, ready_file: Path | None = None) -> None:
        from deepseek_testbed.controlplane import ControlPlane

        if os.geteuid() != 0:
            raise TestbedError(
                "the node agent needs root (mount and PID namespaces, bind mounts, a bridge for pod networking); "
                "run it as root or with sudo (the dev cluster uses `sudo -n` when it is not root)"
            )
        # Signals first: a SIGTERM during start-up still ends in a clean shutdown (bridge removed).
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGUSR1, self._dump_tasks)
        state = ControlPlane.read_state(self.cluster_dir)
        server = str(state["server"])
        self.workdir.mkdir(parents=True, exist_ok=True)
        # One agent per node: a second one would run every pod twice.
        self._lock = (self.workdir / "agent.lock").open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TestbedError(f"another node agent already runs node {self.node_name} in {self.workdir}") from None
        self._pki = Pki.load(self.cluster_dir / "pki")
        self._creds = self.workdir / "pki"
        self.kube = Kube(
            await asyncio.to_thread(self._node_kubeconfig, server), user_agent=f"node-agent/{self.node_name}"
        )
        self.admin = Kube(Path(state["kubeconfig"]), user_agent="deepseek-node-agent-admin")
        existing = await self._existing_node()
        host, _, port = server.removeprefix("https://").rpartition(":")
        self.network.setup((host, int(port)), prefer_cidr=((existing or {}).get("spec") or {}).get("podCIDR"))
        try:
            await self._run(ready_file)
        finally:
            await self.network.close()
            await self.kube.close()
            await self.admin.close()

    async def _existing_node(self) -> Obj | None:
        deadline = time.monotonic() + 60
        while True:
            try:
                return await self.kube.get_or_none(path_of("v1", "nodes", name=self.node_name))
            except KubeError as e:
                if e.code in (401, 403) and time.monotonic() < deadline:
                    await asyncio.sleep(0.5)  # RBAC/authorizer caches of a control plane that just started
                    continue
                raise

    async def _run(self, ready_file: Path | None) -> None:
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        cert, key = await asyncio.to_thread(self._serving_cert)
        await self.network.start()
        port = await self.server.start(self.network.node_ip, cert, key, self.cluster_dir / "pki" / "ca.crt")
        version = (await self.kube.get("/version")).get("gitVersion", "v0.0.0")
        await self._register(port, version)
        if self.storage_class:
            provisioner = LocalPathProvisioner(
                self.admin, storage_class=self.storage_class, node=self.node_name, root=self.workdir / "volumes"
            )
            await provisioner.ensure_storage_class()
            self._tasks.append(asyncio.create_task(provisioner.run(), name="provisioner"))
        self._tasks += [
            asyncio.create_task(self._lease_loop(), name="lease"),
            asyncio.create_task(self._status_loop(port, version), name="node status"),
            asyncio.create_task(self._watch_pods(), name="pod watch"),
        ]
        log.info(
            "node %s ready: kubelet API https://%s:%d, %s network (%s), pods in %s",
            self.node_name,
            self.network.node_ip,
            port,
            self.network.mode,
            self.network.pod_cidr or "host",
            self.pods_dir,
        )
        if ready_file is not None:
            await asyncio.to_thread(ready_file.write_text, f"{self.node_name} {self.network.node_ip} {port}\n")
        stopper = asyncio.create_task(self._stop.wait())
        await asyncio.wait([stopper, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in self._tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                log.error("node agent task %s failed: %r", t.get_name(), t.exception())
        await self.shutdown()

    async def shutdown(self, grace: float = 10.0) -> None:
        log.info("stopping %d pod(s)", len(self.runners))
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*(r.stop(min(grace, r._grace())) for r in self.runners.values()), return_exceptions=True)
        await self.server.stop()

    # --------------------------------------------------------------------------------- node and lease
    def _node(self, port: int, version: str) -> Obj:
        labels = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine()),
            "node.kubernetes.io/instance-type": "local-exec",
            "topology.kubernetes.io/zone": "testbed-local",
            "type": "local-exec",
            **self.extra_labels,
        }
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": labels,
                "annotations": {NODE_AGENT_ANNOTATION: "true", "node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": {"podCIDR": self.network.pod_cidr, "podCIDRs": [self.network.pod_cidr]}
            if self.network.pod_cidr
            else {},
            "status": self._node_status(port, version),
        }

    def _node_status(self, port: int, version: str) -> Obj:
        now = _now()

        def cond(ctype: str, status: str, reason: str, message: str) -> Obj:
            return {
                "type": ctype,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": self._started_at,
            }

        return {
            "capacity": self.capacity,
            "allocatable": self.allocatable,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                cond("Ready", "True", "KubeletReady", "deepseek node agent is posting ready status"),
            ],
            # Only an InternalIP: kube-apiserver prefers a Hostname address, which nothing here resolves.
            "addresses": [{"type": "InternalIP", "address": self.network.node_ip}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
            "nodeInfo": {
                "machineID": _read_first("/etc/machine-id") or uuid.uuid4().hex,
                "systemUUID": _read_first("/sys/class/dmi/id/product_uuid") or str(uuid.uuid4()),
                "bootID": _read_first("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": platform.release(),
                "osImage": _read_first("/etc/os-release").partition("PRETTY_NAME=")[2].split("\n")[0].strip('"')
                or platform.platform(),
                "containerRuntimeVersion": "local-exec://0.1.0",
                "kubeletVersion": version,
                "operatingSystem": "linux",
                "architecture": "amd64" if platform.machine() == "x86_64" else platform.machine(),
            },
        }

    async def _register(self, port: int, version: str) -> None:
        body = self._node(port, version)
        path = path_of("v1", "nodes", name=self.node_name)
        existing = await self.kube.get_or_none(path)
        if existing is not None and (existing.get("spec") or {}).get("podCIDR") != self.network.pod_cidr:
            # A node's podCIDR cannot change: an earlier run's subnet is taken now, so register afresh (a kubelet
            # may not delete its Node: the admin identity does).
            await self.admin.delete(path)
            existing = None
        if existing is None:
            await self.kube.create(path_of("v1", "nodes"), body)
            return
        await self.kube.merge_patch(path, {"metadata": body["metadata"], "spec": body["spec"]})
        await self.kube.merge_patch(path + "/status", {"status": body["status"]})

    async def _lease_loop(self) -> None:
        path = path_of("coordination.k8s.io/v1", "leases", "kube-node-lease", self.node_name)
        while True:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.node_name, "namespace": "kube-node-lease"},
                "spec": {
                    "holderIdentity": self.node_name,
                    "leaseDurationSeconds": LEASE_SECONDS,
                    "renewTime": _now_micro(),
                },
            }
            try:
                try:
                    await self.kube.merge_patch(path, {"spec": body["spec"]})
                except KubeError as e:
                    if e.code != 404:
                        raise
                    await self.kube.create(path_of("coordination.k8s.io/v1", "leases", "kube-node-lease"), body)
            except (KubeError, httpx.HTTPError) as err:
                log.warning("could not renew the node lease: %s", err)
            await asyncio.sleep(RENEW_SECONDS)

    async def _status_loop(self, port: int, version: str) -> None:
        path = path_of("v1", "nodes", name=self.node_name) + "/status"
        while True:
            await asyncio.sleep(STATUS_SECONDS)
            try:
                await self.kube.merge_patch(path, {"status": self._node_status(port, version)})
            except (KubeError, httpx.HTTPError) as err:
                log.warning("could not update the node status: %s", err)

    # -------------------------------------------------------------------------------------------- pods
    async def _watch_pods(self) -> None:
        path = path_of("v1", "pods")
        selector = {"fieldSelector": f"spec.nodeName={self.node_name}"}
        version: str | None = None
        while True:
            try:
                if version is None:
                    listing = await self.kube.get(path, selector)
                    seen = set()
                    for pod in listing["items"]:
                        seen.add(pod["metadata"]["uid"])
                        self._handle("ADDED", pod)
                    for uid in [u for u in self.runners if u not in seen]:
                        self._handle("DELETED", self.runners[uid].pod)
                    version = listing["metadata"]["resourceVersion"]
                params = {**selector, "resourceVersion": version, "timeoutSeconds": "300"}
                async for event in self.kube.watch(path, params):
                    obj = event["object"]
                    version = obj["metadata"].get("resourceVersion", version)
                    if event["type"] != "BOOKMARK":
                        self._handle(event["type"], obj)
            except KubeError as err:
                if err.code == 410:
                    version = None  # too old: list again
                    continue
                log.warning("pod watch: %s", err)
                await asyncio.sleep(1)
            except (httpx.HTTPError, ValueError) as err:
                log.warning("pod watch interrupted: %s", err)
                await asyncio.sleep(1)

    def _handle(self, kind: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        runner = self.runners.get(uid)
        if kind == "DELETED":
            if runner is not None:
                runner.gone()
                del self.runners[uid]
            return
        if runner is not None:
            runner.update(pod)
            return
        if pod["spec"].get("nodeName") != self.node_name:
            return
        runner = PodRunner(self, pod)
        self.runners[uid] = runner
        log.info("pod %s/%s bound to this node", runner.namespace, runner.name)
        if pod["metadata"].get("deletionTimestamp"):
            runner.start()
            runner.update(pod)  # deleted before it ever ran here: finish it at once
            return
        runner.start()

    @staticmethod
    def _dump_tasks() -> None:
        """SIGUSR1: log where every task of the agent waits (for debugging a stuck pod)."""
        for task in asyncio.all_tasks():
            frames = task.get_stack(limit=3)
            where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(frames))
            log.info("task %s: %s", task.get_name(), where)

    def find_pod(self, namespace: str, name: str) -> PodRunner | None:
        """The newest pod of that name in that namespace on this node."""
        found = [r for r in self.runners.values() if r.namespace == namespace and r.name == name]
        return found[-1] if found else None

    # ------------------------------------------------------------------------ what pods get from the node
    def image(self, container: Obj) -> ImageConfig | None:
        """The configuration of the container's image, if it is one of this repository's."""
        return self.images.get(image_short_name(str(container.get("image", ""))))

    def base_env(self, pod: Obj, container: Obj) -> dict[str, str]:
        """The variables a container has before its own env: its image's ENV (this venv's bin first on PATH)
        and the `kubernetes` Service's."""
        host, port = self.network.api_host, str(self.network.api_port)
        image = self.image(container)
        image_env = dict(image.env) if image else {}
        path = image_env.get("PATH", DEFAULT_PATH)
        venv_bin = str(Path(sys.executable).parent)
        if venv_bin not in path.split(":"):
            path = f"{venv_bin}:{path}"
        return {
            **image_env,
            "PATH": path,
            "HOSTNAME": pod["spec"].get("hostname") or pod["metadata"]["name"],
            "HOME": image_env.get("HOME", "/"),
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
            "KUBERNETES_PORT": f"tcp://{host}:{port}",
            f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}",
            f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
            f"KUBERNETES_PORT_{port}_TCP_PORT": port,
            f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
        }

    def credentials(
        self, pod_sc: Obj, sc: Obj, image: ImageConfig | None = None
    ) -> tuple[int | None, int | None, list[int]]:
        """(uid, gid, supplementary groups) to run as, or (None, None, []) for the agent's own user.

        The pod's runAsUser is used when this agent may switch users (root) and that user can run the
        project's Python (an interpreter under a private home directory cannot be run by another user);
        otherwise the container runs as the agent's user, still with every capability dropped."""
        image_uid, _, image_gid = ((image.user if image else None) or "").partition(":")
        uid: Any = sc.get("runAsUser", pod_sc.get("runAsUser", image_uid if image_uid.isdigit() else None))
        if uid is None or os.geteuid() != 0:
            return None, None, []
        group: Any = sc.get("runAsGroup", pod_sc.get("runAsGroup", image_gid if image_gid.isdigit() else None))
        gid = int(group) if group is not None else 0  # the image's group would be root's too
        groups = [int(g) for g in pod_sc.get("supplementalGroups") or []]
        if pod_sc.get("fsGroup") is not None:
            groups.append(int(pod_sc["fsGroup"]))
        if not file_mode_ok(Path(sys.executable), int(uid), {gid, *groups}):
            if not self._warned_user:
                log.warning(
                    "containers run as this agent's user, not as their runAsUser: user %s cannot run %s",
                    uid,
                    Path(sys.executable).resolve(),
                )
                self._warned_user = True
            return None, None, []
        return int(uid), gid, groups

    async def event(self, pod: Obj, type_: str, reason: str, message: str) -> None:
        """Post an Event about `pod` as the kubelet would (the same one at most every 30 s)."""
        meta = pod["metadata"]
        key = (meta["uid"], reason, message)
        now = time.monotonic()
        if now - self._events_sent.get(key, -1e9) < _EVENT_REPEAT_SECONDS:
            return
        self._events_sent[key] = now
        ts = _now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": "kubelet", "host": self.node_name},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node_name,
            "firstTimestamp": ts,
            "lastTimestamp": ts,
            "count": 1,
        }
        try:
            await self.kube.create(path_of("v1", "events", meta["namespace"]), body)
        except (KubeError, httpx.HTTPError) as err:
            log.debug("event %s for %s not posted: %s", reason, meta["name"], err)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deepseek_testbed.node_agent", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--cluster-dir", type=Path, required=True, help="work directory of the control plane")
    parser.add_argument("--name", default=DEFAULT_NODE_NAME, help="node name (default %(default)s)")
    parser.add_argument("--workdir", type=Path, help="pod and volume directories (default CLUSTER_DIR/node-NAME)")
    parser.add_argument("--network", choices=["auto", "bridge", "host"], default="auto")
    parser.add_argument("--cpu", help=f"cpu capacity to report (default: this machine's cores, at least {MIN_CPUS})")
    parser.add_argument("--memory", help="memory capacity to report (default: this machine's memory)")
    parser.add_argument("--pods", type=int, default=110)
    parser.add_argument("--storage-class", default="local-exec", help="'' for no StorageClass/provisioner")
    parser.add_argument(
        "--images-dir",
        type=Path,
        default=REPO_ROOT / "docker",
        help="Dockerfiles whose final stage tells how an image's containers run (default %(default)s)",
    )
    parser.add_argument("--ready-file", type=Path, help="written once the node is registered")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        agent = NodeAgent(
            cluster_dir=args.cluster_dir,
            name=args.name,
            workdir=args.workdir,
            network=args.network,
            cpu=args.cpu,
            memory=args.memory,
            pods=args.pods,
            storage_class=args.storage_class or None,
            images=load_images(args.images_dir) or FALLBACK_IMAGES,
        )
        asyncio.run(agent.run(args.ready_file))
    except TestbedError as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
