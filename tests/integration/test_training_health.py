"""Operator hygiene on the real API server: liveness fails when the watch streams stall, and recovers.

The operator talks to the API server through a TCP proxy that the test can freeze: connections stay open but
no byte moves, which is what a stalled watch looks like (no error, just silence). /healthz must turn 500
within the configured bound and turn 200 again once traffic flows.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from deepseek_testbed import ControlPlane, wait_until

from tests.fixtures import training as tr
from tests.fixtures.operator import OperatorFactory, OperatorRunner, free_port


class FreezableProxy:
    """A TCP forwarder on 127.0.0.1 whose traffic can be frozen (held, not dropped) and thawed."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        self._listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()


def _proxied_kubeconfig(kube: ControlPlane, port: int, path: Path) -> str:
    config = yaml.safe_load(Path(kube.kubeconfig).read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _health(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (urllib.error.URLError, TimeoutError, ConnectionError):
        return 0


def test_liveness_fails_when_watches_stall_and_recovers(
    kube_cluster: ControlPlane, operator_factory: OperatorFactory, namespace: str, tmp_path: Path
) -> None:
    target = urlsplit(kube_cluster.server)
    proxy = FreezableProxy((target.hostname or "127.0.0.1", target.port or 443))
    try:
        kubeconfig = _proxied_kubeconfig(kube_cluster, proxy.port, tmp_path / "proxied.kubeconfig")
        op = operator_factory(namespace, kubeconfig=kubeconfig, heartbeat_seconds=1.0, liveness_stale_seconds=4.0)
        wait_until(lambda: _health(op.liveness_url) == 200, timeout=30, what="a healthy operator")

        proxy.freeze()
        frozen_at = time.monotonic()
        wait_until(lambda: _health(op.liveness_url) == 500, timeout=45, what="/healthz to fail on a stalled watch")
        # Not before the bound: the heartbeat itself is fresh for liveness_stale_seconds.
        assert time.monotonic() - frozen_at >= 4.0

        proxy.thaw()
        wait_until(lambda: _health(op.liveness_url) == 200, timeout=60, what="/healthz to recover")
    finally:
        proxy.close()


def test_operator_bookkeeping_causes_no_gitops_drift(
    kube_cluster: ControlPlane, namespace: str, operator: OperatorRunner, tmp_path: Path
) -> None:
    """What GitOps tools compare stays as the user wrote it: the operator never writes spec, keeps its few
    annotations under deepseek.ai/, and `kubectl diff` shows nothing, for a client-side applied resource
    (Argo CD's default) and a server-side applied one (Flux)."""
    ns = namespace
    for name, mode in (("client-side", ()), ("server-side", ("--server-side",))):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(tr.training_manifest(name, fate=tr.run_forever())))
        kube_cluster.kubectl("apply", *mode, "-n", ns, "-f", str(path))
        tr.wait_phase(kube_cluster, ns, name, "Running")

        out = kube_cluster.kubectl("get", "dstrain", name, "-n", ns, "-o", "json", "--show-managed-fields").stdout
        meta = json.loads(out)["metadata"]
        assert meta["finalizers"] == ["deepseek.ai/finalizer"]
        ours = [k for k in meta.get("annotations", {}) if k != "kubectl.kubernetes.io/last-applied-configuration"]
        assert all(k.startswith("deepseek.ai/") for k in ours), ours
        assert "deepseek.ai/last-handled-configuration" not in ours  # kopf keeps no diff-base on them
        for entry in meta["managedFields"]:
            if entry["manager"].startswith("kubectl"):
                continue
            assert "f:spec" not in entry.get("fieldsV1", {}), f"{entry['manager']} wrote spec"
        diff = kube_cluster.kubectl("diff", *mode, "-n", ns, "-f", str(path), check=False)
        assert diff.returncode == 0, diff.stdout + diff.stderr


def test_operator_metrics_and_json_logs_from_the_command(
    kube_cluster: ControlPlane, namespace: str, crds: list[str], tmp_path: Path
) -> None:
    """`deepseek-operator` as the chart runs it: JSON log lines, /metrics with the reconcile metrics, /healthz."""
    ns = namespace
    metrics_port, liveness_port = free_port(), free_port()
    env = {
        **kube_cluster.env(),
        "DEEPSEEK_WATCH_NAMESPACES": ns,
        "POD_NAMESPACE": ns,
        "DEEPSEEK_METRICS_PORT": str(metrics_port),
        "DEEPSEEK_LIVENESS_PORT": str(liveness_port),
        "DEEPSEEK_LISTEN_HOST": "127.0.0.1",
    }
    log = tmp_path / "operator.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "deepseek-operator")], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        tr.apply(kube_cluster, ns, tr.training_manifest("cli", fate=tr.run_forever()))
        tr.wait_phase(kube_cluster, ns, "cli", "Running")
        wait_until(lambda: _health(f"http://127.0.0.1:{liveness_port}/healthz") == 200, timeout=30, what="healthz")
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert 'deepseek_operator_reconcile_total{kind="DeepSeekTraining",result="success"}' in text
        assert 'deepseek_operator_reconcile_duration_seconds_count{kind="DeepSeekTraining"}' in text
        assert 'deepseek_operator_resources{kind="DeepSeekTraining",phase="Running"} 1.0' in text
        assert f'deepseek_operator_training_phase{{name="cli",namespace="{ns}",phase="Running"}} 1.0' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert lines
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any("message" in r and "timestamp" in r for r in records)
