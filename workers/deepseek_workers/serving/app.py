"""The FastAPI application: protocols, readiness, error mapping, metrics and drain.

Status codes (every error has a JSON body naming what was wrong):

==========  ====================================================================================
400         bad payload: invalid JSON, wrong shape or datatype, empty or over-long text, bad parameter
404         unknown model name or path
429         the batching queue is full (``Retry-After`` says when to come back)
499         (metrics only) the caller disconnected before its answer; its work was dropped
500         the model raised (a bug; logged with its traceback)
503         not ready (loading, warming up) or draining after SIGTERM (``Retry-After: 1``)
504         the request's deadline (``batching.requestTimeoutSeconds``) passed
==========  ====================================================================================

``/v2`` and ``/classify`` errors are ``{"error": "..."}`` (Open Inference Protocol); ``/v1`` errors use the
OpenAI envelope ``{"error": {"message", "type", "param", "code"}}`` so that the openai client raises its
usual exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deepseek_workers.runconfig import BatchingSpec
from deepseek_workers.serving import schemas as s
from deepseek_workers.serving.backends import (
    Backend,
    CausalLM,
    GenerationRequest,
    GenerationResult,
    LoadedModel,
    TextClassifier,
    is_classifier,
    warm_up,
)
from deepseek_workers.serving.batcher import (
    SERVER_CALL_OVERHEAD_S,
    BatchCost,
    BatcherError,
    BatchPlan,
    CostModel,
    DeadlineExceededError,
    DynamicBatcher,
    MeasuredCost,
    NotAcceptingError,
    QueueFullError,
    Ticket,
    plan_by_length,
)
from deepseek_workers.serving.metrics import ServerMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVER_NAME = "deepseek-model-server"
SERVER_VERSION = "0.1.0"
DEFAULT_CHAT_MAX_TOKENS = 256


# ---------------------------------------------------------------------------------------------------------
# Errors


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}
        self.kind = kind


_OPENAI_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    429: "rate_limit_exceeded",
    500: "internal_error",
    503: "service_unavailable",
    504: "timeout",
}


def _error_response(request_path: str, err: ApiError) -> JSONResponse:
    if request_path.startswith("/v1/") and not request_path.startswith("/v1/classify"):
        body: dict[str, Any] = {
            "error": {
                "message": err.message,
                "type": err.kind or _OPENAI_TYPES.get(err.status, "error"),
                "param": err.param,
                "code": None,
            }
        }
    else:
        body = {"error": err.message}
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def _from_batcher(err: BatcherError) -> ApiError:
    if isinstance(err, QueueFullError):
        return ApiError(429, str(err), headers={"Retry-After": str(int(err.retry_after_s))})
    if isinstance(err, DeadlineExceededError):
        return ApiError(504, str(err))
    if isinstance(err, NotAcceptingError):
        return ApiError(503, str(err), headers={"Retry-After": "1"})
    return ApiError(500, str(err))


def _is_union_tag(part: object) -> bool:
    return isinstance(part, str) and ("[" in part or part.startswith(("constrained-", "function-")))


def _describe_validation(err: RequestValidationError) -> tuple[str, str | None]:
    parts = []
    first_param: str | None = None
    for e in err.errors()[:8]:
        # Drop "body" and pydantic's union-branch tags (e.g. "constrained-str") from the location.
        loc = [str(p) for p in e.get("loc", ()) if p != "body" and not _is_union_tag(p)]
        where = ".".join(loc) or "body"
        first_param = first_param or (loc[0] if loc else None)
        if e.get("type") == "json_invalid":
            parts.append(f"the body is not valid JSON ({e.get('ctx', {}).get('error', 'parse error')})")
        elif e.get("type") == "missing" and not loc:
            parts.append("a JSON body is required")
        elif not loc and e.get("type") in ("model_attributes_type", "dict_type"):
            parts.append("the body must be a JSON object (sent with Content-Type: application/json)")
        else:
            parts.append(f"{where}: {e.get('msg')}")
    return "; ".join(parts) or "invalid request", first_param


# ---------------------------------------------------------------------------------------------------------
# Server state


@dataclass
class ServerSettings:
    model_name: str
    version: str
    variant: str
    task: Literal["text-classification", "causal-lm"]
    batching: BatchingSpec = field(default_factory=BatchingSpec)
    drain_seconds: float = 20.0


class ModelServer:
    """Everything the routes share: the model once loaded, its batcher, readiness and drain."""

    def __init__(self, settings: ServerSettings, loader: Callable[[], LoadedModel]) -> None:
        self.settings = settings
        self._loader = loader
        self.metrics = ServerMetrics(settings.model_name)
        self.state: Literal["loading", "ready", "draining", "failed"] = "loading"
        self.failure: BaseException | None = None
        self.model: LoadedModel | None = None
        self.batcher: DynamicBatcher[Any, Any] | None = None
        self.cost_model: BatchCost = CostModel()
        self.in_flight = 0
        self._no_requests = asyncio.Event()
        self._no_requests.set()
        self._load_task: asyncio.Task[None] | None = None
        self.on_failure: Callable[[BaseException], None] | None = None
        self.created = int(time.time())
        self.metrics.in_flight.labels(settings.model_name).set_function(lambda: float(self.in_flight))

    # -- lifecycle ------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def start_loading(self) -> None:
        self._load_task = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            model = await asyncio.to_thread(self._loader)
            batching = self.settings.batching
            samples = await asyncio.to_thread(
                warm_up, model.backend, batching.max_batch_size, batching.concurrent_batches
            )
        except asyncio.CancelledError:
            raise  # shutting down while loading: not a model failure
        except BaseException as err:
            self.state, self.failure = "failed", err
            log.error("model load failed: %s", err)
            if self.on_failure is not None:
                self.on_failure(err)
            return
        if samples:
            self.cost_model = MeasuredCost(samples)
            log.info(
                "batch cost table from warm-up (planned with %.1f ms more per call): %s",
                SERVER_CALL_OVERHEAD_S * 1e3,
                self.cost_model,
            )
        self.model = model
        self.batcher = self._make_batcher(model.backend)
        self.batcher.start()
        m = self.metrics
        m.bind_queue(lambda: float(self.batcher.queue_depth if self.batcher else 0), self._running)
        m.info.labels(
            self.settings.model_name, model.version, model.variant, model.backend.task, model.backend.device
        ).set(1)
        m.load_seconds.labels(self.settings.model_name).set(time.perf_counter() - t0)
        if m.enable_gpu():
            log.info("GPU metrics enabled")
        if self.state == "loading":
            self.state = "ready"
            m.ready.labels(self.settings.model_name).set(1)
            log.info("model %s ready in %.1f s", self.settings.model_name, time.perf_counter() - t0)

    def _running(self) -> float:
        return float(self.batcher.running if self.batcher else 0)

    def _make_batcher(self, backend: Backend) -> DynamicBatcher[Any, Any]:
        b = self.settings.batching
        common: dict[str, Any] = {
            "max_batch_size": b.max_batch_size,
            "max_queue_delay_s": b.max_queue_delay_ms / 1000.0,
            "max_queue_size": b.max_queue_size,
            "max_concurrent_batches": b.concurrent_batches,
            "observer": self.metrics,
            "name": self.settings.model_name,
        }
        if isinstance(backend, TextClassifier):
            cost = self.cost_model

            def plan(items: list[list[int]]) -> BatchPlan:
                return plan_by_length([len(x) for x in items], cost, SERVER_CALL_OVERHEAD_S)

            def run(items: list[list[int]]) -> list[np.ndarray]:
                return list(backend.predict(items))

            return DynamicBatcher(run, planner=plan, **common)

        def plan_generation(items: list[GenerationRequest]) -> BatchPlan:
            # Rows of one generate call must share sampling settings; within those, similar prompt lengths.
            groups: dict[tuple[bool, float, float, int | None], list[int]] = {}
            for i, r in enumerate(items):
                groups.setdefault(r.sampling_key, []).append(i)
            out: list[list[int]] = []
            for idx in groups.values():
                sub = plan_by_length([len(items[i].prompt_ids) for i in idx], CostModel(5e-3, 1e-5, 0.0))
                out.extend([idx[j] for j in g] for g in sub.groups)
            return BatchPlan(out)

        lm = backend
        assert isinstance(lm, CausalLM)
        return DynamicBatcher(lm.generate, planner=plan_generation, **common)

    async def drain(self, timeout_s: float) -> bool:
        """Stop being ready, refuse new work, and wait (bounded) for accepted requests to finish."""
        if self.state in ("ready", "loading"):
            self.state = "draining"
        self.metrics.ready.labels(self.settings.model_name).set(0)
        deadline = time.monotonic() + timeout_s
        if self.batcher is not None:
            self.batcher.close()
            await self.batcher.wait_idle(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._no_requests.wait(), max(0.0, deadline - time.monotonic()))
        clean = self.in_flight == 0 and (self.batcher is None or self.batcher.queue_depth + self.batcher.running == 0)
        log.info("drain %s (in flight: %d)", "complete" if clean else "timed out", self.in_flight)
        return clean

    async def close(self) -> None:
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
            with contextlib.suppress(BaseException):
                await self._load_task
        if self.batcher is not None:
            await self.batcher.stop()

    def request_started(self) -> None:
        self.in_flight += 1
        self._no_requests.clear()

    def request_finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._no_requests.set()

    # -- helpers for routes ---------------------------------------------------------------------------------

    def require_ready(self) -> tuple[LoadedModel, DynamicBatcher[Any, Any]]:
        if self.state == "draining":
            self.metrics.dropped("draining")
            raise ApiError(
                503, "the server is draining (shutting down); send the request elsewhere", headers={"Retry-After": "1"}
            )
        if self.state != "ready" or self.model is None or self.batcher is None:
            self.metrics.dropped("not_ready")
            raise ApiError(
                503, f"model {self.settings.model_name!r} is not ready yet ({self.state})", headers={"Retry-After": "1"}
            )
        return self.model, self.batcher

    def check_model_name(self, name: str, param: str | None = None) -> None:
        if name != self.settings.model_name:
            raise ApiError(
                404,
                f"model {name!r} is not served here; this server serves {self.settings.model_name!r}",
                param=param,
                kind="model_not_found",
            )

    @property
    def timeout_s(self) -> float:
        return self.settings.batching.request_timeout_seconds


# ---------------------------------------------------------------------------------------------------------
# Middleware: in-flight accounting, per-endpoint metrics, Connection: close while draining


# (seconds waiting for a batch, seconds of the model call) of a request that used the batcher; answered as a
# Server-Timing header (W3C), which browsers' developer tools and clients read per request.
TIMING_SCOPE_KEY = "deepseek.timing"


class ServerMiddleware:
    def __init__(self, app: ASGIApp, server: ModelServer, fast_paths: dict[str, JsonFastPath]) -> None:
        self.app = app
        self.server = server
        self.fast_paths = fast_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        server = self.server
        start = time.perf_counter()
        status = 500
        server.request_started()
        fast = self.fast_paths.get(scope["path"]) if scope["method"] == "POST" else None

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = []
                timing = scope.get(TIMING_SCOPE_KEY)
                if timing is not None:
                    extra.append(
                        (b"server-timing", b"queue;dur=%.3f, model;dur=%.3f" % (timing[0] * 1e3, timing[1] * 1e3))
                    )
                if server.state == "draining":
                    # Let keep-alive clients reconnect (to another replica) instead of reusing this one.
                    extra.append((b"connection", b"close"))
                if extra:
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            if fast is not None:
                await fast(scope, receive, send_wrapper, self.app)
            else:
                await self.app(scope, receive, send_wrapper)
        except asyncio.CancelledError:
            status = 499
            raise
        finally:
            server.request_finished()
            if scope.get("deepseek.client_gone"):
                status = 499
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or (fast.path if fast is not None else "unmatched")
            server.metrics.request_done(endpoint, status, time.perf_counter() - start)


class JsonFastPath:
    """A JSON POST endpoint answered without FastAPI's per-request machinery when its body is valid.

    Why: at concurrency 1 the server's own time is the added latency, and FastAPI's routing, dependency solving
    and nine nested middleware layers cost about as much as everything else together (measured on this
    server's /classify with the model replaced by a 29 ms sleep). A body that does not validate, or a content
    type other than JSON, goes on to the FastAPI route registered for the same path, so the OpenAPI document
    and every 4xx message stay FastAPI's; errors raised while answering are rendered by ``on_error``, the
    function the FastAPI exception handlers use.
    """

    def __init__(
        self,
        path: str,
        body_model: type[BaseModel],
        handler: Callable[[Any, Request], Awaitable[Response]],
        on_error: Callable[[Request, Exception], Response],
    ) -> None:
        self.path = path
        self._body_model = body_model
        self._handler = handler
        self._on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        content_type = next((v for k, v in scope["headers"] if k == b"content-type"), None)
        if content_type is not None and not content_type.lower().startswith(b"application/json"):
            await app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # gone before the body arrived: nobody to answer
                scope["deepseek.client_gone"] = True
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            parsed = self._body_model.model_validate_json(body)
        except ValidationError:
            await app(scope, _replay(body, receive), send)  # FastAPI answers, with its own message
            return
        request = Request(scope, receive)
        try:
            response = await self._handler(parsed, request)
        except Exception as err:
            response = self._on_error(request, err)
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for an app that must read a body this layer already read."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


# ---------------------------------------------------------------------------------------------------------
# Waiting for results while watching for a disconnect


class ClientGoneError(Exception):
    pass


async def _disconnected(receive: Callable[[], Awaitable[MutableMapping[str, Any]]]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _consume(f: asyncio.Future[Any]) -> None:
    if not f.cancelled():
        f.exception()


async def until_disconnect(request: Request, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` unless the client disconnects first (then it is cancelled: its work is dropped)."""
    work = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work.cancel()
        raise
    finally:
        watcher.cancel()
    if work.done():
        return work.result()
    work.cancel()
    work.add_done_callback(_consume)  # a cancelled gather ends with an exception nobody else reads
    request.scope["deepseek.client_gone"] = True
    raise ClientGoneError()


# ---------------------------------------------------------------------------------------------------------
# The application


class _FastAPIUnderServerLayer(FastAPI):
    """FastAPI with :class:`ServerMiddleware` outside its own middleware (error pages, telemetry, body limit).

    Why: the fast paths answer without any FastAPI layer, and each layer is an async frame and a send wrapper
    per request; every route still gets in-flight accounting and metrics from the one outer layer.
    """

    server_layer: Callable[[ASGIApp], ASGIApp] | None = None

    def build_middleware_stack(self) -> ASGIApp:
        inner = super().build_middleware_stack()
        return self.server_layer(inner) if self.server_layer is not None else inner


def create_app(server: ModelServer) -> FastAPI:
    settings = server.settings
    name = settings.model_name

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        server.start_loading()
        yield
        await server.close()

    app = _FastAPIUnderServerLayer(
        title="DeepSeek model server",
        version=SERVER_VERSION,
        description=(
            f"Serves model `{name}` ({settings.task}). KServe Open Inference Protocol v2 under /v2"
            + (", a plain JSON endpoint at /classify" if settings.task == "text-classification" else "")
            + (", OpenAI-compatible completions under /v1" if settings.task == "causal-lm" else "")
            + ", Prometheus metrics at /metrics."
        ),
        lifespan=lifespan,
    )
    fast_paths: dict[str, JsonFastPath] = {}  # by path; all are POST
    app.server_layer = lambda inner: ServerMiddleware(inner, server, fast_paths)

    def error_response(request: Request, err: Exception) -> Response:
        """The answer to an error raised by a route (the FastAPI handlers and the fast paths use this)."""
        if isinstance(err, ApiError):
            return _error_response(request.url.path, err)
        if isinstance(err, ClientGoneError):
            return Response(status_code=499)
        log.exception("unhandled error on %s", request.url.path, exc_info=err)
        return _error_response(request.url.path, ApiError(500, f"internal error: {type(err).__name__}"))

    async def _handled(request: Request, err: Exception) -> Response:
        return error_response(request, err)

    for handled in (ApiError, ClientGoneError, Exception):
        app.add_exception_handler(handled, _handled)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError) -> JSONResponse:
        message, param = _describe_validation(err)
        return _error_response(request.url.path, ApiError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        detail = err.detail if isinstance(err.detail, str) else "error"
        if err.status_code == 404:
            detail = f"no such endpoint: {request.method} {request.url.path}"
        return _error_response(request.url.path, ApiError(err.status_code, detail, headers=dict(err.headers or {})))

    v2_errors: dict[int | str, dict[str, Any]] = {
        code: {"model": s.V2Error, "description": text}
        for code, text in [
            (400, "Bad payload"),
            (404, "Unknown model"),
            (429, "Queue full; see Retry-After"),
            (500, "Model failure"),
            (503, "Not ready or draining"),
            (504, "Deadline passed"),
        ]
    }
    unknown_model: dict[int | str, dict[str, Any]] = {404: {"model": s.V2Error, "description": "Unknown model"}}

    # -- health and metadata ---------------------------------------------------------------------------------

    @app.get("/v2/health/live", response_model=s.V2Live, tags=["health"], summary="Liveness (the process runs)")
    async def live() -> s.V2Live:
        return s.V2Live(live=True)

    @app.get(
        "/v2/health/ready",
        response_model=s.V2Ready,
        responses={503: {"model": s.V2Ready, "description": "Not ready: loading, failed or draining"}},
        tags=["health"],
        summary="Readiness (model loaded and warmed up, not draining)",
    )
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": server.ready}, status_code=200 if server.ready else 503)

    @app.get("/v2", response_model=s.V2ServerMetadata, tags=["v2"], summary="Server metadata")
    async def server_metadata() -> s.V2ServerMetadata:
        return s.V2ServerMetadata(name=SERVER_NAME, version=SERVER_VERSION, extensions=[])

    def model_metadata() -> s.V2ModelMetadata:
        model = server.model
        version = model.version if model else settings.version
        params: dict[str, Any] = {"task": settings.task, "variant": settings.variant}
        if settings.task == "text-classification":
            inputs = [s.V2TensorMetadata(name="text", datatype="BYTES", shape=[-1])]
            n_labels = len(model.backend.labels) if model and is_classifier(model.backend) else -1
            outputs = [
                s.V2TensorMetadata(name="label", datatype="BYTES", shape=[-1]),
                s.V2TensorMetadata(name="scores", datatype="FP32", shape=[-1, n_labels]),
            ]
            if model and is_classifier(model.backend):
                params["labels"] = model.backend.labels
        else:
            inputs = [s.V2TensorMetadata(name="text_input", datatype="BYTES", shape=[1])]
            outputs = [s.V2TensorMetadata(name="text_output", datatype="BYTES", shape=[1])]
        if model:
            params["max_tokens"] = model.backend.max_tokens
            params["runtime"] = model.backend.runtime
        return s.V2ModelMetadata(
            name=name,
            versions=[version],
            platform="pytorch" if "onnx" not in settings.variant else "onnxruntime",
            inputs=inputs,
            outputs=outputs,
            parameters=params,
        )

    @app.get(
        "/v2/models/{model_name}",
        response_model=s.V2ModelMetadata,
        responses=unknown_model,
        tags=["v2"],
        summary="Model metadata",
    )
    async def get_model_metadata(model_name: str) -> s.V2ModelMetadata:
        server.check_model_name(model_name)
        return model_metadata()

    @app.get(
        "/v2/models/{model_name}/versions/{version}",
        response_model=s.V2ModelMetadata,
        responses=unknown_model,
        tags=["v2"],
        summary="Model metadata (one version)",
    )
    async def get_model_version_metadata(model_name: str, version: str) -> s.V2ModelMetadata:
        server.check_model_name(model_name)
        _check_version(version)
        return model_metadata()

    def _check_version(version: str) -> None:
        current = server.model.version if server.model else settings.version
        if version != current:
            raise ApiError(404, f"model {name!r} has no version {version!r}; served version: {current!r}")

    @app.get(
        "/v2/models/{model_name}/ready",
        response_model=s.V2ModelReady,
        responses={**unknown_model, 503: {"model": s.V2ModelReady, "description": "Model not ready"}},
        tags=["v2"],
        summary="Model readiness",
    )
    async def model_ready(model_name: str) -> JSONResponse:
        server.check_model_name(model_name)
        return JSONResponse({"name": name, "ready": server.ready}, status_code=200 if server.ready else 503)

    @app.get(
        "/v2/models/{model_name}/versions/{version}/ready",
        response_model=s.V2ModelReady,
        responses={**unknown_model, 503: {"model": s.V2ModelReady, "description": "Model not ready"}},
        tags=["v2"],
        summary="Model readiness (one version)",
    )
    async def model_version_ready(model_name: str, version: str) -> JSONResponse:
        server.check_model_name(model_name)
        _check_version(version)
        return JSONResponse({"name": name, "ready": server.ready}, status_code=200 if server.ready else 503)

    @app.get(
        "/metrics",
        tags=["monitoring"],
        summary="Prometheus metrics",
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    )
    async def metrics() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # -- inference ------------------------------------------------------------------------------------------

    @app.post(
        "/v2/models/{model_name}/infer",
        response_model=s.V2InferResponse,
        responses=v2_errors,
        tags=["v2"],
        summary="Inference (Open Inference Protocol v2)",
    )
    async def infer(model_name: str, body: s.V2InferRequest, request: Request) -> JSONResponse:
        server.check_model_name(model_name)
        return await _infer(body, request)

    @app.post(
        "/v2/models/{model_name}/versions/{version}/infer",
        response_model=s.V2InferResponse,
        responses=v2_errors,
        tags=["v2"],
        summary="Inference, one version (Open Inference Protocol v2)",
    )
    async def infer_version(model_name: str, version: str, body: s.V2InferRequest, request: Request) -> JSONResponse:
        server.check_model_name(model_name)
        _check_version(version)
        return await _infer(body, request)

    async def _infer(body: s.V2InferRequest, request: Request) -> JSONResponse:
        model, batcher = server.require_ready()
        backend = model.backend
        timeout_s = _v2_timeout(body.parameters or {}, server.timeout_s)
        if is_classifier(backend):
            texts = _v2_texts(body, "text", server.settings.batching.max_queue_size)
            probs = await _classify(backend, batcher, texts, request, timeout_s)
            outputs = _v2_classifier_outputs(body, backend.labels, probs)
        else:
            texts = _v2_texts(body, "text_input", 1)
            gen = _generation_params(body.parameters or {})
            req = _generation_request(
                backend,
                texts[0],
                gen["max_tokens"],
                gen["temperature"],
                gen["top_p"],
                gen["stop"],
                None,
                "parameters.max_tokens",
            )
            (result,) = await _generate(batcher, [req], request, timeout_s)
            _count_tokens(result)
            outputs = [{"name": "text_output", "datatype": "BYTES", "shape": [1], "data": [result.text]}]
            if body.outputs:
                wanted = {o.name for o in body.outputs}
                if wanted - {"text_output"}:
                    raise ApiError(
                        400,
                        f"outputs: unknown output(s) {sorted(wanted - {'text_output'})}; this model has: text_output",
                    )
        resp: dict[str, Any] = {"model_name": name, "model_version": model.version, "outputs": outputs}
        if body.id is not None:
            resp["id"] = body.id
        return JSONResponse(resp)

    async def _classify(
        backend: TextClassifier,
        batcher: DynamicBatcher[Any, Any],
        texts: list[str],
        request: Request,
        timeout_s: float | None = None,
    ) -> list[np.ndarray]:
        timeout_s = timeout_s or server.timeout_s
        ids = []
        for i, t in enumerate(texts):
            tokens = backend.encode(t)
            if len(tokens) > backend.max_tokens:
                where = f"text[{i}]" if len(texts) > 1 else "text"
                raise ApiError(
                    400, f"{where} is {len(tokens)} tokens long; this model takes at most {backend.max_tokens}"
                )
            ids.append(tokens)
        try:
            tickets = batcher.enqueue(ids, timeout_s)
        except BatcherError as err:
            raise _from_batcher(err) from None
        return await _wait_all(batcher, tickets, request)

    async def _wait_all(
        batcher: DynamicBatcher[Any, Any], tickets: Sequence[Ticket[Any, Any]], request: Request
    ) -> list[Any]:
        # The cheapest shape found for the per-request path (it is the added latency at concurrency 1): one
        # disconnect watcher that fails the tickets (the batcher then drops them) and plain awaits, in order.
        watcher = asyncio.ensure_future(_disconnected(request.receive))

        def client_gone(w: asyncio.Future[None]) -> None:
            if w.cancelled():
                return
            for t in tickets:
                if not t.future.done():
                    t.future.set_exception(ClientGoneError())

        watcher.add_done_callback(client_gone)
        results = []
        try:
            for t in tickets:
                results.append(await batcher.wait(t))
            request.scope[TIMING_SCOPE_KEY] = (
                max(t.dispatched - t.enqueued for t in tickets),
                max(t.model_s for t in tickets),
            )
        except BaseException as err:
            for t in tickets:  # the rest are not wanted now; a failure nobody reads must not be logged
                if not t.future.cancel() and not t.future.cancelled():
                    t.future.exception()
            if isinstance(err, ClientGoneError):
                request.scope["deepseek.client_gone"] = True
                server.metrics.dropped("cancelled")
                raise
            if isinstance(err, BatcherError):
                raise _from_batcher(err) from None
            raise
        finally:
            watcher.cancel()
        return results

    if settings.task == "text-classification":

        @app.post(
            "/classify",
            response_model=s.ClassifyResponse,
            responses={code: {"model": s.V2Error, "description": d["description"]} for code, d in v2_errors.items()},
            tags=["plain"],
            summary="Classify text (plain JSON)",
        )
        async def classify(body: s.ClassifyRequest, request: Request) -> JSONResponse:
            return await classify_texts(body, request)

        async def classify_texts(body: s.ClassifyRequest, request: Request) -> JSONResponse:
            model, batcher = server.require_ready()
            backend = model.backend
            assert is_classifier(backend)
            texts = [body.text] if isinstance(body.text, str) else body.text
            limit = server.settings.batching.max_queue_size
            if len(texts) > limit:
                raise ApiError(400, f"text: at most {limit} texts per request (got {len(texts)})")
            probs = await _classify(backend, batcher, texts, request)
            labels = backend.labels
            predictions = []
            for p in probs:
                best = int(np.argmax(p))
                predictions.append(
                    {
                        "label": labels[best],
                        "score": float(p[best]),
                        "scores": {lab: float(x) for lab, x in zip(labels, p.tolist(), strict=True)},
                    }
                )
            return JSONResponse({"model": name, "version": model.version, "predictions": predictions})

        fast = JsonFastPath("/classify", s.ClassifyRequest, classify_texts, error_response)
        fast_paths[fast.path] = fast

    # -- OpenAI-compatible ------------------------------------------------------------------------------------

    if settings.task == "causal-lm":
        oai_errors: dict[int | str, dict[str, Any]] = {
            code: {"model": s.OpenAIError, "description": d["description"]} for code, d in v2_errors.items()
        }

        @app.get("/v1/models", response_model=s.ModelList, tags=["openai"], summary="List models (OpenAI)")
        async def list_models() -> s.ModelList:
            return s.ModelList(data=[s.ModelCard(id=name, created=server.created, owned_by="deepseek-operator")])

        @app.get(
            "/v1/models/{model_id}",
            response_model=s.ModelCard,
            tags=["openai"],
            summary="Get a model (OpenAI)",
            responses={404: {"model": s.OpenAIError, "description": "Unknown model"}},
        )
        async def get_model(model_id: str) -> s.ModelCard:
            server.check_model_name(model_id, "model")
            return s.ModelCard(id=name, created=server.created, owned_by="deepseek-operator")

        @app.post(
            "/v1/completions",
            response_model=s.CompletionResponse,
            responses=oai_errors,
            tags=["openai"],
            summary="Text completion (OpenAI-compatible; stream=true gives server-sent events)",
        )
        async def completions(body: s.CompletionRequest, request: Request) -> Response:
            server.check_model_name(body.model, "model")
            _reject_unsupported(body, {"echo": False, "logprobs": None, "suffix": None, "best_of": None})
            model, batcher = server.require_ready()
            backend = model.backend
            assert not is_classifier(backend)
            prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
            max_tokens = body.max_tokens or 16
            reqs = [
                _generation_request(
                    backend, p, max_tokens, _temperature(body), body.top_p or 1.0, _stops(body), body.seed, "max_tokens"
                )
                for p in prompts
            ]
            cid = f"cmpl-{uuid.uuid4().hex}"
            if body.stream:
                return await _stream(
                    batcher,
                    reqs,
                    request,
                    cid,
                    "completion",
                    bool(body.stream_options and body.stream_options.include_usage),
                )
            results = await _generate(batcher, reqs, request)
            for r in results:
                _count_tokens(r)
            choices = [
                {"index": i, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason}
                for i, r in enumerate(results)
            ]
            return JSONResponse(
                {
                    "id": cid,
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": name,
                    "choices": choices,
                    "usage": _usage(results),
                }
            )

        @app.post(
            "/v1/chat/completions",
            response_model=s.ChatCompletionResponse,
            responses=oai_errors,
            tags=["openai"],
            summary="Chat completion (OpenAI-compatible; stream=true gives server-sent events)",
        )
        async def chat_completions(body: s.ChatCompletionRequest, request: Request) -> Response:
            server.check_model_name(body.model, "model")
            _reject_unsupported(body, {"logprobs": False, "top_logprobs": None, "tools": None})
            if body.tool_choice not in (None, "none"):
                raise ApiError(400, "tool_choice: tools are not supported by this server", param="tool_choice")
            if body.response_format is not None and body.response_format.type != "text":
                raise ApiError(400, "response_format: only {'type': 'text'} is supported", param="response_format")
            model, batcher = server.require_ready()
            backend = model.backend
            assert not is_classifier(backend)
            messages = []
            for i, m in enumerate(body.messages):
                content = m.content if isinstance(m.content, str) else "".join(p.text for p in m.content or [])
                if m.role == "tool":
                    raise ApiError(400, f"messages[{i}].role: tool messages are not supported", param="messages")
                messages.append({"role": "system" if m.role == "developer" else m.role, "content": content})
            if messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
                messages.pop()
            if not messages:
                raise ApiError(400, "messages: at least one message with content is required", param="messages")
            prompt = backend.chat_prompt(messages)
            max_tokens = body.max_completion_tokens or body.max_tokens
            prompt_len = len(backend.encode(prompt))
            if max_tokens is None:
                max_tokens = max(1, min(DEFAULT_CHAT_MAX_TOKENS, backend.max_tokens - prompt_len))
            param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
            req = _generation_request(
                backend,
                prompt,
                max_tokens,
                _temperature(body),
                body.top_p or 1.0,
                _stops(body),
                body.seed,
                param,
                allow_empty=False,
            )
            if (body.n or 1) > 1:
                raise ApiError(400, "n: only n=1 is supported", param="n")
            cid = f"chatcmpl-{uuid.uuid4().hex}"
            if body.stream:
                return await _stream(
                    batcher,
                    [req],
                    request,
                    cid,
                    "chat",
                    bool(body.stream_options and body.stream_options.include_usage),
                )
            (result,) = await _generate(batcher, [req], request)
            _count_tokens(result)
            return JSONResponse(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": name,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": result.text},
                            "logprobs": None,
                            "finish_reason": result.finish_reason,
                        }
                    ],
                    "usage": _usage([result]),
                }
            )

    def _reject_unsupported(body: s.SamplingFields, defaults: dict[str, Any]) -> None:
        if (body.n or 1) > 1:
            raise ApiError(400, "n: only n=1 is supported", param="n")
        for key, default in defaults.items():
            value = getattr(body, key)
            if value not in (default, None, False):
                raise ApiError(400, f"{key}: not supported by this server (leave it unset)", param=key)
        for key in ("presence_penalty", "frequency_penalty"):
            if getattr(body, key) not in (None, 0.0):
                raise ApiError(400, f"{key}: only 0 is supported", param=key)
        if body.logit_bias:
            raise ApiError(400, "logit_bias: not supported by this server", param="logit_bias")

    def _temperature(body: s.SamplingFields) -> float:
        return 1.0 if body.temperature is None else body.temperature

    def _stops(body: s.SamplingFields) -> list[str]:
        if body.stop is None:
            return []
        stops = [body.stop] if isinstance(body.stop, str) else body.stop
        if len(stops) > s.MAX_STOP:
            raise ApiError(400, f"stop: at most {s.MAX_STOP} stop sequences", param="stop")
        return stops

    def _generation_request(
        backend: CausalLM,
        prompt: str,
        max_tokens: int,
        temperature: float,
        top_p: float,
        stop: list[str],
        seed: int | None,
        max_param: str,
        allow_empty: bool = False,
    ) -> GenerationRequest:
        ids = backend.encode(prompt)
        if not ids and not allow_empty:
            raise ApiError(400, "prompt: must not be empty", param="prompt")
        if len(ids) + max_tokens > backend.max_tokens:
            raise ApiError(
                400,
                f"{max_param}: prompt ({len(ids)} tokens) + {max_param} ({max_tokens}) exceeds the "
                f"context window of {backend.max_tokens} tokens",
                param=max_param,
            )
        return GenerationRequest(
            prompt_ids=ids, max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop, seed=seed
        )

    async def _generate(
        batcher: DynamicBatcher[Any, Any],
        reqs: list[GenerationRequest],
        request: Request,
        timeout_s: float | None = None,
    ) -> list[GenerationResult]:
        timeout_s = timeout_s or server.timeout_s
        try:
            tickets = batcher.enqueue(reqs, timeout_s)
        except BatcherError as err:
            raise _from_batcher(err) from None
        try:
            return await _wait_all(batcher, tickets, request)
        finally:
            for r in reqs:  # stop generating for callers that left or timed out
                r.cancelled.set()

    def _count_tokens(r: GenerationResult) -> None:
        server.metrics.prompt_tokens.labels(name).inc(r.prompt_tokens)
        server.metrics.generated_tokens.labels(name).inc(r.completion_tokens)

    def _usage(results: Sequence[GenerationResult]) -> dict[str, int]:
        p = sum(r.prompt_tokens for r in results)
        c = sum(r.completion_tokens for r in results)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    async def _stream(
        batcher: DynamicBatcher[Any, Any],
        reqs: list[GenerationRequest],
        request: Request,
        cid: str,
        kind: Literal["completion", "chat"],
        include_usage: bool,
    ) -> Response:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, str | GenerationResult | BaseException]] = asyncio.Queue()
        Event = tuple[int, str | GenerationResult | BaseException]

        def text_sink(index: int) -> Callable[[str], None]:
            def put(delta: str) -> None:  # called on the model thread
                loop.call_soon_threadsafe(events.put_nowait, (index, delta))

            return put

        def result_sink(index: int) -> Callable[[asyncio.Future[Any]], None]:
            def put(f: asyncio.Future[Any]) -> None:
                item: Event = (index, asyncio.CancelledError() if f.cancelled() else (f.exception() or f.result()))
                events.put_nowait(item)

            return put

        for i, r in enumerate(reqs):
            r.on_text = text_sink(i)
        try:
            tickets = batcher.enqueue(reqs, server.timeout_s)
        except BatcherError as err:
            raise _from_batcher(err) from None
        for i, t in enumerate(tickets):
            t.future.add_done_callback(result_sink(i))
        started = time.perf_counter()

        def cancel_all() -> None:
            for r, t in zip(reqs, tickets, strict=True):
                r.cancelled.set()
                t.future.cancel()

        # Wait for the first event before answering, so that refusals and deadlines are still HTTP errors.
        try:
            first = await until_disconnect(request, asyncio.wait_for(events.get(), server.timeout_s))
        except TimeoutError:
            cancel_all()
            server.metrics.dropped("deadline")
            raise ApiError(504, f"no output within the deadline of {server.timeout_s:g} s") from None
        except (ClientGoneError, asyncio.CancelledError):
            cancel_all()
            server.metrics.dropped("cancelled")
            raise
        if isinstance(first[1], BatcherError):
            cancel_all()
            raise _from_batcher(first[1])
        if isinstance(first[1], BaseException):
            cancel_all()
            raise ApiError(500, f"generation failed: {first[1]}")
        server.metrics.first_token_seconds.labels(name).observe(time.perf_counter() - started)
        created = int(time.time())

        def chunk(index: int, text: str | None, finish: str | None, role: bool = False) -> str:
            if kind == "chat":
                delta: dict[str, Any] = {}
                if role:
                    delta["role"] = "assistant"
                if text is not None:
                    delta["content"] = text
                body: dict[str, Any] = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": name,
                    "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
                }
            else:
                body = {
                    "id": cid,
                    "object": "text_completion",
                    "created": created,
                    "model": name,
                    "choices": [{"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}],
                }
            if include_usage:
                body["usage"] = None
            return f"data: {json.dumps(body)}\n\n"

        async def sse() -> AsyncIterator[str]:
            finished: dict[int, GenerationResult] = {}
            try:
                if kind == "chat":
                    yield chunk(0, "", None, role=True)
                event: tuple[int, str | GenerationResult | BaseException] | None = first
                while True:
                    if event is None:
                        event = await events.get()
                    index, payload = event
                    event = None
                    if isinstance(payload, str):
                        yield chunk(index, payload, None)
                    elif isinstance(payload, GenerationResult):
                        finished[index] = payload
                        _count_tokens(payload)
                        yield chunk(index, None if kind == "chat" else "", payload.finish_reason)
                    else:
                        # Failed after the stream started: end it with an error event (no HTTP status left to set).
                        yield f"data: {json.dumps({'error': {'message': str(payload), 'type': 'internal_error'}})}\n\n"
                        finished[index] = GenerationResult("", 0, 0, "stop")
                    if len(finished) == len(reqs):
                        break
                if include_usage:
                    usage = _usage(list(finished.values()))
                    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
                    yield (
                        "data: "
                        + json.dumps(
                            {"id": cid, "object": obj, "created": created, "model": name, "choices": [], "usage": usage}
                        )
                        + "\n\n"
                    )
                yield "data: [DONE]\n\n"
            finally:
                cancel_all()  # the client left mid-stream, or we are done: stop generating either way

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # -- OpenAPI: our 400 replaces FastAPI's default 422 -----------------------------------------------------

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            # One server serves one model: say so, so that clients and fuzzers use the real name and version.
            fixed = {"model_name": name, "model_id": name, "version": settings.version}
            for path_item in schema.get("paths", {}).values():
                for op in path_item.values():
                    for param in op.get("parameters", []):
                        if param.get("in") == "path" and param.get("name") in fixed:
                            param["schema"] = {"type": "string", "enum": [fixed[param["name"]]]}
                    responses = op.get("responses", {})
                    if "422" in responses:
                        del responses["422"]
                        if "400" not in responses:
                            responses["400"] = {
                                "description": "Bad request",
                                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/V2Error"}}},
                            }
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.setdefault("V2Error", s.V2Error.model_json_schema())
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


# ---------------------------------------------------------------------------------------------------------
# Payload helpers


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
    return out


def _v2_texts(body: s.V2InferRequest, input_name: str, max_items: int) -> list[str]:
    if len(body.inputs) != 1 or body.inputs[0].name != input_name:
        names = [i.name for i in body.inputs]
        raise ApiError(400, f"inputs: this model takes exactly one input named {input_name!r} (BYTES); got {names}")
    inp = body.inputs[0]
    if inp.datatype != "BYTES":
        raise ApiError(400, f"inputs[0].datatype: {input_name!r} must be BYTES (text), not {inp.datatype}")
    if len(inp.shape) > 2 or (len(inp.shape) == 2 and inp.shape[1] != 1):
        raise ApiError(400, f"inputs[0].shape: must be [N] or [N, 1], got {inp.shape}")
    data = _flatten(inp.data)
    n = math.prod(inp.shape)
    if n != len(data):
        raise ApiError(400, f"inputs[0]: shape {inp.shape} holds {n} elements but data has {len(data)}")
    if n == 0:
        raise ApiError(400, "inputs[0].data: at least one text is required")
    if n > max_items:
        raise ApiError(400, f"inputs[0].shape: at most {max_items} texts per request (got {n})")
    for i, x in enumerate(data):
        if not isinstance(x, str):
            raise ApiError(400, f"inputs[0].data[{i}]: must be a string, got {type(x).__name__}")
        if not x.strip():
            raise ApiError(400, f"inputs[0].data[{i}]: text must not be empty")
        if len(x) > s.MAX_TEXT_CHARS:
            raise ApiError(400, f"inputs[0].data[{i}]: text longer than {s.MAX_TEXT_CHARS} characters")
    return data


def _v2_classifier_outputs(body: s.V2InferRequest, labels: list[str], probs: list[np.ndarray]) -> list[dict[str, Any]]:
    available = {"label", "scores"}
    wanted = {o.name for o in body.outputs} if body.outputs else available
    unknown = wanted - available
    if unknown:
        raise ApiError(400, f"outputs: unknown output(s) {sorted(unknown)}; this model has: label, scores")
    n = len(probs)
    out: list[dict[str, Any]] = []
    if "label" in wanted:
        out.append(
            {"name": "label", "datatype": "BYTES", "shape": [n], "data": [labels[int(np.argmax(p))] for p in probs]}
        )
    if "scores" in wanted:
        flat = np.stack(probs).astype(np.float32).reshape(-1).tolist()
        out.append(
            {
                "name": "scores",
                "datatype": "FP32",
                "shape": [n, len(labels)],
                "data": flat,
                "parameters": {"labels": ",".join(labels)},
            }
        )
    return out


def _v2_timeout(params: dict[str, Any], default_s: float) -> float:
    """Triton's schedule-policy parameter: ``timeout`` in microseconds, which may only shorten the deadline."""
    if "timeout" not in params:
        return default_s
    v = params["timeout"]
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ApiError(400, "parameters.timeout: must be a positive integer (microseconds)")
    return min(default_s, v / 1e6)


def _generation_params(params: dict[str, Any]) -> dict[str, Any]:
    def number(key: str, default: float, lo: float, hi: float) -> float:
        v = params.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise ApiError(400, f"parameters.{key}: must be a number in [{lo:g}, {hi:g}]")
        return float(v)

    max_tokens = params.get("max_tokens", 16)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ApiError(400, "parameters.max_tokens: must be a positive integer")
    stop = params.get("stop")
    if stop is not None and (not isinstance(stop, str) or not stop):
        raise ApiError(400, "parameters.stop: must be a non-empty string")
    return {
        "max_tokens": max_tokens,
        "temperature": number("temperature", 0.0, 0.0, 2.0),
        "top_p": number("top_p", 1.0, 1e-6, 1.0),
        "stop": [stop] if stop else [],
    }
