"""Prometheus metrics of a training worker, served on `metricsPort` (9400 by default) at /metrics.

One process per node serves them (local rank 0); with several processes per node the others only train.
GPU utilisation comes from NVML when the nvidia-ml-py package is present; memory counters come from torch.
The names are listed in docs/training.md (dashboards and alerts are built on them).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

METRICS_HOST_ENV = "DEEPSEEK_METRICS_HOST"  # tests bind 127.0.0.1; pods bind all interfaces


class TrainingMetrics:
    """The gauges and counters; `serve()` starts the HTTP endpoint, `close()` stops it."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.info = Gauge(
            "deepseek_training_info",
            "Constant 1, labelled with what this worker trains.",
            ["model", "task", "precision", "device", "lora", "sparse"],
            registry=r,
        )
        self.world_size = Gauge("deepseek_training_world_size", "Processes in the training job.", registry=r)
        self.step = Gauge("deepseek_training_step", "Optimizer steps completed.", registry=r)
        self.total_steps = Gauge("deepseek_training_total_steps", "Optimizer steps the run will take.", registry=r)
        self.epoch = Gauge("deepseek_training_epoch", "Fractional epoch reached.", registry=r)
        self.loss = Gauge("deepseek_training_loss", "Mean training loss since the previous update.", registry=r)
        self.learning_rate = Gauge("deepseek_training_learning_rate", "Current learning rate.", registry=r)
        self.samples_per_second = Gauge(
            "deepseek_training_samples_per_second", "Training examples per second (whole job).", registry=r
        )
        self.tokens_per_second = Gauge(
            "deepseek_training_tokens_per_second", "Non-padding tokens per second (whole job).", registry=r
        )
        self.samples = Counter("deepseek_training_samples", "Training examples processed (whole job).", registry=r)
        self.tokens = Counter("deepseek_training_tokens", "Non-padding tokens processed (whole job).", registry=r)
        self.step_seconds = Histogram(
            "deepseek_training_step_duration_seconds",
            "Wall time of one optimizer step on this process.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.eta_seconds = Gauge("deepseek_training_eta_seconds", "Estimated seconds until training ends.", registry=r)
        self.eval_metric = Gauge(
            "deepseek_training_eval_metric", "Latest evaluation result, by metric name.", ["metric"], registry=r
        )
        self.checkpoints = Counter("deepseek_training_checkpoints", "Checkpoints written.", registry=r)
        self.checkpoint_seconds = Histogram(
            "deepseek_training_checkpoint_duration_seconds",
            "Wall time of writing one checkpoint.",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.last_checkpoint_step = Gauge(
            "deepseek_training_last_checkpoint_step", "Step of the newest checkpoint written.", registry=r
        )
        self.resumed_from_step = Gauge(
            "deepseek_training_resumed_from_step", "Step this process resumed from (0 when fresh).", registry=r
        )
        self.active_fraction = Gauge(
            "deepseek_training_sparse_active_fraction_ratio",
            "Measured share of (token, expert) pairs computed (dynamic-sparse model).",
            registry=r,
        )
        self.peak_memory = Gauge(
            "deepseek_training_peak_memory_bytes",
            "Peak memory of this process: GPU memory allocated by torch, or resident set size on CPU.",
            registry=r,
        )
        self.gpu_memory_allocated = Gauge(
            "deepseek_training_gpu_memory_allocated_bytes", "GPU memory allocated by torch.", ["gpu"], registry=r
        )
        self.gpu_memory_reserved = Gauge(
            "deepseek_training_gpu_memory_reserved_bytes",
            "GPU memory reserved by torch's allocator.",
            ["gpu"],
            registry=r,
        )
        self.gpu_memory_used = Gauge(
            "deepseek_training_gpu_memory_used_bytes", "GPU memory in use on the device (NVML).", ["gpu"], registry=r
        )
        self.gpu_memory_total = Gauge(
            "deepseek_training_gpu_memory_total_bytes", "GPU memory on the device (NVML).", ["gpu"], registry=r
        )
        self.gpu_utilization = Gauge(
            "deepseek_training_gpu_utilization_ratio",
            "Share of the last sample period the GPU was busy (NVML).",
            ["gpu"],
            registry=r,
        )
        self._server: Any = None
        self._thread: Any = None
        self._nvml: Any = None
        self._nvml_handle: Any = None
        self.port: int | None = None

    def serve(self, port: int) -> None:
        """Start /metrics on `port` (0 = do not serve)."""
        if port == 0:
            return
        host = os.environ.get(METRICS_HOST_ENV, "0.0.0.0")
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as err:  # a busy port must not kill a training run
            log.warning("cannot serve metrics on %s:%d: %s", host, port, err)
            return
        self.port = port
        log.info("serving training metrics on http://%s:%d/metrics", host, port)

    def watch_gpu(self, device_index: int) -> None:
        try:
            import pynvml  # from nvidia-ml-py (untyped; absent on some workers)
        except ImportError:
            return
        try:
            pynvml.nvmlInit()
            self._nvml_handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            self._nvml = pynvml
        except Exception as err:  # NVML missing in the container is not fatal
            log.info("NVML unavailable (%s): no GPU utilisation metrics", err)

    def sample_gpu(self, device_index: int) -> None:
        import torch

        if not torch.cuda.is_available():
            return
        gpu = str(device_index)
        self.gpu_memory_allocated.labels(gpu).set(torch.cuda.memory_allocated(device_index))
        self.gpu_memory_reserved.labels(gpu).set(torch.cuda.memory_reserved(device_index))
        if self._nvml is not None:
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(self._nvml_handle)
                mem = self._nvml.nvmlDeviceGetMemoryInfo(self._nvml_handle)
            except Exception as err:
                log.debug("NVML sample failed: %s", err)
                return
            self.gpu_utilization.labels(gpu).set(util.gpu / 100.0)
            self.gpu_memory_used.labels(gpu).set(mem.used)
            self.gpu_memory_total.labels(gpu).set(mem.total)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception as err:
                log.debug("NVML shutdown failed: %s", err)
            self._nvml = None
