"""`deepseek-worker serve`: uvicorn around the app, with Kubernetes-friendly start and stop.

Start: the HTTP port opens at once (liveness answers while the model loads); readiness turns 200 only after
the model is loaded, verified and warmed up. A model that cannot be loaded ends the process with exit code 66.

Stop: the first SIGTERM (or SIGINT) turns readiness to 503 and refuses new inference with 503, then waits up to
``drainSeconds`` for every accepted request (queued, running, streaming) to finish, then exits 0. A second
signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import time
from types import FrameType

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from deepseek_workers.errors import BadArtifactError, WorkerError
from deepseek_workers.runconfig import ServeRunConfig
from deepseek_workers.serving.app import ModelServer, ServerSettings, create_app
from deepseek_workers.serving.backends import LoadedModel, describe, load_backend

log = logging.getLogger(__name__)


_STATUS_LINE = b"HTTP/1.1 "


class _HeadWithBody:
    """A transport that sends a response's head together with what is written next in the same loop step.

    uvicorn writes the status line and headers as soon as the app starts its response, and the body in a second
    write. On loopback the client wakes for the head alone, then again for the body; one write saves a system
    call and a wake-up per answer. A held head leaves at the next write, on close, or at the end of this step of
    the event loop (a streamed response whose first chunk comes later), so nothing waits longer than that.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held, self._held = self._held, None
        if held is not None:
            self._transport.write(held + bytes(data))
        elif bytes(data[: len(_STATUS_LINE)]) == _STATUS_LINE:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol whose answers leave in one write (see :class:`_HeadWithBody`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn
        super().connection_made(transport)
        self.transport = _HeadWithBody(self.transport, self.loop)  # type: ignore[assignment]


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first exit signal drains the model server before uvicorn's own shutdown."""

    def __init__(self, config: uvicorn.Config, model_server: ModelServer) -> None:
        super().__init__(config)
        self.model_server = model_server
        self._drain_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in _captured_signals: uvicorn would re-raise it after shutdown and we exit 0 instead.
        if self._drain_task is not None or self._loop is None:
            log.warning("second signal %s: exiting without waiting", signal.Signals(sig).name)
            self.should_exit = self.force_exit = True
            return
        log.info(
            "signal %s: draining for up to %.0f s", signal.Signals(sig).name, self.model_server.settings.drain_seconds
        )
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        await self.model_server.drain(self.model_server.settings.drain_seconds)
        self.should_exit = True


def build_server(cfg: ServeRunConfig) -> ModelServer:
    """Check the model reference (fast) and prepare a server that loads and verifies it in the background."""
    source = describe(cfg.artifact_uri, cfg.variant)
    settings = ServerSettings(
        model_name=cfg.model_name,
        version=source.version,
        variant=cfg.variant,
        task=source.task,
        batching=cfg.batching,
        drain_seconds=cfg.drain_seconds,
    )

    def load() -> LoadedModel:
        t0 = time.perf_counter()
        backend = load_backend(cfg.artifact_uri, cfg.variant, cfg.batching.concurrent_batches)
        return LoadedModel(backend, cfg.model_name, source.version, cfg.variant, time.perf_counter() - t0)

    return ModelServer(settings, load)


def uvicorn_config(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> uvicorn.Config:
    """How the model server runs under uvicorn (the worker's serve command and the in-process tests)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=OneWriteHttpToolsProtocol,
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=30,
    )


# How long a thread that wants the GIL waits before the holder must hand it over (Python's default: 5 ms).
# A model thread needs the GIL for a moment between its GIL-free forward passes (padding, softmax, handing
# results over); if the event loop holds it through a burst of requests, that model thread's core sits idle
# for up to the whole interval. Measured on MiniLM, two model threads, 32 requests in flight on two shared
# cores, the same cost table in both servers, ten paired rounds: 0.5 ms served a median 4 % more requests per
# second than 5 ms (7 rounds of 10 ahead). With one request at a time nobody waits for the GIL, so nothing
# changes there.
GIL_SWITCH_INTERVAL_S = 0.0005


def run_server(cfg: ServeRunConfig) -> None:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    model_server = build_server(cfg)
    server = DrainingServer(uvicorn_config(create_app(model_server), cfg.host, cfg.port), model_server)
    failure: list[BaseException] = []

    def on_failure(err: BaseException) -> None:
        failure.append(err)
        server.should_exit = True

    model_server.on_failure = on_failure
    server.run()
    if failure:
        err = failure[0]
        if isinstance(err, WorkerError):
            raise err
        raise BadArtifactError(f"cannot load the model: {type(err).__name__}: {err}")
