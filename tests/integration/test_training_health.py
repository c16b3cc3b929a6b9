"""Operator hygiene on the real API server: liveness fails when the watch streams stall, and recovers.

The operator talks to the API server through a TCP proxy that the test can freeze: connections stay open but
no byte moves, which is what a stalled watch looks like (no error, just silence). /healthz must turn 500
within the configured bound and turn 200 again once traffic flows.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from deepseek_testbed import ControlPlane, wait_until

from tests.fixtures.operator import OperatorFactory


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
