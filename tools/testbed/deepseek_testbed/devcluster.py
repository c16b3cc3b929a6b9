"""The local dev cluster: the test control plane (etcd, kube-apiserver, controller-manager, scheduler) with one
real node, `local-exec`, whose pods the node agent runs as local processes; the CRDs; and the operator.

    python -m deepseek_testbed devcluster up [--workdir D] [--detach]   # prints the kubeconfig when ready
    python -m deepseek_testbed devcluster down [--workdir D]
    python -m deepseek_testbed devcluster status [--workdir D]

A development and test tool, never shipped. The operator is installed with the project's Helm chart
(charts/deepseek-operator: its CRDs, RBAC and Deployment) and so runs as a pod on `local-exec` with the chart's
ServiceAccount, or (`operator="process"`) as a local process with the admin kubeconfig, its metrics and health
endpoints on 127.0.0.1 ports picked at run time. See docs/devcluster.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from deepseek_testbed.binaries import Binaries, ensure_binaries
from deepseek_testbed.controlplane import ControlPlane
from deepseek_testbed.errors import TestbedError
from deepseek_testbed.node_agent import DEFAULT_NODE_NAME, REPO_ROOT
from deepseek_testbed.process import ManagedProcess, free_ports, pid_alive, prepare_workdir, tail
from deepseek_testbed.waiting import wait_until

log = logging.getLogger("deepseek_testbed.devcluster")

STATE_FILE = "devcluster.json"
MARKER = ".deepseek-devcluster"
OPERATOR_RELEASE = "deepseek-operator"
OPERATOR_NAMESPACE = "deepseek-system"
OPERATOR_MODES = ("chart", "process", "none")


def default_workdir() -> Path:
    env = os.environ.get("DEEPSEEK_DEVCLUSTER_WORKDIR")
    return Path(env) if env else Path(tempfile.gettempdir()) / f"deepseek-devcluster-{os.getuid()}"


class DevCluster:
    """Control plane + node agent (+ CRDs + operator). `start()` returns once the node is Ready (and the
    operator answers its health check); `stop()` ends everything it started."""

    def __init__(
        self,
        workdir: Path,
        *,
        binaries: Binaries | None = None,
        network: str = "auto",
        node_name: str = DEFAULT_NODE_NAME,
        cpu: str | None = None,
        memory: str | None = None,
        operator: str = "auto",
        operator_env: Mapping[str, str] | None = None,
        repo_root: Path = REPO_ROOT,
        startup_timeout: float = 180.0,
    ) -> None:
        self.workdir = workdir.resolve()
        self.repo_root = repo_root
        self.node_name = node_name
        self.cp = ControlPlane(self.workdir, binaries=binaries, nodes=[], startup_timeout=startup_timeout)
        self._network, self._cpu, self._memory = network, cpu, memory
        if operator == "auto":
            operator = "chart" if (repo_root / "charts" / "deepseek-operator").is_dir() else "process"
        if operator not in OPERATOR_MODES:
            raise TestbedError(f"operator={operator!r}: expected one of {', '.join(OPERATOR_MODES)} or auto")
        self.operator_mode = operator
        self._operator_env = dict(operator_env or {})
        self.agent: ManagedProcess | None = None
        self.operator: ManagedProcess | None = None
        self.operator_metrics_url = ""
        self.operator_health_url = ""
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------ start
    def __enter__(self) -> DevCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> DevCluster:
        t0 = time.monotonic()
        try:
            self.cp.start()
            self.cp.start_cluster()
            self.timings["control_plane_s"] = round(time.monotonic() - t0, 1)
            self.start_agent()
            self.timings["node_s"] = round(time.monotonic() - t0 - self.timings["control_plane_s"], 1)
            if self.operator_mode == "chart":
                self.install_operator_chart()  # the chart installs the CRDs too
            else:
                self.install_crds()
            if self.operator_mode == "process":
                self.start_operator()
            self._write_state()
        except BaseException:
            self.stop()
            raise
        self.timings["start_s"] = round(time.monotonic() - t0, 1)
        return self

    def start_agent(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "deepseek_testbed.node_agent",
            f"--cluster-dir={self.workdir}",
            f"--name={self.node_name}",
            f"--network={self._network}",
        ]
        if self._cpu:
            argv.append(f"--cpu={self._cpu}")
        if self._memory:
            argv.append(f"--memory={self._memory}")
        ready = self.workdir / "node-agent.ready"
        ready.unlink(missing_ok=True)
        argv.append(f"--ready-file={ready}")
        if os.geteuid() != 0:
            argv = [*_sudo(), *argv]
        self.agent = ManagedProcess("node-agent", argv, self.cp.log_dir / "node-agent.log")
        self.agent.start()
        agent = self.agent

        def node_ready() -> bool:
            agent.check_alive()
            if not ready.exists():
                return False
            res = self.cp.kubectl("get", "node", self.node_name, "-o", "json", check=False)
            if res.returncode != 0:
                return False
            conditions = json.loads(res.stdout).get("status", {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        wait_until(node_ready, timeout=self.cp.startup_timeout, what=f"node {self.node_name} to become Ready")

    def install_crds(self) -> None:
        crds = self.repo_root / "crds"
        if not crds.is_dir():
            raise TestbedError(f"no CRDs in {crds} (run `make crds`)")
        self.cp.kubectl("apply", "--server-side", "-f", str(crds))
        for path in sorted(crds.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    name = doc["metadata"]["name"]
                    self.cp.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")

    def start_operator(self) -> None:
        metrics, health = free_ports(2)
        env = {
            "KUBECONFIG": str(self.cp.kubeconfig),
            "DEEPSEEK_METRICS_PORT": str(metrics),
            "DEEPSEEK_LIVENESS_PORT": str(health),
            **self._operator_env,
        }
        exe = Path(sys.executable).with_name("deepseek-operator")
        self.operator = ManagedProcess(
            "deepseek-operator", [str(exe), "--log-format=plain"], self.cp.log_dir / "deepseek-operator.log", env=env
        )
        self.operator.start()
        self.operator_metrics_url = f"http://127.0.0.1:{metrics}/metrics"
        self.operator_health_url = f"http://127.0.0.1:{health}/healthz"
        operator = self.operator

        def healthy() -> bool:
            operator.check_alive()
            try:
                with urllib.request.urlopen(self.operator_health_url, timeout=3) as resp:
                    return bool(resp.status == 200)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        wait_until(healthy, timeout=self.cp.startup_timeout, what="the operator's /healthz")

    def install_operator_chart(self) -> None:
        """`helm install` the operator's chart (CRDs, RBAC, Deployment, metrics Service) and wait until the
        operator pod runs on the node; its /metrics is then reached through the metrics Service's endpoint."""
        chart = self.repo_root / "charts" / "deepseek-operator"
        args = ["upgrade", "--install", OPERATOR_RELEASE, str(chart), "-n", OPERATOR_NAMESPACE, "--create-namespace"]
        for i, (key, value) in enumerate(self._operator_env.items()):
            args += ["--set", f"extraEnv[{i}].name={key}", "--set-string", f"extraEnv[{i}].value={value}"]
        self.cp.helm(*args, "--wait", "--timeout=5m", timeout=360)
        self.operator_metrics_url = self._chart_url("http-metrics", "/metrics")

    def _chart_url(self, port: str, path: str) -> str:
        service = f"{OPERATOR_RELEASE}-metrics"

        def endpoint() -> list[str] | None:
            found = resolve_service(self.cp.kubectl, OPERATOR_NAMESPACE, service, port)
            return found or None

        found: list[str] = wait_until(endpoint, timeout=self.cp.startup_timeout, what=f"endpoints of {service}")
        return f"http://{found[0]}{path}"

    def operator_logs(self, lines: int = 60) -> str:
        """The operator's last log lines (its pod's, through `kubectl logs`, or its process log)."""
        if self.operator_mode == "chart":
            res = self.cp.kubectl(
                "logs", "-n", OPERATOR_NAMESPACE, f"deploy/{OPERATOR_RELEASE}", f"--tail={lines}", check=False
            )
            return res.stdout + res.stderr
        return tail(self.cp.log_dir / "deepseek-operator.log", lines)

    # ------------------------------------------------------------------------------------------- stop
    def stop(self) -> None:
        """Stop the operator, then the node agent (which stops its pods), then the control plane."""
        if self.operator is not None:
            self.operator.stop()
            self.operator = None
        if self.agent is not None:
            self.agent.stop(timeout=60)  # it gives every pod up to 10 s to stop
            self.agent = None
        self.cp.stop()
        with contextlib.suppress(FileNotFoundError):
            (self.workdir / STATE_FILE).unlink()

    def check_alive(self) -> None:
        for proc in [*self.cp.processes.values(), self.agent, self.operator]:
            if proc is not None:
                proc.check_alive()

    # ------------------------------------------------------------------------------------------ state
    def _write_state(self) -> None:
        state = {
            "owner_pid": os.getpid(),
            "kubeconfig": str(self.cp.kubeconfig),
            "server": self.cp.server,
            "kubectl": str(self.cp.bin_dir / "kubectl"),
            "node": self.node_name,
            "logs": str(self.cp.log_dir),
            "operator_metrics_url": self.operator_metrics_url,
            "operator_health_url": self.operator_health_url,
            "pids": {
                "node-agent": self.agent.pid if self.agent else None,
                "deepseek-operator": self.operator.pid if self.operator else None,
            },
        }
        tmp = self.workdir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.workdir / STATE_FILE)

    @staticmethod
    def read_state(workdir: Path) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads((workdir / STATE_FILE).read_text())
        except FileNotFoundError:
            raise TestbedError(f"no dev cluster runs in {workdir}") from None
        return state

    # ------------------------------------------------------------------------------------ services
    def service_endpoints(self, namespace: str, service: str, port: int | str | None = None) -> list[str]:
        """`host:port` of the ready endpoints behind a Service port, as kube-proxy would pick them (from the
        Service's EndpointSlices; `port` is the Service port's number or name, default its first port)."""
        return resolve_service(self.cp.kubectl, namespace, service, port)


def resolve_service(kubectl: Any, namespace: str, service: str, port: int | str | None = None) -> list[str]:
    """See `DevCluster.service_endpoints`; `kubectl` is a ControlPlane.kubectl-like callable."""
    svc = json.loads(kubectl("get", "service", service, "-n", namespace, "-o", "json").stdout)
    ports = svc["spec"].get("ports") or []
    if not ports:
        raise TestbedError(f"service {namespace}/{service} has no ports")
    wanted = ports[0]
    if port is not None:
        matches = [p for p in ports if str(p.get("port")) == str(port) or p.get("name") == port]
        if not matches:
            raise TestbedError(f"service {namespace}/{service} has no port {port!r}")
        wanted = matches[0]
    slices = json.loads(
        kubectl(
            "get", "endpointslices", "-n", namespace, "-l", f"kubernetes.io/service-name={service}", "-o", "json"
        ).stdout
    )["items"]
    found: list[str] = []
    for sl in slices:
        target = next(
            (p["port"] for p in sl.get("ports") or [] if (p.get("name") or "") == (wanted.get("name") or "")), None
        )
        if target is None:
            continue
        for ep in sl.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready", True):
                found += [f"{addr}:{target}" for addr in ep.get("addresses") or []]
    return sorted(found)


def _sudo() -> list[str]:
    """`sudo -n` for the node agent when this process is not root (and passwordless sudo works)."""
    if shutil.which("sudo"):
        probe = subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False, timeout=30)
        if probe.returncode == 0:
            return ["sudo", "-n", "--preserve-env=PATH"]
    raise TestbedError(
        "the dev cluster's node agent needs root (namespaces, bind mounts, a bridge): run as root or allow "
        "passwordless sudo"
    )


# ---------------------------------------------------------------------------------------------- CLI
def _prepare_workdir(workdir: Path) -> None:
    prepare_workdir(
        workdir,
        state_file=STATE_FILE,
        marker=MARKER,
        what="a dev cluster",
        down_command=f"python -m deepseek_testbed devcluster down --workdir {workdir}",
    )


def up(
    workdir: Path,
    *,
    network: str = "auto",
    cpu: str | None = None,
    memory: str | None = None,
    operator: str = "auto",
) -> int:
    """Run a dev cluster in the foreground until SIGTERM/SIGINT; prints the kubeconfig path when ready."""
    _prepare_workdir(workdir)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    cluster = DevCluster(
        workdir, binaries=ensure_binaries(), network=network, cpu=cpu, memory=memory, operator=operator
    )
    try:
        cluster.start()
        print(cluster.cp.kubeconfig, flush=True)
        log.info(
            "dev cluster ready in %.0fs: export KUBECONFIG=%s   (kubectl: %s; logs: %s)",
            cluster.timings["start_s"],
            cluster.cp.kubeconfig,
            cluster.cp.bin_dir / "kubectl",
            cluster.cp.log_dir,
        )
        if cluster.operator_metrics_url:
            log.info("operator metrics: %s", cluster.operator_metrics_url)
        while True:
            cluster.check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        log.info("stopping the dev cluster")
        return 0
    except TestbedError as e:
        log.error("%s", e)
        return 1
    finally:
        cluster.stop()


def up_detached(workdir: Path, extra: list[str], timeout: float = 900.0, *, print_kubeconfig: bool = True) -> int:
    """Start `devcluster up` in the background (own session); return once it is ready. Its output goes to
    `<workdir>.log` beside the work directory (which `up` wipes)."""
    workdir.parent.mkdir(parents=True, exist_ok=True)
    log_file = workdir.with_name(workdir.name + ".log")
    with log_file.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deepseek_testbed", "devcluster", "up", f"--workdir={workdir}", *extra],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.error("the dev cluster did not start:\n%s", tail(log_file, 40))
            return 1
        with contextlib.suppress(TestbedError, ValueError):
            state = DevCluster.read_state(workdir)
            if int(state["owner_pid"]) == proc.pid:
                if print_kubeconfig:
                    print(state["kubeconfig"], flush=True)
                log.info("dev cluster runs in the background (pid %d, log %s)", proc.pid, log_file)
                return 0
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGTERM)
    log.error("the dev cluster did not become ready within %.0fs; log: %s", timeout, log_file)
    return 1


def down(workdir: Path, timeout: float = 120.0) -> int:
    try:
        state = DevCluster.read_state(workdir)
    except TestbedError as e:
        log.error("%s", e)
        return 1
    owner = int(state["owner_pid"])
    if pid_alive(owner):
        os.kill(owner, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(owner) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(owner):
            log.error("process %d did not stop within %.0f s", owner, timeout)
            return 1
    with contextlib.suppress(FileNotFoundError):
        (workdir / STATE_FILE).unlink()
    log.info("stopped the dev cluster in %s", workdir)
    return 0


def status(workdir: Path) -> int:
    try:
        state = DevCluster.read_state(workdir)
    except TestbedError as e:
        log.error("%s", e)
        return 1
    state["running"] = pid_alive(int(state["owner_pid"]))
    print(json.dumps(state, indent=2))
    return 0 if state["running"] else 1
