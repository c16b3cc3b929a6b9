"""The training loop: data-parallel, mixed precision, resumable, observable.

One optimizer step consumes a *global batch* of `batchSize x worldSize x gradientAccumulationSteps` rows. The
rows of epoch e are a permutation fixed by (seed, e); step s of the epoch takes the s-th slice of it, and
micro-batch a of rank r takes the (a x worldSize + r)-th piece of that slice. So a run's trajectory depends on
the global batch only: 2 processes x 8 rows and 1 process x 16 rows (or x 8 with 2 accumulation steps) see the
same rows in each step, and a resumed run needs nothing but the step number to find its place. A trailing
partial global batch is dropped each epoch (the next epoch reshuffles, so no row is lost for good).

Mixed precision: parameters and optimizer state stay fp32 (master weights); forward passes run under
torch.autocast in bf16 or fp16, fp16 with a GradScaler. Gradients are clipped to norm 1.0. bf16 on a CPU
without native bf16 instructions (AVX512-BF16, AMX or Arm BF16) runs in fp32 instead: emulated bf16 measured
7.7x slower than fp32 there (AVX2 EPYC), so mixed precision would only cost time; the run says so in its log
and in the precision it reports.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import resource
import signal
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from deepseek_workers import builtin_models
from deepseek_workers.data import PreparedData, load_training_data
from deepseek_workers.errors import BadConfigError, WorkerError
from deepseek_workers.models.sparse import (
    SparseGatedConfig,
    expert_load_cv,
    flops_per_token,
    measured_active_fraction,
)
from deepseek_workers.progress import ProgressReporter, make_report, now_rfc3339
from deepseek_workers.runconfig import EvalMetric, ProgressReport, TrainRunConfig
from deepseek_workers.storage import Storage, StorageError
from deepseek_workers.training import checkpoint, modeling, output
from deepseek_workers.training.batches import Encoded, collate, encode_causal, encode_classification
from deepseek_workers.training.evaluation import classification_metrics, perplexity
from deepseek_workers.training.launch import NUM_THREADS_ENV
from deepseek_workers.training.telemetry import TrainingMetrics

log = logging.getLogger(__name__)

MAX_GRAD_NORM = 1.0
TRAIN_LOSS_WINDOW = 20  # the reported trainLoss: mean over the final optimizer steps, over all ranks
# Test hook: SIGKILL this process right after finishing this optimizer step (a crash at a known point).
FAULT_KILL_AFTER_STEP_ENV = "DEEPSEEK_FAULT_KILL_AFTER_STEP"
EXIT_INTERRUPTED = 143  # 128 + SIGTERM: stopped on request after writing a checkpoint


class TrainingInterrupted(WorkerError):
    """SIGTERM arrived: a checkpoint was written and the process stops; a restarted worker resumes."""

    exit_code = EXIT_INTERRUPTED


# ---------------------------------------------------------------------------------------------------------
# Process group


@dataclass(frozen=True)
class Dist:
    """This process's place in the job, read only from the environment torchrun sets."""

    rank: int
    world: int
    local_rank: int
    local_world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @staticmethod
    def from_env() -> Dist:
        env = os.environ
        try:
            rank = int(env.get("RANK", "0"))
            world = int(env.get("WORLD_SIZE", "1"))
            local_rank = int(env.get("LOCAL_RANK", "0"))
            local_world = int(env.get("LOCAL_WORLD_SIZE", "1"))
        except ValueError as err:
            raise BadConfigError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {err}") from None
        want = env.get("DEEPSEEK_DEVICE", "auto")
        if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
            device = torch.device("cpu")
        else:
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        return Dist(rank, world, local_rank, local_world, device)

    def init(self) -> None:
        if not self.distributed or dist.is_initialized():
            return
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        # init_method env:// reads MASTER_ADDR / MASTER_PORT (set by torchrun).
        try:
            dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
        except (RuntimeError, ValueError) as err:
            where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
            raise WorkerError(
                f"rank {self.rank} of {self.world} cannot join the process group at {where}: {err}"
            ) from err
        log.info("joined process group: rank %d of %d (%s)", self.rank, self.world, backend)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any_flag(self, flag: bool) -> bool:
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def gather(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------
# Plan


@dataclass(frozen=True)
class Plan:
    micro_batch: int
    accumulation: int
    world: int
    steps_per_epoch: int
    total_steps: int

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.accumulation * self.world


def make_plan(cfg: TrainRunConfig, train_rows: int, world: int) -> Plan:
    t = cfg.training
    gb = t.batch_size * t.gradient_accumulation_steps * world
    steps_per_epoch = train_rows // gb
    if steps_per_epoch == 0:
        raise BadConfigError(
            f"one optimizer step needs {gb} rows (training.batchSize {t.batch_size} x gradientAccumulationSteps "
            f"{t.gradient_accumulation_steps} x {world} workers) but there are only {train_rows} training rows "
            "(sequences, for causal-lm); lower the batch size or add data"
        )
    total = t.max_steps if t.max_steps is not None else steps_per_epoch * t.epochs
    return Plan(t.batch_size, t.gradient_accumulation_steps, world, steps_per_epoch, total)


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    order = list(range(n))
    random.Random(f"{seed}/{epoch}").shuffle(order)
    return order


def micro_batches(plan: Plan, order: list[int], step_in_epoch: int, rank: int) -> Iterator[list[int]]:
    """Row indices of each micro-batch this rank runs in one optimizer step."""
    base = step_in_epoch * plan.global_batch
    for a in range(plan.accumulation):
        start = base + (a * plan.world + rank) * plan.micro_batch
        yield order[start : start + plan.micro_batch]


def fingerprint(cfg: TrainRunConfig, world: int) -> str:
    """Hash of everything that shapes the training trajectory (not evaluation or checkpoint cadence)."""
    doc = {
        "model": cfg.model.model_dump(mode="json"),
        "dataset": cfg.dataset.model_dump(mode="json", exclude={"max_eval_samples"}),
        "training": cfg.training.model_dump(mode="json", exclude={"checkpoint_every_steps", "eval_every_steps"}),
        "world": world,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------------------------------------
# Precision


@dataclass(frozen=True)
class Precision:
    name: str  # what the forward passes really run in
    dtype: torch.dtype | None  # None: fp32, no autocast
    requested: str = ""  # training.precision, when it differs from name

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)

    def scaler(self, device: torch.device) -> torch.amp.GradScaler:
        # Only fp16 needs loss scaling (its exponent range underflows small gradients); bf16 has fp32's range.
        return torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)


_NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 flags; "bf16" is Arm's feature


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU computes bf16 in hardware (else oneDNN emulates it, several times slower than fp32)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return not _NATIVE_BF16_CPU_FLAGS.isdisjoint(value.split())
    return False


def precision_for(name: str, device: torch.device, native_cpu_bf16: bool | None = None) -> Precision:
    if name == "fp32":
        return Precision(name, None)
    if name == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise BadConfigError("training.precision bf16 is not supported by this GPU; use fp16 or fp32")
        if device.type == "cpu" and not (cpu_has_native_bf16() if native_cpu_bf16 is None else native_cpu_bf16):
            log.warning(
                "training.precision bf16: this CPU has no native bf16 (no avx512_bf16, amx_bf16 or Arm bf16), so "
                "autocast would emulate it several times slower than fp32; training in fp32 instead"
            )
            return Precision("fp32", None, requested=name)
        return Precision(name, torch.bfloat16)
    return Precision(name, torch.float16)


# ---------------------------------------------------------------------------------------------------------
# The run


@dataclass
class Counters:
    step: int = 0
    samples: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    resumed_from: int | None = None
    last_eval: dict[str, float] = field(default_factory=dict)
    last_eval_step: int = -1


class _StopFlag:
    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def install(self) -> None:
        with contextlib.suppress(ValueError):  # not the main thread (in-process tests): no handler
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        log.warning("SIGTERM: stopping after this step with a checkpoint")
        self.requested = True

    def uninstall(self) -> None:
        if self._previous is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, self._previous)


def _configure_threads(d: Dist) -> None:
    wanted = os.environ.get(NUM_THREADS_ENV)
    if wanted:
        try:
            torch.set_num_threads(max(1, int(wanted)))
        except ValueError:
            raise BadConfigError(f"{NUM_THREADS_ENV} must be an integer, got {wanted!r}") from None


def train(cfg: TrainRunConfig) -> None:
    d = Dist.from_env()
    _configure_threads(d)
    _quiet_libraries()
    metrics = TrainingMetrics()
    reporter = _reporter(cfg) if d.main else None
    stop = _StopFlag()
    try:
        d.init()
        if d.local_rank == 0:
            metrics.serve(cfg.metrics_port)
            if d.device.type == "cuda":
                metrics.watch_gpu(d.device.index or 0)
        stop.install()
        _Run(cfg, d, metrics, reporter, stop).run()
    except BaseException as err:
        if reporter is not None and not isinstance(err, TrainingInterrupted):
            msg = err.message if isinstance(err, WorkerError) else f"{type(err).__name__}: {err}"
            reporter.report(make_report(stage="train", state="failed", message=msg[:1000]), final=True)
        raise
    finally:
        if reporter is not None:
            reporter.close()
        stop.uninstall()
        metrics.close()
        d.close()


def _quiet_libraries() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


class _Reporter:
    """ProgressReporter plus a heartbeat: the newest running report is re-sent (with a fresh `updatedAt`)
    whenever nothing was sent for `intervalSeconds`, so the operator hears from the worker at least that often
    even during a long step, an evaluation or a checkpoint write."""

    def __init__(self, cfg: TrainRunConfig) -> None:
        try:
            local = Storage.from_uri(cfg.output_uri).local_path()
        except StorageError as err:
            raise BadConfigError(f"outputUri: {err}") from None
        self._inner = ProgressReporter(cfg.progress, local)
        self._interval = cfg.progress.interval_seconds
        self._lock = threading.Lock()
        self._latest: ProgressReport | None = None
        self._sent = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="progress-heartbeat", daemon=True)
        self._thread.start()

    def report(self, report: ProgressReport, *, final: bool = False) -> None:
        if final:
            self.close()
        with self._lock:
            self._inner.report(report, final=True)  # the engine already paces its reports
            self._latest = None if final else report
            self._sent = time.monotonic()

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self._interval / 2)):
            with self._lock:
                if self._latest is not None and time.monotonic() - self._sent >= self._interval:
                    self._latest = self._latest.model_copy(update={"updated_at": now_rfc3339()})
                    self._inner.report(self._latest, final=True)
                    self._sent = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)


def _reporter(cfg: TrainRunConfig) -> _Reporter:
    return _Reporter(cfg)


class _Run:
    def __init__(
        self,
        cfg: TrainRunConfig,
        d: Dist,
        metrics: TrainingMetrics,
        reporter: _Reporter | None,
        stop: _StopFlag,
    ) -> None:
        self.cfg = cfg
        self.d = d
        self.metrics = metrics
        self.reporter = reporter
        self.stop = stop
        self.fingerprint = fingerprint(cfg, d.world)
        self.precision = precision_for(cfg.training.precision, d.device)
        self.counters = Counters()
        self.labels: list[str] = []
        self.train_routing = torch.zeros(0)  # dynamic-sparse: tokens per (block, expert) seen in training
        self.routed_train: torch.Tensor | float = 0.0
        self.peak_before_training = 0.0
        self.last_loss = math.nan
        self.recent_losses: deque[torch.Tensor] = deque(maxlen=TRAIN_LOSS_WINDOW)
        # Writable scratch (pods have a read-only root filesystem; the model cache is a mounted emptyDir).
        cache = builtin_models.model_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix=".train-", dir=cache))

    # -- setup ---------------------------------------------------------------------------------------------

    def run(self) -> None:
        cfg, d = self.cfg, self.d
        dest = output.destination(cfg)
        done = output.published(cfg, self.fingerprint)
        if done is not None:
            log.info("artifact %s is already published by this configuration; nothing to do", dest)
            metrics = output.flat_metrics(json.loads(Storage.from_uri(dest).read_text("metrics.json")))
            self._final(dest, metrics, int(done.extra.get("steps", 0)))
            return
        model_dir = modeling.resolve_model_dir(cfg, self.scratch)
        data = load_training_data(cfg, modeling.existing_labels(model_dir) if cfg.model.task != "causal-lm" else None)
        loaded = modeling.load(cfg, model_dir, data.labels)
        self.loaded = loaded
        self.labels = data.labels
        train_set, eval_set = self._encode(loaded, data)
        self.train_set, self.eval_set = train_set, eval_set
        plan = make_plan(cfg, len(train_set), d.world)
        self.plan = plan
        model = loaded.model.to(d.device)
        self.module = model
        trainable, total = modeling.parameter_counts(model)
        self.param_counts = (trainable, total)
        params = [p for p in model.parameters() if p.requires_grad]
        self.params = params
        t = cfg.training
        self.optimizer = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
        self.scheduler = _scheduler(self.optimizer, t.lr_schedule, t.warmup_ratio, plan.total_steps)
        self.scaler = self.precision.scaler(d.device)
        self._resume()
        if d.distributed:
            ids = [d.device.index] if d.device.type == "cuda" else None
            # Buffers here are constants (position ids); not broadcasting them saves a collective per forward.
            self.ddp: nn.Module = DDP(model, device_ids=ids, broadcast_buffers=False)
        else:
            self.ddp = model
        self._describe(data)
        self._loop()
        self._finish(data)

    def _encode(self, loaded: modeling.LoadedModel, data: PreparedData) -> tuple[Encoded, Encoded]:
        n = self.cfg.dataset.max_length
        if data.task == "causal-lm":
            return (
                encode_causal(loaded.tokenizer, data.train, n, f"{data.source} (training)"),
                encode_causal(loaded.tokenizer, data.eval, n, f"{data.source} (evaluation)"),
            )
        return (
            encode_classification(loaded.tokenizer, data.train, data.labels, n),
            encode_classification(loaded.tokenizer, data.eval, data.labels, n),
        )

    def _describe(self, data: PreparedData) -> None:
        trainable, total = self.param_counts
        lora = self.loaded.lora
        self.metrics.info.labels(
            model=self.loaded.model_type,
            task=self.cfg.model.task,
            precision=self.precision.name,
            device=self.d.device.type,
            lora=str(lora).lower(),
            sparse=str(self.loaded.sparse_config is not None).lower(),
        ).set(1)
        self.metrics.world_size.set(self.d.world)
        self.metrics.total_steps.set(self.plan.total_steps)
        if self.counters.resumed_from is not None:
            self.metrics.resumed_from_step.set(self.counters.resumed_from)
        log.info(
            "training %s on %s: %d train / %d eval rows -> %d / %d sequences; %d steps (%d per epoch, global batch "
            "%d); %s; %d of %d parameters trainable (%.2f%%); device %s, world %d",
            self.loaded.description,
            data.source,
            len(data.train),
            len(data.eval),
            len(self.train_set),
            len(self.eval_set),
            self.plan.total_steps,
            self.plan.steps_per_epoch,
            self.plan.global_batch,
            self.precision.name,
            trainable,
            total,
            100.0 * trainable / total,
            self.d.device,
            self.d.world,
        )

    # -- checkpoints ---------------------------------------------------------------------------------------

    def _model_state(self) -> dict[str, torch.Tensor]:
        if self.loaded.lora:
            # The frozen base is rebuilt from the base model; only what trains needs saving.
            return {n: p.detach().cpu() for n, p in self.module.named_parameters() if p.requires_grad}
        return {k: v.detach().cpu() for k, v in self.module.state_dict().items()}

    def _rng_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
        if self.d.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.d.device)
        return state

    def _save_checkpoint(self) -> None:
        step = self.counters.step
        rng = self.d.gather(self._rng_state())  # every rank's dropout stream, written by rank 0
        if self.d.main:
            started = time.perf_counter()
            c = self.counters
            trainer_state = {
                "step": step,
                "samples": c.samples,
                "tokens": c.tokens,
                "train_seconds": c.train_seconds,
                "last_eval": dict(c.last_eval),
                "last_eval_step": c.last_eval_step,
                "recent_losses": [float(x) for x in self.recent_losses],
            }
            uri = checkpoint.save(
                self.cfg.output_uri,
                step,
                self.fingerprint,
                {
                    "model": self._model_state(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "trainer": trainer_state,
                    "rng": rng,
                },
            )
            seconds = time.perf_counter() - started
            self.metrics.checkpoints.inc()
            self.metrics.checkpoint_seconds.observe(seconds)
            self.metrics.last_checkpoint_step.set(step)
            log.info("checkpoint %s written in %.1fs", uri, seconds)
        self.d.barrier()

    def _resume(self) -> None:
        if self.d.main:
            checkpoint.remove_stale_staging(self.cfg.output_uri)
        self.d.barrier()
        ckpt = checkpoint.load_latest(self.cfg.output_uri, self.fingerprint)
        if ckpt is None:
            return
        p = ckpt.payloads
        result = self.module.load_state_dict(p["model"], strict=not self.loaded.lora)
        if self.loaded.lora and result.unexpected_keys:
            raise BadConfigError(f"checkpoint {ckpt.uri} does not fit this model: {result.unexpected_keys[:3]}")
        self.optimizer.load_state_dict(p["optimizer"])
        self.scheduler.load_state_dict(p["scheduler"])
        self.scaler.load_state_dict(p["scaler"])
        rng = p["rng"]
        if len(rng) != self.d.world:
            raise BadConfigError(
                f"checkpoint {ckpt.uri} was written by {len(rng)} workers, this job has {self.d.world}"
            )
        mine = rng[self.d.rank]
        random.setstate(mine["python"])
        torch.set_rng_state(mine["torch"])
        if "cuda" in mine and self.d.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"], self.d.device)
        t = p["trainer"]
        c = self.counters
        c.step, c.samples, c.tokens = int(t["step"]), int(t["samples"]), int(t["tokens"])
        c.train_seconds = float(t["train_seconds"])
        c.last_eval, c.last_eval_step = dict(t["last_eval"]), int(t["last_eval_step"])
        c.resumed_from = c.step
        self.recent_losses.extend(torch.tensor(x, device=self.d.device) for x in t["recent_losses"])
        log.info("resumed from checkpoint %s (step %d)", ckpt.uri, c.step)

    # -- the loop ------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        cfg, d, plan, c = self.cfg, self.d, self.plan, self.counters
        t = cfg.training
        fault_step = int(os.environ.get(FAULT_KILL_AFTER_STEP_ENV, "0") or 0)
        eval_every = t.eval_every_steps or plan.steps_per_epoch
        loss_sum = torch.zeros((), device=d.device)
        loss_n = 0
        window_start, window_samples, window_tokens, window_seconds = time.perf_counter(), 0, 0, 0.0
        # Local, time-based cadence (no collectives): progress for the operator, gauges for Prometheus.
        publish_every = cfg.progress.interval_seconds
        order: list[int] = []
        order_epoch = -1
        self.ddp.train()
        self.peak_before_training = self._peak_memory()
        self._progress(None)
        while c.step < plan.total_steps:
            step_started = time.perf_counter()
            epoch, in_epoch = divmod(c.step, plan.steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = epoch_order(t.seed, epoch, len(self.train_set)), epoch
            local_tokens = 0
            step_loss = torch.zeros((), device=d.device)
            for a, rows in enumerate(micro_batches(plan, order, in_epoch, d.rank)):
                batch = collate(self.train_set, rows, d.device)
                local_tokens += sum(len(self.train_set.input_ids[i]) for i in rows)  # no device sync
                sync = a == plan.accumulation - 1
                ctx = self.ddp.no_sync() if d.distributed and not sync else contextlib.nullcontext()  # type: ignore[operator]
                with ctx:
                    with self.precision.autocast(d.device):
                        out = self.ddp(**batch)
                    loss = out.loss / plan.accumulation
                    self.scaler.scale(loss).backward()
                step_loss += loss.detach()
                counts = getattr(out, "expert_counts", None)
                if counts is not None:  # kept on the device: no sync per step
                    counts = counts.detach()
                    self.train_routing = counts if self.train_routing.numel() == 0 else self.train_routing + counts
                    self.routed_train = self.routed_train + out.routed_tokens.detach()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            loss_sum += step_loss
            self.recent_losses.append(step_loss)
            c.step += 1
            loss_n += 1
            step_seconds = time.perf_counter() - step_started
            c.samples += plan.global_batch
            tokens = local_tokens * d.world  # an estimate for the job: other ranks' padding differs slightly
            c.tokens += tokens
            window_samples += plan.global_batch
            window_tokens += tokens
            self.metrics.step_seconds.observe(step_seconds)
            self.metrics.samples.inc(plan.global_batch)
            self.metrics.tokens.inc(tokens)
            if time.perf_counter() - window_start >= publish_every or c.step == plan.total_steps:
                seconds = window_seconds + time.perf_counter() - step_started
                self._publish_window(loss_sum, loss_n, window_samples, window_tokens, seconds)
                loss_sum = torch.zeros((), device=d.device)
                loss_n, window_samples, window_tokens, window_seconds = 0, 0, 0, -(time.perf_counter() - step_started)
                window_start = time.perf_counter()
            # Training time: the step and its bookkeeping, not evaluation or checkpoint writing (timed apart).
            loop_seconds = time.perf_counter() - step_started
            c.train_seconds += loop_seconds
            window_seconds += loop_seconds
            if c.step % eval_every == 0 or c.step == plan.total_steps:
                self._evaluate()
                self.ddp.train()
            stopping = d.any_flag(self.stop.requested)
            if c.step % t.checkpoint_every_steps == 0 or (stopping and c.step < plan.total_steps):
                self._save_checkpoint()
            if stopping and c.step < plan.total_steps:
                raise TrainingInterrupted(f"stopped by SIGTERM at step {c.step}; resume from its checkpoint")
            if fault_step and c.step == fault_step:
                log.warning("%s=%d: killing this process", FAULT_KILL_AFTER_STEP_ENV, fault_step)
                os.kill(os.getpid(), signal.SIGKILL)

    def _publish_window(
        self,
        loss_sum: torch.Tensor,
        loss_n: int,
        samples: int,
        tokens: int,
        elapsed: float,
    ) -> None:
        c, plan = self.counters, self.plan
        self.last_loss = float(loss_sum.item()) / max(loss_n, 1)
        lr = float(self.scheduler.get_last_lr()[0])
        sps = samples / elapsed if elapsed > 0 else 0.0
        tps = tokens / elapsed if elapsed > 0 else 0.0
        m = self.metrics
        m.step.set(c.step)
        m.epoch.set(c.step / plan.steps_per_epoch)
        m.loss.set(self.last_loss)
        m.learning_rate.set(lr)
        m.samples_per_second.set(sps)
        m.tokens_per_second.set(tps)
        eta = (plan.total_steps - c.step) * plan.global_batch / sps if sps > 0 else None
        if eta is not None:
            m.eta_seconds.set(eta)
        m.peak_memory.set(self._peak_memory())
        if self.d.device.type == "cuda":
            m.sample_gpu(self.d.device.index or 0)
        if self.train_routing.numel():
            cfg = self.loaded.sparse_config
            assert cfg is not None
            m.active_fraction.set(
                measured_active_fraction(self.train_routing.cpu(), float(self.routed_train), cfg.num_local_experts)
            )
        self._progress({"loss": self.last_loss, "learningRate": lr, "samplesPerSecond": sps, "etaSeconds": eta})

    def _progress(self, fields: dict[str, Any] | None) -> None:
        if self.reporter is None:
            return
        c = self.counters
        report: dict[str, Any] = {
            "stage": "train",
            "state": "running",
            "step": c.step,
            "totalSteps": self.plan.total_steps,
            "epoch": round(c.step / self.plan.steps_per_epoch, 4),
            "resumedFromStep": c.resumed_from,
            "precision": self.precision.name,
            **{k: v for k, v in (fields or {}).items() if v is not None},
        }
        if c.last_eval:
            name = "accuracy" if "accuracy" in c.last_eval else "perplexity"
            report["evalMetric"] = EvalMetric(name=name, value=c.last_eval[name])
        self.reporter.report(make_report(**report))

    # -- evaluation ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def _evaluate(self) -> dict[str, float]:
        d, data = self.d, self.eval_set
        model = self.module
        model.eval()
        batch_size = max(self.cfg.training.batch_size, 8)
        shard = list(range(d.rank, len(data), d.world))
        causal = data.causal
        num_labels = len(self.labels)
        confusion = torch.zeros((num_labels, num_labels), dtype=torch.float64)
        sums = torch.zeros(3, dtype=torch.float64)  # loss sum, items (rows or tokens), routed tokens
        routing: torch.Tensor | None = None
        for i in range(0, len(shard), batch_size):
            batch = collate(data, shard[i : i + batch_size], d.device)
            labels = batch.pop("labels")
            with self.precision.autocast(d.device):
                out = model(**batch)
            logits = out.logits.float()
            if causal:
                targets = labels[:, 1:]
                sums[0] += F.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]),
                    targets.reshape(-1),
                    ignore_index=-100,
                    reduction="sum",
                ).item()
                sums[1] += int((targets != -100).sum())
            else:
                sums[0] += F.cross_entropy(logits, labels, reduction="sum").item()
                sums[1] += labels.numel()
                pred = logits.argmax(dim=-1)
                flat = (labels * num_labels + pred).cpu()
                confusion += torch.bincount(flat, minlength=num_labels * num_labels).view(num_labels, num_labels)
            counts = getattr(out, "expert_counts", None)
            if counts is not None:
                routing = counts.cpu().double() if routing is None else routing + counts.cpu().double()
                sums[2] += float(out.routed_tokens)
        packed = [sums, confusion.flatten()]
        if self.loaded.sparse_config is not None:
            cfg = self.loaded.sparse_config
            if routing is None:
                routing = torch.zeros((cfg.num_hidden_layers, cfg.num_local_experts), dtype=torch.float64)
            packed.append(routing.flatten())
        flat_all = self.d.sum_(torch.cat(packed).to(d.device)).cpu()
        sums = flat_all[:3]
        confusion = flat_all[3 : 3 + num_labels * num_labels].view(num_labels, num_labels)
        result: dict[str, float] = {"evalLoss": float(sums[0] / max(float(sums[1]), 1.0))}
        if causal:
            result["perplexity"] = perplexity(float(sums[0]), float(sums[1]))
        else:
            result.update(classification_metrics(confusion))
        if self.loaded.sparse_config is not None:
            result.update(self._sparse_metrics(flat_all[3 + num_labels * num_labels :], float(sums[2])))
        c = self.counters
        c.last_eval, c.last_eval_step = result, c.step
        for k, v in result.items():
            self.metrics.eval_metric.labels(k).set(v)
        log.info("evaluation at step %d: %s", c.step, json.dumps({k: round(v, 5) for k, v in result.items()}))
        return result

    def _sparse_metrics(self, routing_flat: torch.Tensor, routed: float) -> dict[str, float]:
        cfg = self.loaded.sparse_config
        assert isinstance(cfg, SparseGatedConfig)
        routing = routing_flat.view(cfg.num_hidden_layers, cfg.num_local_experts)
        active = measured_active_fraction(routing, routed, cfg.num_local_experts)
        seq_len = routed / max(len(self.eval_set), 1)
        flops = flops_per_token(cfg, active * cfg.num_local_experts, seq_len)
        return {
            "activeFraction": active,
            "activeFractionSetting": self.cfg.training.sparsity.active_fraction if self.cfg.training.sparsity else 0.2,
            "activeExpertsPerToken": active * cfg.num_local_experts,
            "experts": float(cfg.num_local_experts),
            "expertLoadCv": expert_load_cv(routing),
            "flopsPerTokenSparse": flops.sparse_per_token,
            "flopsPerTokenDense": flops.dense_per_token,
            "flopsSavedVsDense": flops.saved_fraction,
            "ffnFlopsSavedVsDense": flops.ffn_saved_fraction,
        }

    # -- the end -------------------------------------------------------------------------------------------

    def _final_train_loss(self) -> float:
        if not self.recent_losses:
            return math.nan
        mean = torch.stack(list(self.recent_losses)).mean().reshape(1).double()
        return float(self.d.sum_(mean).item()) / self.d.world

    def _peak_memory(self) -> float:
        if self.d.device.type == "cuda":
            return float(torch.cuda.max_memory_allocated(self.d.device))
        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)

    def _finish(self, data: PreparedData) -> None:
        c, plan = self.counters, self.plan
        if c.last_eval_step != c.step:
            self._evaluate()
        trainable, total = self.param_counts
        m: dict[str, float] = dict(c.last_eval)
        m.update(
            {
                "trainLoss": self._final_train_loss(),
                "steps": float(c.step),
                "epochs": c.step / plan.steps_per_epoch,
                "trainRows": float(len(data.train)),
                "evalRows": float(len(data.eval)),
                "trainSequences": float(len(self.train_set)),
                "evalSequences": float(len(self.eval_set)),
                "trainRuntimeSeconds": c.train_seconds,
                "trainSamplesPerSecond": c.samples / c.train_seconds if c.train_seconds else 0.0,
                "trainTokensPerSecond": c.tokens / c.train_seconds if c.train_seconds else 0.0,
                "worldSize": float(self.d.world),
                "trainableParams": float(trainable),
                "totalParams": float(total),
                "trainableFraction": trainable / total,
                # Adam keeps 2 fp32 moments per trainable parameter, plus its fp32 gradient: 12 bytes; every
                # parameter costs 4 bytes of fp32 weights. Full fine-tuning makes every parameter trainable.
                "trainStateBytes": float(4 * total + 12 * trainable),
                "fullFineTuneStateBytes": float(16 * total),
                "peakMemoryBytes": self._peak_memory(),
                "peakMemoryBeforeTrainingBytes": self.peak_before_training,
            }
        )
        if self.train_routing.numel() and self.loaded.sparse_config is not None:
            cfg = self.loaded.sparse_config
            m["trainActiveFraction"] = measured_active_fraction(
                self.train_routing.cpu(), float(self.routed_train), cfg.num_local_experts
            )
        uri = None
        if self.d.main:
            extra = {
                "fingerprint": self.fingerprint,
                "labels": data.labels,
                "maxLength": self.cfg.dataset.max_length,
                "baseModel": self.loaded.description,
                "modelType": self.loaded.model_type,
                "precision": self.precision.name,
                "requestedPrecision": self.precision.requested or self.precision.name,
                "lora": self.loaded.lora,
                "steps": c.step,
                "worldSize": self.d.world,
            }
            uri = output.publish_trained(
                self.cfg,
                model=self.module,
                tokenizer=self.loaded.tokenizer,
                lora=self.loaded.lora,
                metrics=m,
                extra=extra,
            )
            log.info("published %s: %s", uri, json.dumps({k: round(v, 5) for k, v in m.items()}))
        self.d.barrier()
        if uri is not None:
            self._final(uri, m, c.step)

    def _final(self, uri: str, metrics: dict[str, float], steps: int) -> None:
        if self.reporter is None:
            return
        name = "accuracy" if "accuracy" in metrics else "perplexity"
        report = ProgressReport.model_validate(
            {
                "stage": "train",
                "state": "succeeded",
                "step": steps,
                "totalSteps": steps,
                "epoch": metrics.get("epochs", 0.0),
                "loss": metrics.get("trainLoss"),
                "evalMetric": {"name": name, "value": metrics[name]} if name in metrics else None,
                "samplesPerSecond": metrics.get("trainSamplesPerSecond"),
                "resumedFromStep": self.counters.resumed_from,
                "precision": self.precision.name,
                "updatedAt": now_rfc3339(),
                "artifactUri": uri,
                "metrics": {k: v for k, v in metrics.items() if math.isfinite(v)},
            }
        )
        self.reporter.report(report, final=True)


def _scheduler(
    optimizer: torch.optim.Optimizer, kind: str, warmup_ratio: float, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    warmup = math.ceil(warmup_ratio * total_steps)
    if kind == "constant":
        sched = get_constant_schedule_with_warmup(optimizer, warmup)
    elif kind == "cosine":
        sched = get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    else:
        sched = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)  # type: ignore[no-untyped-call]
    assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler)
    return sched
