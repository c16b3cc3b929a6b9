"""Pod networking for the dev cluster's node agent.

`BridgeNetwork` (needs root: CAP_NET_ADMIN): a host bridge `dsa<N>` with the node's pod subnet
`10.245.<N>.0/24` (gateway `.1`, which is also the node's InternalIP), one veth pair per pod whose pod end is
`eth0` in the pod's own network namespace. Every pod has its own IP, so two replicas can listen on one port;
the host (and so kube-apiserver, probes, the quickstart) reaches pods at their IPs, and pods reach the host.
The `kubernetes` Service address 10.96.0.1:443 is put on the bridge too and forwarded (a TCP relay bound to
this bridge, so several dev clusters on one machine never see each other's) to the real kube-apiserver, whose
certificate names 10.96.0.1. Other Service ClusterIPs are not routed (there is no kube-proxy).

`HostNetwork`: pods share the host's network namespace (like hostNetwork: true); pod IP 127.0.0.1; two pods
listening on one port clash. Used when the bridge cannot be made (no root).

Several agents may run on one machine (parallel test sessions): subnets are picked under a file lock, and a
bridge whose owner process has died is removed by the next agent that starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import secrets
import socket
import subprocess
import tempfile
from pathlib import Path

from deepseek_testbed.errors import TestbedError
from deepseek_testbed.process import pid_alive

log = logging.getLogger("deepseek_testbed.node_agent")

SUBNET_BASE = "10.245"
KUBERNETES_SERVICE_IP = "10.96.0.1"
KUBERNETES_SERVICE_PORT = 443
_BRIDGE_PREFIX = "dsa"
_STATE_DIR = Path(tempfile.gettempdir()) / "deepseek-node-agent-net"


def _ip(*args: str, netns_pid: int | None = None, stdin: str | None = None) -> str:
    argv = ["ip", *args]
    if netns_pid is not None:
        argv = ["nsenter", f"--net=/proc/{netns_pid}/ns/net", "--", *argv]
    res = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False, timeout=30)
    if res.returncode != 0:
        raise TestbedError(f"`{' '.join(argv)}` failed: {res.stderr.strip()}")
    return res.stdout


class PodNetwork:
    """Interface of both network modes."""

    mode = "abstract"
    #: the node's InternalIP (where the kubelet API listens and what pods see as their host)
    node_ip = "127.0.0.1"
    pod_cidr: str | None = None
    #: what pods get as KUBERNETES_SERVICE_HOST / _PORT
    api_host = "127.0.0.1"
    api_port = 443

    def setup(self, apiserver: tuple[str, int], prefer_cidr: str | None = None) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        """Start what must run in the event loop (the API relay)."""

    def needs_sandbox_process(self) -> bool:
        return False

    async def attach(self, pause_pid: int) -> str:
        """Give the pod whose sandbox process is `pause_pid` its network; return the pod IP."""
        raise NotImplementedError

    def release(self, ip: str) -> None:
        pass

    async def close(self) -> None:
        pass


class HostNetwork(PodNetwork):
    mode = "host"

    def setup(self, apiserver: tuple[str, int], prefer_cidr: str | None = None) -> None:
        self.api_host, self.api_port = apiserver

    async def attach(self, pause_pid: int) -> str:
        return "127.0.0.1"


class BridgeNetwork(PodNetwork):
    mode = "bridge"

    def __init__(self, state_dir: Path = _STATE_DIR) -> None:
        self._state_dir = state_dir
        self.bridge = ""
        self._subnet: ipaddress.IPv4Network | None = None
        self._free: list[str] = []
        self._apiserver: tuple[str, int] = ("127.0.0.1", 443)
        self._relay: asyncio.Server | None = None
        self._relay_sock: socket.socket | None = None
        self.api_host, self.api_port = KUBERNETES_SERVICE_IP, KUBERNETES_SERVICE_PORT

    @staticmethod
    def available() -> str | None:
        """None if this mode can work here, else why not."""
        if os.geteuid() != 0:
            return "pod networking needs root (network namespaces, a bridge and veth pairs)"
        for tool in ("ip", "nsenter"):
            if not any(Path(d, tool).exists() for d in os.environ.get("PATH", "/usr/sbin:/usr/bin").split(":")):
                return f"`{tool}` is missing (Debian: apt-get install iproute2 util-linux)"
        return None

    def setup(self, apiserver: tuple[str, int], prefer_cidr: str | None = None) -> None:
        """Make the bridge; `prefer_cidr` (the node's podCIDR from an earlier run) is kept if still free, since
        a node's podCIDR cannot change."""
        self._apiserver = apiserver
        self._state_dir.mkdir(parents=True, exist_ok=True)
        with (self._state_dir / "lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._remove_stale_bridges()
            index = self._pick_index(prefer_cidr)
            self.bridge = f"{_BRIDGE_PREFIX}{index}"
            self._subnet = ipaddress.IPv4Network(f"{SUBNET_BASE}.{index}.0/24")
            gateway = str(self._subnet.network_address + 1)
            try:
                _ip("link", "add", self.bridge, "type", "bridge")
                (self._state_dir / f"{self.bridge}.owner").write_text(str(os.getpid()))
                _ip("addr", "add", f"{gateway}/24", "dev", self.bridge)
                _ip("addr", "add", f"{KUBERNETES_SERVICE_IP}/32", "dev", self.bridge)
                _ip("link", "set", self.bridge, "up")
            except TestbedError:
                self._delete_bridge(self.bridge)
                raise
        self.node_ip = gateway
        self.pod_cidr = str(self._subnet)
        self._free = [str(h) for h in self._subnet.hosts()][1:]  # .1 is the gateway
        log.info("pod network: bridge %s, subnet %s", self.bridge, self._subnet)

    def _pick_index(self, prefer_cidr: str | None) -> int:
        used: set[str] = set()
        for iface in json.loads(_ip("-j", "-4", "addr", "show") or "[]"):
            for addr in iface.get("addr_info", []):
                used.add(".".join(str(addr.get("local", "")).split(".")[:3]))
        if prefer_cidr and prefer_cidr.startswith(SUBNET_BASE + ".") and prefer_cidr.endswith(".0/24"):
            prefix = prefer_cidr.removesuffix(".0/24")
            if prefix not in used:
                return int(prefix.rsplit(".", 1)[1])
        start = secrets.randbelow(200)
        for k in range(250):
            index = 1 + (start + k) % 250
            if f"{SUBNET_BASE}.{index}" not in used:
                return index
        raise TestbedError(f"no free /24 left in {SUBNET_BASE}.0.0/16 for the node agent's pod network")

    def _remove_stale_bridges(self) -> None:
        for owner in self._state_dir.glob(f"{_BRIDGE_PREFIX}*.owner"):
            try:
                pid = int(owner.read_text().strip())
            except (OSError, ValueError):
                pid = 0
            if pid and pid_alive(pid):
                continue
            log.info("removing bridge %s left by a node agent that is gone", owner.stem)
            self._delete_bridge(owner.stem)

    def _delete_bridge(self, name: str) -> None:
        with contextlib.suppress(TestbedError):
            _ip("link", "del", name)
        (self._state_dir / f"{name}.owner").unlink(missing_ok=True)

    def needs_sandbox_process(self) -> bool:
        return True

    async def start(self) -> None:
        # The relay socket is bound to this bridge: another agent's relay on its own bridge may use the same
        # address and port, and each pod reaches its own cluster's API server.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.bridge.encode())
        sock.bind((KUBERNETES_SERVICE_IP, KUBERNETES_SERVICE_PORT))
        sock.listen(128)
        sock.setblocking(False)
        self._relay_sock = sock
        self._relay = await asyncio.start_server(self._relay_connection, sock=sock)

    async def _relay_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._apiserver)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def attach(self, pause_pid: int) -> str:
        if not self._free:
            raise TestbedError(f"no free pod IP left in {self._subnet}")
        ip = self._free.pop(0)
        suffix = secrets.token_hex(4)
        host_end, pod_end = f"dsh{suffix}", f"dsp{suffix}"
        assert self._subnet is not None
        gateway = str(self._subnet.network_address + 1)

        def configure() -> None:
            _ip("link", "add", host_end, "type", "veth", "peer", "name", pod_end, "netns", str(pause_pid))
            _ip("link", "set", host_end, "master", self.bridge, "up")
            _ip(
                "-batch",
                "-",
                netns_pid=pause_pid,
                stdin="\n".join(
                    [
                        "link set lo up",
                        f"link set {pod_end} name eth0",
                        f"addr add {ip}/{self._subnet.prefixlen if self._subnet else 24} dev eth0",
                        "link set eth0 up",
                        f"route add default via {gateway}",
                    ]
                )
                + "\n",
            )

        try:
            await asyncio.to_thread(configure)
        except TestbedError:
            self._free.append(ip)
            with contextlib.suppress(TestbedError):
                _ip("link", "del", host_end)
            raise
        return ip

    def release(self, ip: str) -> None:
        # The veth pair disappears with the pod's network namespace (when its last process exits).
        if ip not in self._free:
            self._free.append(ip)

    async def close(self) -> None:
        if self._relay is not None:
            self._relay.close()
            self._relay = None
        if self._relay_sock is not None:
            self._relay_sock.close()
            self._relay_sock = None
        if self.bridge:
            self._delete_bridge(self.bridge)
            self.bridge = ""


def make_network(mode: str) -> PodNetwork:
    """`bridge`, `host`, or `auto` (bridge when possible, else host with a warning)."""
    if mode == "host":
        return HostNetwork()
    why_not = BridgeNetwork.available()
    if mode == "bridge" and why_not:
        raise TestbedError(f"--network bridge: {why_not}")
    if why_not:
        log.warning("pods share the host network (%s); two pods listening on one port will clash", why_not)
        return HostNetwork()
    return BridgeNetwork()
