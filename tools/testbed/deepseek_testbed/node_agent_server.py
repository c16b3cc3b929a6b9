"""The node agent's kubelet API: what kube-apiserver calls on a node's kubelet port for `kubectl logs`.

HTTPS on the node's InternalIP with a serving certificate from the cluster CA; clients must present a
certificate from that CA (kube-apiserver has `--kubelet-client-certificate`). Served:

- `GET /containerLogs/{namespace}/{pod}/{container}` with `follow`, `previous`, `tailLines`, `sinceSeconds`,
  `sinceTime`, `timestamps`, `limitBytes` (what `kubectl logs` sends), from the CRI-format log files the agent
  writes;
- `GET /healthz`, `GET /pods` (the pods this node runs, as a PodList).

Not served: exec/attach/port-forward (no streaming protocol), metrics and stats.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from aiohttp import web

if TYPE_CHECKING:
    from deepseek_testbed.node_agent import NodeAgent
    from deepseek_testbed.node_agent_pod import Container


Record = tuple[str, str, bool, bytes]  # timestamp, stream, complete line?, content


class _LogReader:
    """Reads the records of a CRI log file incrementally from one open file."""

    def __init__(self, path: Path) -> None:
        try:
            self._file: BinaryIO | None = path.open("rb")
        except OSError:
            self._file = None
        self._pending = b""

    def read_records(self) -> list[Record]:
        if self._file is None:
            return []
        data = self._pending + self._file.read()
        lines = data.split(b"\n")
        self._pending = lines.pop()  # an incomplete last line waits for its end
        records: list[Record] = []
        for raw in lines:
            parts = raw.split(b" ", 3)
            if len(parts) == 4:
                records.append((parts[0].decode(), parts[1].decode(), parts[2] == b"F", parts[3]))
        return records

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _parse_time(ts: str) -> datetime:
    # RFC 3339 with nanoseconds: Python keeps microseconds.
    main, _, frac = ts.rstrip("Z").partition(".")
    return datetime.fromisoformat(main + "." + (frac + "000000")[:6]).replace(tzinfo=UTC)


def render(records: list[Record], timestamps: bool) -> bytes:
    out = bytearray()
    for ts, _stream, complete, content in records:
        if timestamps:
            out += ts.encode() + b" "
        out += content
        if complete:
            out += b"\n"
    return bytes(out)


class KubeletServer:
    def __init__(self, agent: NodeAgent) -> None:
        self.agent = agent
        self.app = web.Application()
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/pods", self._pods)
        self.app.router.add_get("/pods/", self._pods)
        self.app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._logs)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, cert: Path, key: Path, ca: Path) -> int:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
        ctx.load_cert_chain(str(cert), str(key))
        ctx.verify_mode = ssl.CERT_REQUIRED  # only kube-apiserver (and admins) hold certificates of this CA
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))  # a port picked at run time; the node's status tells kube-apiserver which
        self.port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock, ssl_context=ctx).start()
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _pods(self, request: web.Request) -> web.Response:
        items = [r.pod for r in self.agent.runners.values()]
        return web.json_response({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})

    @staticmethod
    def _error(code: int, message: str) -> web.Response:
        return web.Response(status=code, text=message)

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        ns, name, cname = request.match_info["namespace"], request.match_info["pod"], request.match_info["container"]
        runner = self.agent.find_pod(ns, name)
        if runner is None:
            return self._error(404, f'pod "{name}" in namespace "{ns}" is not running on node {self.agent.node_name}')
        c = runner.container(cname)
        if c is None:
            names = " ".join(x.name for x in runner.containers)
            return self._error(400, f"container {cname} is not valid for pod {name}; valid containers: [{names}]")
        q = request.query
        try:
            tail = int(q["tailLines"]) if "tailLines" in q else None
            limit = int(q["limitBytes"]) if "limitBytes" in q else None
            since: datetime | None = None
            if "sinceSeconds" in q:
                since = datetime.fromtimestamp(datetime.now(UTC).timestamp() - int(q["sinceSeconds"]), UTC)
            elif "sinceTime" in q:
                since = datetime.fromisoformat(q["sinceTime"].replace("Z", "+00:00"))
        except ValueError as err:
            return self._error(400, f"bad query parameter: {err}")
        timestamps = q.get("timestamps") == "true"
        follow = q.get("follow") == "true"
        previous = q.get("previous") == "true"
        if previous:
            if c.restart_count == 0:
                return self._error(400, f'previous terminated container "{cname}" in pod "{name}" not found')
            path = runner.dir / "logs" / cname / f"{c.restart_count - 1}.log"
            follow = False
        else:
            path = runner.dir / "logs" / cname / f"{c.restart_count}.log"
            if not path.exists():
                waiting = c.state.get("waiting", {}).get("reason", "ContainerCreating")
                return self._error(400, f'container "{cname}" in pod "{name}" is waiting to start: {waiting}')
        reader = _LogReader(path)
        records = [r for r in reader.read_records() if since is None or _parse_time(r[0]) >= since]
        if tail is not None:
            records = records[-tail:] if tail > 0 else []
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        sent = 0

        async def send(data: bytes) -> bool:
            nonlocal sent
            if limit is not None:
                data = data[: max(limit - sent, 0)]
            if data:
                await resp.write(data)
                sent += len(data)
            return limit is None or sent < limit

        try:
            more = await send(render(records, timestamps))
            if follow and more:
                await self._follow(c, reader, send, timestamps)
        finally:
            reader.close()
        await resp.write_eof()
        return resp

    @staticmethod
    async def _follow(
        c: Container, reader: _LogReader, send: Callable[[bytes], Awaitable[bool]], timestamps: bool
    ) -> None:
        """Stream records appended to the log until this container instance has stopped and all is sent. The
        file stays open, so what was written before the pod's directory was removed is still sent."""
        instance = c.restart_count
        while True:
            # Until the instance has stopped and its output is all in the file (the log file closes then).
            alive = c.restart_count == instance and (c.running() or c.log_file is not None)
            records = reader.read_records()
            if records:
                if not await send(render(records, timestamps)):
                    return
            elif not alive:
                return
            await asyncio.sleep(0.2)
