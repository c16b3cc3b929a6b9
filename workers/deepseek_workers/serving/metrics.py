"""Prometheus metrics of the model server (one registry per server, so tests can run several).

Every name is prefixed ``deepseek_serve_`` and carries its unit. The full list, with labels and meaning, is
in docs/serving.md; dashboards and alerts are built on these names, so change them only with the docs.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)
disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series double the output and no dashboard uses them

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)


class ServerMetrics:
    """All series of one server; ``model`` is the served model's name (a label on every series)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.requests = Counter(
            "deepseek_serve_requests_total",
            "HTTP requests answered, by endpoint (route template) and status code.",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "deepseek_serve_request_duration_seconds",
            "Time from request arrival to the end of the response (streams: to the last chunk), by endpoint.",
            ["model", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "deepseek_serve_queue_wait_seconds",
            "Time a request waited in the batching queue before its batch started.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "deepseek_serve_compute_seconds",
            "Model time of one batch (one forward pass, or one generate call for causal LMs).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "deepseek_serve_batch_size",
            "Requests per model call (average batch size = _sum / _count).",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.padding_ratio = Histogram(
            "deepseek_serve_batch_padding_ratio",
            "Share of padded token positions in a formed batch (after length grouping).",
            ["model"],
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "deepseek_serve_rejected_requests_total",
            "Requests not served, by reason: queue_full (429), deadline (504), cancelled (caller left), "
            "not_ready or draining (503).",
            ["model", "reason"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "deepseek_serve_queue_depth_requests",
            "Requests waiting in the batching queue.",
            ["model"],
            registry=r,
        )
        self.running = Gauge(
            "deepseek_serve_running_requests",
            "Requests taken from the queue whose batch is running on the model.",
            ["model"],
            registry=r,
        )
        self.in_flight = Gauge(
            "deepseek_serve_in_flight_requests",
            "HTTP requests being handled (all endpoints, streams included).",
            ["model"],
            registry=r,
        )
        self.ready = Gauge(
            "deepseek_serve_ready",
            "1 when the model is loaded, warmed up and the server is not draining; else 0.",
            ["model"],
            registry=r,
        )
        self.info = Gauge(
            "deepseek_serve_model_info",
            "Always 1; the labels describe the served model.",
            ["model", "version", "variant", "task", "device"],
            registry=r,
        )
        self.load_seconds = Gauge(
            "deepseek_serve_model_load_seconds",
            "Time spent loading, verifying and warming up the model.",
            ["model"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "deepseek_serve_prompt_tokens_total", "Prompt tokens processed (causal LMs).", ["model"], registry=r
        )
        self.generated_tokens = Counter(
            "deepseek_serve_generated_tokens_total", "Tokens generated (causal LMs).", ["model"], registry=r
        )
        self.first_token_seconds = Histogram(
            "deepseek_serve_time_to_first_token_seconds",
            "Streaming requests: time from arrival to the first generated text.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ready.labels(model).set(0)
        self._bind_hot_paths()

    def _bind_hot_paths(self) -> None:
        # Labelled children looked up once: labels() takes a lock and validates on every call, and these run
        # on every request or batch (the per-request path is the added latency at concurrency 1).
        m = self.model
        self._queue_wait = self.queue_wait_seconds.labels(m)
        self._batch_size = self.batch_size.labels(m)
        self._compute = self.compute_seconds.labels(m)
        self._padding = self.padding_ratio.labels(m)
        self._answered: dict[tuple[str, int], Any] = {}
        self._durations: dict[str, Any] = {}

    def request_done(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request and observe its duration."""
        counter = self._answered.get((endpoint, status))
        if counter is None:
            counter = self._answered[endpoint, status] = self.requests.labels(self.model, endpoint, str(status))
        duration = self._durations.get(endpoint)
        if duration is None:
            duration = self._durations[endpoint] = self.request_seconds.labels(self.model, endpoint)
        counter.inc()
        duration.observe(seconds)

    def bind_queue(self, depth: Callable[[], float], running: Callable[[], float]) -> None:
        self.queue_depth.labels(self.model).set_function(depth)
        self.running.labels(self.model).set_function(running)

    # BatcherObserver
    def queue_wait(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def batch(self, size: int, compute_seconds: float, padding_ratio: float) -> None:
        self._batch_size.observe(size)
        self._compute.observe(compute_seconds)
        self._padding.observe(padding_ratio)

    def dropped(self, reason: str) -> None:
        self.rejected.labels(self.model, reason).inc()

    def enable_gpu(self) -> bool:
        """Add GPU utilisation and memory gauges when a CUDA device exists (NVML when available)."""
        try:
            import torch
        except ImportError:
            return False
        if not torch.cuda.is_available():
            return False
        self.registry.register(_GpuCollector())
        return True


class _GpuCollector(Collector):
    """Reads the GPUs at scrape time: NVML for utilisation and device memory, torch for its own allocations."""

    def __init__(self) -> None:
        self._nvml: Any = None
        try:
            pynvml = importlib.import_module("pynvml")  # from nvidia-ml-py (untyped)
            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception as err:  # no NVML library in the container: torch figures only
            log.info("NVML unavailable (%s): GPU utilisation is not exported", err)

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        import torch

        util = GaugeMetricFamily(
            "deepseek_serve_gpu_utilization_ratio", "GPU busy share over the last sample period (NVML).", labels=["gpu"]
        )
        used = GaugeMetricFamily("deepseek_serve_gpu_memory_used_bytes", "GPU memory in use (NVML).", labels=["gpu"])
        total = GaugeMetricFamily("deepseek_serve_gpu_memory_total_bytes", "GPU memory size.", labels=["gpu"])
        alloc = GaugeMetricFamily(
            "deepseek_serve_gpu_memory_allocated_bytes",
            "GPU memory held by this process's tensors (torch allocator).",
            labels=["gpu"],
        )
        for i in range(torch.cuda.device_count()):
            gpu = str(i)
            alloc.add_metric([gpu], float(torch.cuda.memory_allocated(i)))
            if self._nvml is not None:
                handle = self._nvml.nvmlDeviceGetHandleByIndex(i)
                rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                mem = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                util.add_metric([gpu], rates.gpu / 100.0)
                used.add_metric([gpu], float(mem.used))
                total.add_metric([gpu], float(mem.total))
            else:
                total.add_metric([gpu], float(torch.cuda.get_device_properties(i).total_memory))
        yield from (util, used, total, alloc)
