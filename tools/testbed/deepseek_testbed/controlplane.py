"""A real Kubernetes control plane on loopback: etcd + kube-apiserver, and on demand kube-controller-manager,
kube-scheduler and kwok with fake nodes.

Every component runs as its own process (own session/process group), listens on 127.0.0.1 on a port picked
at run time, logs to `<workdir>/logs/<component>.log` and is stopped by its pid. Usable from plain Python:

    with ControlPlane(Path("/tmp/tb")) as cp:      # etcd + kube-apiserver
        cp.start_cluster()                        # + controller-manager, scheduler, kwok, fake nodes
        cp.kubectl("get", "nodes")
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any

import lightkube
import yaml
from lightkube import codecs
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Node, ServiceAccount

from deepseek_testbed.binaries import Binaries, ensure_binaries
from deepseek_testbed.errors import TestbedError
from deepseek_testbed.nodes import FakeNode, default_nodes
from deepseek_testbed.pki import CertPair, Pki, kubeconfig_dict, write_kubeconfig
from deepseek_testbed.process import ManagedProcess, free_port, free_ports, pid_alive, tail
from deepseek_testbed.waiting import wait_until

log = logging.getLogger("deepseek_testbed")

SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
STATE_FILE = "state.json"
_START_ATTEMPTS = 3  # a port picked at run time can be taken by someone else before the process binds it
_NAME_RE = re.compile(r"[^a-z0-9-]+")


def _wait_https(url: str, ctx: ssl.SSLContext, proc: ManagedProcess, timeout: float) -> None:
    def probe() -> bool:
        proc.check_alive()
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
            return False

    wait_until(probe, timeout=timeout, what=f"{proc.name} at {url}", interval=0.25)


def _insecure_ctx() -> ssl.SSLContext:
    # kube-controller-manager and kube-scheduler serve /healthz with a self-signed certificate of their own.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def dns_label(text: str, max_len: int = 63) -> str:
    """`text` turned into a valid DNS-1123 label prefix (lowercase alphanumerics and '-')."""
    label = _NAME_RE.sub("-", text.lower()).strip("-")
    return label[:max_len].rstrip("-") or "x"


class ControlPlane:
    """etcd + kube-apiserver (TLS, RBAC, service-account keys), optionally the rest of a cluster.

    Attributes once started: `kubeconfig` (admin, system:masters), `server` (https URL), `ca_file`,
    `bin_dir`, `workdir`, `log_dir`, `cluster_running`, `nodes` (fake node names), `timings` (seconds).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        binaries: Binaries | None = None,
        nodes: Sequence[FakeNode] | None = None,
        startup_timeout: float = 180.0,
    ) -> None:
        self.workdir = workdir.resolve()
        self.log_dir = self.workdir / "logs"
        self._binaries = binaries
        self._node_specs = list(nodes) if nodes is not None else default_nodes()
        self.startup_timeout = startup_timeout
        self._procs: dict[str, ManagedProcess] = {}
        self._pki: Pki | None = None
        self._owned = True
        self._admin_kubeconfig: Path | None = None
        self._server: str | None = None
        self.cluster_running = False
        self.nodes: list[str] = []
        self.timings: dict[str, float] = {}
        self._admin_client: lightkube.Client | None = None

    # ----------------------------------------------------------------------------------------------- basics
    @property
    def binaries(self) -> Binaries:
        if self._binaries is None:
            self._binaries = ensure_binaries()
        return self._binaries

    @property
    def bin_dir(self) -> Path:
        return self.binaries.directory

    @property
    def kubeconfig(self) -> Path:
        if self._admin_kubeconfig is None:
            raise TestbedError("the control plane is not started")
        return self._admin_kubeconfig

    @property
    def server(self) -> str:
        if self._server is None:
            raise TestbedError("the control plane is not started")
        return self._server

    @property
    def pki(self) -> Pki:
        if self._pki is None:
            raise TestbedError("the control plane is not started")
        return self._pki

    @property
    def ca_file(self) -> Path:
        return self.pki.ca.cert_path

    @property
    def processes(self) -> Mapping[str, ManagedProcess]:
        return dict(self._procs)

    def log_files(self) -> dict[str, Path]:
        """Component name -> log file (also for components that have exited)."""
        if not self.log_dir.is_dir():
            return {}
        return {p.stem: p for p in sorted(self.log_dir.glob("*.log"))}

    def env(self) -> dict[str, str]:
        """Environment for a subprocess that should talk to this control plane (KUBECONFIG, PATH with kubectl)."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ['PATH']}",
        }

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------- start/stop
    def start(self) -> ControlPlane:
        """Start etcd and kube-apiserver and wait until the API server is ready."""
        if self._server is not None:
            return self
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        bins = self.binaries
        try:
            self._pki = Pki.create(self.workdir / "pki")
            admin = self._pki.client_cert("testbed-admin", ["system:masters"])
            etcd_url = self._start_etcd(bins)
            self._start_apiserver(bins, etcd_url, admin)
            self._write_state()
        except BaseException:
            self.stop()
            raise
        self.timings["api_start_s"] = round(time.monotonic() - t0, 2)
        log.info(
            "kube-apiserver ready at %s in %.1fs (workdir %s)", self._server, self.timings["api_start_s"], self.workdir
        )
        return self

    def _start_etcd(self, bins: Binaries) -> str:
        data_dir = self.workdir / "etcd"
        for attempt in range(_START_ATTEMPTS):
            shutil.rmtree(data_dir, ignore_errors=True)
            client, peer = free_ports(2)
            url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
            proc = ManagedProcess(
                "etcd",
                [
                    str(bins["etcd"]),
                    "--name=testbed",
                    f"--data-dir={data_dir}",
                    f"--listen-client-urls={url}",
                    f"--advertise-client-urls={url}",
                    f"--listen-peer-urls={peer_url}",
                    f"--initial-advertise-peer-urls={peer_url}",
                    f"--initial-cluster=testbed={peer_url}",
                    "--unsafe-no-fsync=true",  # test data: durability is not needed, speed is
                    "--log-level=warn",
                ],
                self.log_dir / "etcd.log",
            )
            proc.start()
            self._procs["etcd"] = proc

            def healthy(health: str = f"{url}/health", p: ManagedProcess = proc) -> bool:
                p.check_alive()
                return self._http_ok(health)

            try:
                wait_until(healthy, timeout=60, what="etcd /health")
                return url
            except TestbedError:
                proc.stop()
                if attempt == _START_ATTEMPTS - 1:
                    raise
                log.warning("etcd did not start (attempt %d), retrying on other ports", attempt + 1)
        raise AssertionError("unreachable")

    @staticmethod
    def _http_ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def _start_apiserver(self, bins: Binaries, etcd_url: str, admin: CertPair) -> None:
        pki = self.pki
        # How kube-apiserver authenticates to a node's kubelet API (`kubectl logs` on the dev cluster's node agent).
        kubelet_client = pki.client_cert("kube-apiserver-kubelet-client", ["system:masters"])
        for attempt in range(_START_ATTEMPTS):
            port = free_port()
            server = f"https://127.0.0.1:{port}"
            proc = ManagedProcess(
                "kube-apiserver",
                [
                    str(bins["kube-apiserver"]),
                    f"--etcd-servers={etcd_url}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={port}",
                    f"--tls-cert-file={pki.serving.cert}",
                    f"--tls-private-key-file={pki.serving.key}",
                    f"--client-ca-file={pki.ca.cert_path}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--service-account-key-file={pki.sa_public_key}",
                    f"--service-account-signing-key-file={pki.sa_private_key}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--authorization-mode=Node,RBAC",
                    "--allow-privileged=true",
                    # The `kubernetes` Service cannot point at a loopback address; nothing here needs it.
                    "--endpoint-reconciler-type=none",
                    # Aggregation layer (APIService) support, as in a kubeadm cluster.
                    f"--requestheader-client-ca-file={pki.front_proxy_ca.cert_path}",
                    "--requestheader-allowed-names=front-proxy-client",
                    "--requestheader-username-headers=X-Remote-User",
                    "--requestheader-group-headers=X-Remote-Group",
                    "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                    f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
                    f"--proxy-client-key-file={pki.front_proxy_client.key}",
                    f"--kubelet-client-certificate={kubelet_client.cert}",
                    f"--kubelet-client-key={kubelet_client.key}",
                    "--profiling=false",
                    "--event-ttl=1h",
                ],
                self.log_dir / "kube-apiserver.log",
            )
            proc.start()
            self._procs["kube-apiserver"] = proc
            ctx = ssl.create_default_context(cafile=str(pki.ca.cert_path))
            ctx.load_cert_chain(str(admin.cert), str(admin.key))
            try:
                _wait_https(f"{server}/readyz", ctx, proc, timeout=self.startup_timeout)
            except TestbedError:
                port_taken = "address already in use" in tail(proc.log_file, 50)
                proc.stop()
                if attempt == _START_ATTEMPTS - 1 or not port_taken:
                    raise
                log.warning("kube-apiserver port %d was taken, retrying", port)
                continue
            self._server = server
            self._admin_kubeconfig = write_kubeconfig(
                self.workdir / "admin.kubeconfig",
                kubeconfig_dict(server, pki.ca.cert_path, "testbed-admin", client=admin),
            )
            return

    def start_cluster(self) -> None:
        """Add kube-controller-manager, kube-scheduler and kwok, register the fake nodes and wait until they
        are Ready and the controller-manager has created the `default` ServiceAccount. Idempotent."""
        if self.cluster_running:
            return
        if not self._owned:
            raise TestbedError(
                f"the attached control plane in {self.workdir} runs without the cluster components; "
                "start it with `python -m deepseek_testbed up --cluster`"
            )
        self.start()
        t0 = time.monotonic()
        try:
            self._start_cluster_processes()
            for spec in self._node_specs:
                self.add_fake_node(spec)
            self._wait_cluster_ready()
        except BaseException:
            for name in ("kwok", "kube-scheduler", "kube-controller-manager"):
                if name in self._procs:
                    self._procs.pop(name).stop()
            raise
        self.cluster_running = True
        self._write_state()
        self.timings["cluster_start_s"] = round(time.monotonic() - t0, 2)
        log.info("cluster components ready in %.1fs; nodes: %s", self.timings["cluster_start_s"], ", ".join(self.nodes))

    def _component_kubeconfig(self, name: str, user: str, groups: Sequence[str] = ()) -> Path:
        pair = self.pki.client_cert(user, groups)
        return write_kubeconfig(
            self.workdir / "kubeconfigs" / f"{name}.kubeconfig",
            kubeconfig_dict(self.server, self.pki.ca.cert_path, user, client=pair),
        )

    def _start_cluster_processes(self) -> None:
        bins, pki = self.binaries, self.pki
        # Each component has the identity kubeadm gives it, so RBAC decides what it may do, as in a cluster.
        kcm_kc = self._component_kubeconfig("kube-controller-manager", "system:kube-controller-manager")
        sched_kc = self._component_kubeconfig("kube-scheduler", "system:kube-scheduler")
        kwok_kc = self._component_kubeconfig("kwok", "kwok-controller", ["system:masters"])
        kcm_port, sched_port = free_ports(2)
        kcm = ManagedProcess(
            "kube-controller-manager",
            [
                str(bins["kube-controller-manager"]),
                f"--kubeconfig={kcm_kc}",
                f"--authentication-kubeconfig={kcm_kc}",
                f"--authorization-kubeconfig={kcm_kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                f"--cert-dir={self.workdir / 'kcm-serving'}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--root-ca-file={pki.ca.cert_path}",
                f"--service-account-private-key-file={pki.sa_private_key}",
                f"--cluster-signing-cert-file={pki.ca.cert_path}",
                f"--cluster-signing-key-file={pki.ca.key_path}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--kube-api-qps=100",
                "--kube-api-burst=200",
                "--profiling=false",
            ],
            self.log_dir / "kube-controller-manager.log",
        )
        sched_cfg = self.workdir / "kube-scheduler.yaml"
        sched_cfg.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {"kubeconfig": str(sched_kc), "qps": 100, "burst": 200},
                    "leaderElection": {"leaderElect": False},
                }
            )
        )
        sched = ManagedProcess(
            "kube-scheduler",
            [
                str(bins["kube-scheduler"]),
                f"--config={sched_cfg}",
                f"--authentication-kubeconfig={sched_kc}",
                f"--authorization-kubeconfig={sched_kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                f"--cert-dir={self.workdir / 'scheduler-serving'}",
                "--profiling=false",
            ],
            self.log_dir / "kube-scheduler.log",
        )
        stage_files = [self._stage_file(n) for n in ("nodes.yaml", "pods.yaml")]
        kwok = ManagedProcess(
            "kwok",
            [
                str(bins["kwok"]),
                f"--kubeconfig={kwok_kc}",
                *(f"--config={f}" for f in stage_files),
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--cidr={POD_CIDR}",
                "--node-ip=10.1.0.1",
                "--node-lease-duration-seconds=40",
            ],
            self.log_dir / "kwok.log",
            # kwok also reads ~/.kwok/kwok.yaml if present; keep a user's own kwok set-up out of the tests.
            env={"KWOK_WORKDIR": str(self.workdir / "kwok")},
        )
        for proc in (kcm, sched, kwok):
            proc.start()
            self._procs[proc.name] = proc
        ctx = _insecure_ctx()
        _wait_https(f"https://127.0.0.1:{kcm_port}/healthz", ctx, kcm, timeout=self.startup_timeout)
        _wait_https(f"https://127.0.0.1:{sched_port}/readyz", ctx, sched, timeout=self.startup_timeout)

    def _stage_file(self, name: str) -> Path:
        # Copied into the work dir so that a running kwok never depends on the installed package's layout.
        target = self.workdir / "kwok-stages" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(resources.files("deepseek_testbed").joinpath("stages", name).read_text())
        return target

    def add_fake_node(self, node: FakeNode) -> None:
        """Register a fake node (kwok makes it Ready within a second or two). Requires the cluster components
        for it to become Ready; the node object itself can be created at any time."""
        client = self._admin()
        manifest = node.manifest(index=len(self.nodes))
        client.create(codecs.from_dict(manifest))
        self.nodes.append(node.name)

    def _wait_cluster_ready(self) -> None:
        client = self._admin()

        def nodes_ready() -> bool:
            for proc in self._procs.values():
                proc.check_alive()
            ready = set()
            for node in client.list(Node):
                for cond in (node.status.conditions if node.status else None) or []:
                    if cond.type == "Ready" and cond.status == "True":
                        ready.add(node.metadata.name if node.metadata else "")
            return set(self.nodes) <= ready

        wait_until(nodes_ready, timeout=self.startup_timeout, what=f"fake nodes {self.nodes} to become Ready (kwok)")

        def default_sa() -> bool:
            self._procs["kube-controller-manager"].check_alive()
            try:
                client.get(ServiceAccount, "default", namespace="default")
            except lightkube.ApiError:
                return False
            return True

        wait_until(
            default_sa, timeout=self.startup_timeout, what="the controller-manager to create ServiceAccount default"
        )

    def stop(self) -> None:
        """Stop every component (reverse start order) by its pid; keep logs, PKI and kubeconfigs, drop etcd data.
        An attached control plane (see `attach`) is left running."""
        if not self._owned:
            return
        for name in reversed(list(self._procs)):
            try:
                self._procs[name].stop()
            except Exception:
                log.exception("could not stop %s", name)
        self._procs.clear()
        self.cluster_running = False
        self.nodes = []
        self._server = None  # a later start() starts afresh
        self._admin_client = None
        shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (self.workdir / STATE_FILE).unlink()

    # ------------------------------------------------------------------------------------ attach / state file
    def _write_state(self, owner_pid: int | None = None) -> None:
        state = {
            "owner_pid": owner_pid or os.getpid(),
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "bin_dir": str(self.bin_dir),
            "cluster": self.cluster_running,
            "nodes": self.nodes,
            "pids": {name: p.pid for name, p in self._procs.items()},
        }
        tmp = self.workdir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.workdir / STATE_FILE)

    @staticmethod
    def read_state(workdir: Path) -> dict[str, Any]:
        path = workdir / STATE_FILE
        try:
            state: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise TestbedError(f"no control plane is running in {workdir} ({path} is missing)") from None
        return state

    @classmethod
    def attach(cls, workdir: Path) -> ControlPlane:
        """Use a control plane that another process (`python -m deepseek_testbed up`) runs in `workdir`.
        `stop()` on the result does nothing; `start_cluster()` works only if it was started with --cluster."""
        workdir = workdir.resolve()
        state = cls.read_state(workdir)
        if not pid_alive(int(state["owner_pid"])):
            raise TestbedError(f"the control plane in {workdir} is gone (process {state['owner_pid']} is not running)")
        cp = cls(workdir, binaries=Binaries(Path(state["bin_dir"])))
        cp._owned = False
        cp._server = state["server"]
        cp._admin_kubeconfig = Path(state["kubeconfig"])
        cp._pki = Pki.load(workdir / "pki")
        cp.cluster_running = bool(state["cluster"])
        cp.nodes = list(state["nodes"])
        return cp

    # -------------------------------------------------------------------------------------------- clients
    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this control plane (admin unless `kubeconfig` is given); text in, text out.
        With check=True a non-zero exit raises TestbedError carrying kubectl's stderr."""
        argv = [str(self.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        res = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and res.returncode != 0:
            raise TestbedError(f"kubectl {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
        return res

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run helm against this control plane with the admin kubeconfig (helm's caches stay in the work dir)."""
        home = self.workdir / "helm"
        env = {
            **self.env(),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        argv = [str(self.bin_dir / "helm"), f"--kubeconfig={self.kubeconfig}", *args]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, env=env)
        if check and res.returncode != 0:
            raise TestbedError(f"helm {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
        return res

    def client(
        self, kubeconfig: Path | None = None, *, namespace: str | None = None, field_manager: str | None = None
    ) -> lightkube.Client:
        """A new lightkube sync client (admin unless `kubeconfig` is given)."""
        config = lightkube.KubeConfig.from_file(str(kubeconfig or self.kubeconfig))
        return lightkube.Client(config=config, namespace=namespace, field_manager=field_manager)

    def _admin(self) -> lightkube.Client:
        # One shared admin client for this class's own calls (tests get fresh ones from client()).
        if self._admin_client is None:
            self._admin_client = self.client()
        return self._admin_client

    def async_client(
        self, kubeconfig: Path | None = None, *, namespace: str | None = None, field_manager: str | None = None
    ) -> lightkube.AsyncClient:
        """A lightkube async client (the operator's client type); close it with `await client.close()`."""
        config = lightkube.KubeConfig.from_file(str(kubeconfig or self.kubeconfig))
        return lightkube.AsyncClient(config=config, namespace=namespace, field_manager=field_manager)

    def user_kubeconfig(self, user: str, groups: Sequence[str] = (), *, namespace: str | None = None) -> Path:
        """A kubeconfig authenticating as `user` in `groups` with a client certificate from the cluster CA.
        Such a user can do nothing until RBAC allows it (only `system:authenticated` discovery rights)."""
        pair = self.pki.client_cert(user, groups)
        safe = dns_label(user)
        return write_kubeconfig(
            self.workdir / "kubeconfigs" / f"user-{safe}-{secrets.token_hex(3)}.kubeconfig",
            kubeconfig_dict(self.server, self.pki.ca.cert_path, user, client=pair, namespace=namespace),
        )

    def service_account_kubeconfig(
        self,
        namespace: str,
        name: str,
        *,
        expiration_seconds: int = 3600,
        audiences: Sequence[str] = (),
        create: bool = False,
    ) -> Path:
        """A kubeconfig with a bound token for ServiceAccount `namespace/name`, minted through the TokenRequest
        API (what a pod's projected token is). `create=True` creates the ServiceAccount if it is missing."""
        client = self._admin()
        if create:
            try:
                client.create(ServiceAccount(metadata=ObjectMeta(name=name, namespace=namespace)), namespace=namespace)
            except lightkube.ApiError as e:
                if e.status.code != 409:
                    raise
        spec = TokenRequestSpec(audiences=list(audiences), expirationSeconds=expiration_seconds)
        result = client.create(ServiceAccount.Token(metadata=ObjectMeta(), spec=spec), name, namespace=namespace)
        token = result.status.token if result.status else None
        if not token:
            raise TestbedError(f"TokenRequest for {namespace}/{name} returned no token")
        user = f"system:serviceaccount:{namespace}:{name}"
        return write_kubeconfig(
            self.workdir / "kubeconfigs" / f"sa-{namespace}-{name}-{secrets.token_hex(3)}.kubeconfig",
            kubeconfig_dict(self.server, self.pki.ca.cert_path, user, token=token, namespace=namespace),
        )

    # ------------------------------------------------------------------------------------------ namespaces
    def create_namespace(self, prefix: str = "t", labels: Mapping[str, str] | None = None) -> str:
        """Create a uniquely named namespace and its `default` ServiceAccount; return the name.

        The ServiceAccount admission plugin is on (as in a real cluster), so a pod needs its ServiceAccount
        to exist; kube-controller-manager creates `default`, but it may not be running (kube_api-only tests),
        so this creates it too (a 409 from a racing controller is fine)."""
        name = f"{dns_label(prefix, 50)}-{secrets.token_hex(3)}"
        client = self._admin()
        client.create(Namespace(metadata=ObjectMeta(name=name, labels=dict(labels or {}))))
        try:
            client.create(ServiceAccount(metadata=ObjectMeta(name="default", namespace=name)), namespace=name)
        except lightkube.ApiError as e:
            if e.status.code != 409:
                raise
        return name

    def delete_namespace(self, name: str) -> None:
        """Delete a namespace without waiting: kube-controller-manager empties it in the background (without
        it the namespace stays Terminating, which is harmless in a throwaway control plane)."""
        with contextlib.suppress(lightkube.ApiError):
            self._admin().delete(Namespace, name)

    def log_tails(self, lines: int = 40, since: Mapping[str, int] | None = None) -> dict[str, str]:
        """Component -> last `lines` lines of its log (after byte offset `since[component]` if given)."""
        offsets = since or {}
        return {name: tail(path, lines, offsets.get(name, 0)) for name, path in self.log_files().items()}

    def log_offsets(self) -> dict[str, int]:
        """Component -> current size of its log (to show later only what was written after now)."""
        return {name: path.stat().st_size for name, path in self.log_files().items()}
