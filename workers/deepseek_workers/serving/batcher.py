"""Dynamic request batching on asyncio (pure Python; no torch, so the unit tests need no model).

Semantics (close to Triton's dynamic batcher, with adaptive waiting):

* A request is queued with a deadline. The queue is bounded: when it holds ``max_queue_size`` requests a new
  one is refused at once with :class:`QueueFullError` (the server answers 429 with Retry-After).
* One loop forms batches. When an execution slot is free and the queue is not empty it dispatches as soon as
  the batch reaches ``max_batch_size`` or the oldest request has waited ``max_queue_delay``. The delay is an
  upper bound, not a tax: the loop only waits while waiting has recently paid off (somebody arrived during
  the wait, or arrived during an immediately dispatched batch's run). A lone closed-loop client therefore
  pays no delay, and Triton-like waits come back as soon as independent traffic shows up.
* A formed batch is split by a planner (for text: sorted by length and grouped so that padding costs less
  than an extra model call, using a table of call costs measured at warm-up); groups run shortest first and
  each caller gets its own result as soon as its group is done.
* With ``max_concurrent_batches`` N > 1, N model threads share the groups of the formed batch (each takes the
  next group when it is free), and the next batch forms when a model thread finds no group left. The planner
  thus sees nearly every request in flight at once instead of splitting them into N independent batches: on
  MiniLM at 32 requests in flight, length grouping over all 32 gave 82 req/s against 71 over two halves of 16.
* Requests whose caller went away (disconnect, deadline) are dropped before they take a batch slot; if they
  are already running their result is discarded. A group that raises is retried one request at a time so
  that only the culprit fails.
* :meth:`DynamicBatcher.close` refuses new work; :meth:`DynamicBatcher.wait_idle` waits for everything
  accepted to finish (graceful drain).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


class BatcherError(Exception):
    """Base of the errors a caller of :meth:`DynamicBatcher.submit` may get."""


class QueueFullError(BatcherError):
    def __init__(self, max_queue_size: int, retry_after_s: float) -> None:
        super().__init__(f"the request queue is full ({max_queue_size} waiting); retry after {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


class DeadlineExceededError(BatcherError):
    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"the request did not finish within its deadline of {timeout_s:g} s")


class NotAcceptingError(BatcherError):
    def __init__(self) -> None:
        super().__init__("the server is draining and accepts no new requests")


class InferenceError(BatcherError):
    """The model raised while running this request (a server-side failure)."""


class BatcherObserver(Protocol):
    """Receives measurements (the server wires these to Prometheus)."""

    def queue_wait(self, seconds: float) -> None: ...

    def batch(self, size: int, compute_seconds: float, padding_ratio: float) -> None: ...

    def dropped(self, reason: str) -> None: ...


class _NullObserver:
    def queue_wait(self, seconds: float) -> None:
        pass

    def batch(self, size: int, compute_seconds: float, padding_ratio: float) -> None:
        pass

    def dropped(self, reason: str) -> None:
        pass


@dataclass(eq=False)
class Ticket(Generic[In, Out]):
    """A queued request: its input, the future its result arrives on, and its timing."""

    item: In
    future: asyncio.Future[Out]
    enqueued: float
    deadline: float
    dispatched: float = 0.0  # when its batch went to a model thread
    model_s: float = 0.0  # the duration of the model call that computed it (timed on the model thread)

    def dead(self, now: float) -> bool:
        """True when the caller is gone or its deadline passed (then the caller is told so)."""
        if self.future.done():  # the caller gave up (cancelled) or timed out
            return True
        if now >= self.deadline:
            self.expire()
            return True
        return False

    def expire(self) -> None:
        """The deadline passed: the caller gets DeadlineExceededError (a running result is then discarded)."""
        if not self.future.done():
            self.future.set_exception(DeadlineExceededError(self.deadline - self.enqueued))


@dataclass(frozen=True)
class BatchPlan:
    """How a formed batch runs: groups of indices (run in this order) and the share of padded positions."""

    groups: list[list[int]]
    padding_ratio: float = 0.0


def single_group(items: Sequence[object]) -> BatchPlan:
    return BatchPlan([list(range(len(items)))])


class BatchCost(Protocol):
    def cost(self, n: int, length: int) -> float:
        """Seconds for one model call on ``n`` sequences padded to ``length``."""
        ...


@dataclass(frozen=True)
class CostModel:
    """An assumed cost (before anything is measured, and for generation): a + b·n·L + c·n·L²."""

    fixed_s: float = 2e-3
    per_token_s: float = 1e-4
    per_token_sq_s: float = 0.0

    def cost(self, n: int, length: int) -> float:
        return self.fixed_s + n * length * (self.per_token_s + self.per_token_sq_s * length)


class MeasuredCost:
    """The cost of a model call interpolated from timings of real calls (taken at warm-up).

    A table, not a formula: on a CPU a batch's cost per token falls with the tokens per call (wider matrix
    products), which a fixed-overhead-plus-per-token model fits as "no overhead" and then plans one call per
    request (measured on MiniLM, one AVX2 thread: 113 calls for 128 requests, 30 req/s, against 41 req/s for
    sorted groups of 4). Between measured shapes the cost is linear in n and in L; beyond the largest measured
    n or L it grows in proportion (the per-token cost no longer falls there).
    """

    def __init__(self, samples: Sequence[tuple[int, int, float]]) -> None:
        by_length: dict[int, dict[int, float]] = {}
        for n, length, seconds in samples:
            row = by_length.setdefault(length, {})
            row[n] = min(seconds, row.get(n, math.inf))
        if not by_length:
            raise ValueError("no timings to build a cost table from")
        self._lengths = sorted(by_length)
        self._rows = [sorted(by_length[length].items()) for length in self._lengths]
        self._cache: dict[tuple[int, int], float] = {}

    @staticmethod
    def _along(points: list[tuple[int, float]], x: int) -> float:
        if x <= points[0][0]:
            return points[0][1]  # below the smallest measured shape a call costs at least that much
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            if x <= x1:
                return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        x_last, y_last = points[-1]
        return y_last * x / x_last

    def cost(self, n: int, length: int) -> float:
        key = (n, length)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        lengths = self._lengths
        value = self._along([(lengths[i], self._along(self._rows[i], n)) for i in range(len(lengths))], length)
        if len(self._cache) < 65536:
            self._cache[key] = value
        return value

    def __repr__(self) -> str:
        rows = zip(self._lengths, self._rows, strict=True)
        cells = ", ".join(f"{n}x{length}: {s * 1e3:.1f} ms" for length, row in rows for n, s in row)
        return f"MeasuredCost({cells})"


# What a model call costs a serving process beyond the call the warm-up times: under load the event loop's and
# the client's work per group, GIL hand-backs, the hand-off to a model thread. Measured on MiniLM at 32 requests
# in flight (two model threads, two shared AVX2 cores): the server's calls ran 5-30 % over the warm-up table and
# a fit of call time against table time had an intercept of 3-5 ms. Paired rounds, one fixed table, fresh
# servers: planning with 0 / 5 / 8 / 15 ms more per call gave mean groups of 2.4 / 3.5 / 4.0 / 4.8 requests;
# 5 ms served a median 10 % more requests per second than 0 (7 of 8 rounds ahead), 8 ms 7 % more than 5 (6 of
# 6), 15 ms the same as 8 (1.00, 3 of 6). The smallest on that plateau: bigger groups also wait longer.
SERVER_CALL_OVERHEAD_S = 8e-3


def plan_by_length(lengths: Sequence[int], cost: BatchCost, call_overhead_s: float = 0.0) -> BatchPlan:
    """Sort by length and split into contiguous groups minimising the modelled total time.

    Padding a short sequence to a long one costs model time; an extra model call costs the fixed overhead,
    plus ``call_overhead_s`` for what a call costs the server beyond the model (see SERVER_CALL_OVERHEAD_S).
    Dynamic programming over the sorted lengths finds the cheapest split (O(n²), n ≤ max batch size).
    """
    n = len(lengths)
    if n == 0:
        return BatchPlan([])
    order = sorted(range(n), key=lambda i: lengths[i])
    sorted_len = [lengths[i] for i in order]
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        longest = sorted_len[end - 1]
        for start in range(end):
            c = best[start] + cost.cost(end - start, longest) + call_overhead_s
            if c < best[end]:
                best[end], cut[end] = c, start
    groups: list[list[int]] = []
    end = n
    while end > 0:
        start = cut[end]
        groups.append(order[start:end])
        end = start
    groups.reverse()
    real = sum(sorted_len)
    padded = sum(len(g) * max(lengths[i] for i in g) for g in groups)
    return BatchPlan(groups, 1.0 - real / padded if padded else 0.0)


@dataclass
class _WaitPolicy:
    """Whether waiting for more requests has recently paid off (an exponentially weighted vote)."""

    alpha: float = 0.25
    score: float = 1.0  # start Triton-like: wait up to the delay

    def should_wait(self) -> bool:
        return self.score >= 0.5

    def record(self, productive: bool) -> None:
        self.score += self.alpha * ((1.0 if productive else 0.0) - self.score)


@dataclass
class BatcherStats:
    """Running figures used for Retry-After estimates and tests."""

    batches: int = 0
    items: int = 0
    max_batch_seen: int = 0
    per_item_s: float = 0.0  # exponentially weighted compute seconds per request
    sizes: list[int] = field(default_factory=list)


@dataclass(eq=False)
class _BatchRun(Generic[In, Out]):
    """One dispatched batch: its tickets and what the loop tracks until its last group is done."""

    batch: list[Ticket[In, Out]]
    waited: bool
    arrivals_at_start: int
    finished: asyncio.Future[None]
    padding_ratio: float = 0.0
    groups_left: int = 0  # groups not yet delivered (counted on the loop)
    released: int = 0  # tickets no longer counted in the batcher's running count


class DynamicBatcher(Generic[In, Out]):
    """Queue + batch loop around a synchronous ``run_batch(items) -> results`` run on a model thread."""

    def __init__(
        self,
        run_batch: Callable[[list[In]], list[Out]],
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int,
        planner: Callable[[list[In]], BatchPlan] = single_group,
        max_concurrent_batches: int = 1,
        executor: Executor | None = None,
        observer: BatcherObserver | None = None,
        name: str = "model",
    ) -> None:
        if max_batch_size < 1 or max_queue_size < 1 or max_concurrent_batches < 1 or max_queue_delay_s < 0:
            raise ValueError("batch size, queue size and concurrency must be >= 1 and the delay >= 0")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue_size = max_queue_size
        self._planner = planner
        self._own_executor = executor is None
        self._executor: Executor = executor or ThreadPoolExecutor(
            max_workers=max_concurrent_batches, thread_name_prefix=f"{name}-batch"
        )
        self._model_threads = max_concurrent_batches
        # Groups not started yet, shared by the model threads; the lock covers it and the count of busy threads.
        self._pending: deque[tuple[_BatchRun[In, Out], list[Ticket[In, Out]]]] = deque()
        self._pending_lock = threading.Lock()
        self._busy_threads = 0
        self._thread_free = asyncio.Event()
        self._observer: BatcherObserver = observer or _NullObserver()
        self._queue: deque[Ticket[In, Out]] = deque()
        self._arrived = asyncio.Event()
        self._running = 0  # requests taken from the queue whose group has not finished yet
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._policy = _WaitPolicy()
        self._arrivals = 0  # total arrivals, to tell whether anyone came during a window
        self._loop_task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Future[None]] = set()  # one per batch on a model thread
        self.stats = BatcherStats()

    # -- public API -----------------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return self._running

    @property
    def accepting(self) -> bool:
        return not self._closed

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._batch_loop(), name="batch-loop")

    def retry_after_s(self) -> float:
        """A whole-second estimate of when the queue will have room (at least 1 s)."""
        per_item = self.stats.per_item_s or 0.05
        return float(max(1, math.ceil(per_item * (len(self._queue) + self._running))))

    def enqueue(self, items: Sequence[In], timeout_s: float) -> list[Ticket[In, Out]]:
        """Queue all of ``items`` or none (raises QueueFullError / NotAcceptingError at once)."""
        if self._closed:
            raise NotAcceptingError()
        if len(self._queue) + len(items) > self.max_queue_size:
            self._observer.dropped("queue_full")
            raise QueueFullError(self.max_queue_size, self.retry_after_s())
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        tickets: list[Ticket[In, Out]] = [Ticket(x, loop.create_future(), now, now + timeout_s) for x in items]
        self._queue.extend(tickets)
        self._idle.clear()
        self._arrivals += len(tickets)
        self._arrived.set()
        return tickets

    async def wait(self, ticket: Ticket[In, Out]) -> Out:
        """The result of a queued request; DeadlineExceededError at its deadline; cancelling drops it.

        One timer and a plain await of the ticket's future (no wait_for/shield tasks): at concurrency 1 the
        per-request path is the whole added latency.
        """
        future = ticket.future
        timer = asyncio.get_running_loop().call_later(max(0.0, ticket.deadline - time.monotonic()), ticket.expire)
        try:
            return await future
        except DeadlineExceededError:
            self._observer.dropped("deadline")
            raise
        except asyncio.CancelledError:
            # The caller went away (cancelling the waiting task cancels the future): the loop skips it.
            if future.cancelled():
                self._observer.dropped("cancelled")
            raise
        finally:
            timer.cancel()

    async def submit(self, item: In, timeout_s: float) -> Out:
        """Queue ``item`` and wait for its result; raises a :class:`BatcherError` subclass on refusal."""
        (ticket,) = self.enqueue([item], timeout_s)
        return await self.wait(ticket)

    def close(self) -> None:
        """Refuse new requests; queued and running ones still complete."""
        self._closed = True
        self._arrived.set()

    async def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until nothing is queued or running; False if the timeout passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        self.close()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._in_flight:  # batches on model threads finish (their callers are answered)
            await asyncio.wait(list(self._in_flight))
        for p in self._queue:
            if not p.future.done():
                p.future.set_exception(NotAcceptingError())
        self._queue.clear()
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the loop -------------------------------------------------------------------------------------------

    def _drop_dead(self) -> None:
        now = time.monotonic()
        kept = deque(p for p in self._queue if not p.dead(now))
        if len(kept) != len(self._queue):
            self._queue = kept
            self._update_idle()

    def _update_idle(self) -> None:
        if not self._queue and self._running == 0:
            self._idle.set()

    async def _wait_arrival(self, timeout_s: float | None) -> bool:
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def _batch_loop(self) -> None:
        while True:
            # The next batch forms when a model thread is free (it found no group left to take).
            while self._busy_threads >= self._model_threads:
                self._thread_free.clear()
                await self._thread_free.wait()
            batch, waited = await self._collect()
            self._dispatch(batch, waited)

    async def _collect(self) -> tuple[list[Ticket[In, Out]], bool]:
        while True:
            self._drop_dead()
            if self._queue:
                break
            await self._wait_arrival(None)
        oldest = self._queue[0].enqueued
        waited = productive = False
        while len(self._queue) < self.max_batch_size and self.max_queue_delay_s > 0 and not self._closed:
            remaining = oldest + self.max_queue_delay_s - time.monotonic()
            if remaining <= 0 or not (waited or self._policy.should_wait()):
                break
            waited = True
            before = self._arrivals
            await self._wait_arrival(remaining)
            productive = productive or self._arrivals > before
            self._drop_dead()
            if not self._queue:
                return await self._collect()
        if waited:
            self._policy.record(productive)
        batch = [self._queue.popleft() for _ in range(min(self.max_batch_size, len(self._queue)))]
        self._running += len(batch)
        return batch, waited

    def _dispatch(self, batch: list[Ticket[In, Out]], waited: bool) -> None:
        """Plan a collected batch and queue its groups for the model threads, in this loop step.

        Free model threads are started on the groups at once; each runs groups until none is left, and each
        group's callers get their results from one callback on this loop: no task, no executor-future chain.
        At concurrency 1 these hops are most of the server's own time (measured with the model replaced by a
        29 ms sleep: 0.3 ms from the queue to the model thread and 0.4 ms back with a task and run_in_executor
        per group).
        """
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        live: list[Ticket[In, Out]] = []
        for p in batch:
            if not p.dead(now):
                live.append(p)
                p.dispatched = now
                self._observer.queue_wait(now - p.enqueued)
        plan = self._planner([p.item for p in live]) if live else BatchPlan([])
        groups = [[live[i] for i in group] for group in plan.groups]
        run = _BatchRun(batch, waited, self._arrivals, loop.create_future(), plan.padding_ratio, len(groups))
        self._in_flight.add(run.finished)
        if not groups:  # every caller left while it queued: nothing for a model thread
            self._finish(run)
            return
        with self._pending_lock:
            self._pending.extend((run, group) for group in groups)
            starting = min(self._model_threads - self._busy_threads, len(groups))
            self._busy_threads += starting
        for started in range(starting):
            try:
                self._executor.submit(self._model_thread, loop)
            except RuntimeError as err:  # the executor is shut down (the batcher is stopping)
                self._abandon_pending(starting - started, InferenceError(f"the model thread is gone: {err}"))
                return

    def _abandon_pending(self, not_started: int, err: BaseException) -> None:
        """The executor refused model threads: uncount them, and fail the groups if no thread is left to run them."""
        with self._pending_lock:
            self._busy_threads -= not_started
            left: list[tuple[_BatchRun[In, Out], list[Ticket[In, Out]]]] = []
            if self._busy_threads == 0:
                left, self._pending = list(self._pending), deque()
        for run, group in left:
            for p in group:
                if not p.future.done():
                    p.future.set_exception(err)
            run.groups_left -= 1
            if run.groups_left == 0:
                self._finish(run)

    def _next_group(self) -> tuple[_BatchRun[In, Out], list[Ticket[In, Out]]] | None:
        """On a model thread: the next group to run, or None (and the thread no longer counts as busy)."""
        with self._pending_lock:
            if self._pending:
                return self._pending.popleft()
            self._busy_threads -= 1
            return None

    def _model_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        """On a model thread: take groups until none is left, handing each group's results to the loop."""
        job = self._next_group()
        if job is None:  # other threads took every group: only the release to report
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._thread_free.set)
            return
        while job is not None:
            run, group = job
            # Skip callers that left while earlier groups ran (a read of the future's state: a caller that
            # leaves right now is computed and then discarded).
            alive = [p for p in group if not p.future.done()]
            t0 = time.monotonic()
            results: Sequence[Out | BaseException]
            try:
                results = self._compute(alive) if alive else []
            except BaseException as err:  # not the model's error (that is caught inside): fail only this group
                results = [InferenceError(f"the batch was aborted: {type(err).__name__}: {err}")] * len(alive)
            elapsed = time.monotonic() - t0
            job = self._next_group()
            try:  # one wake-up of the loop per group; after the last, the thread's release rides along
                loop.call_soon_threadsafe(self._deliver, run, alive, results, elapsed, job is None)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return

    def _deliver(
        self,
        run: _BatchRun[In, Out],
        alive: list[Ticket[In, Out]],
        results: Sequence[Out | BaseException],
        elapsed: float,
        thread_freed: bool = False,
    ) -> None:
        for p, r in zip(alive, results, strict=True):
            if p.future.done():
                continue
            p.model_s = elapsed
            if isinstance(r, BaseException):
                p.future.set_exception(r)
            else:
                p.future.set_result(r)
        if alive:
            self._record(len(alive), elapsed, run.padding_ratio)
        # Release the running count as groups finish so drain and Retry-After see progress.
        finished = sum(1 for p in run.batch if p.future.done())
        self._running -= finished - run.released
        run.released = finished
        self._update_idle()
        run.groups_left -= 1
        if run.groups_left == 0:
            self._finish(run)
        if thread_freed:
            self._thread_free.set()

    def _finish(self, run: _BatchRun[In, Out]) -> None:
        # Anything left unresolved (a bug on the model thread) must not leave a caller hanging.
        for p in run.batch:
            if not p.future.done():
                p.future.set_exception(InferenceError("the batch was aborted"))
        self._running -= len(run.batch) - run.released
        run.released = len(run.batch)
        self._update_idle()
        self._in_flight.discard(run.finished)
        run.finished.set_result(None)
        if not run.waited and self.max_queue_delay_s > 0 and not self._closed:
            # Counterfactual evidence for the wait policy: this batch went without waiting; had anyone
            # arrived while it ran, waiting would have batched them.
            self._policy.record(self._arrivals > run.arrivals_at_start)

    def _compute(self, alive: list[Ticket[In, Out]]) -> list[Out] | list[Out | BaseException]:
        """On the model thread: one call for the group; after a failure, each request alone."""
        try:
            results = self._run_batch([p.item for p in alive])
            if len(results) != len(alive):
                raise InferenceError(f"the model returned {len(results)} results for {len(alive)} inputs")
        except Exception as err:
            return self._run_one_by_one(alive, err)
        return results

    def _run_one_by_one(self, alive: list[Ticket[In, Out]], err: Exception) -> list[Out | BaseException]:
        """On the model thread: after a failed group, each request alone, so that only the culprit fails."""
        if len(alive) == 1:
            log.exception("inference failed", exc_info=err)
            return [InferenceError(f"inference failed: {type(err).__name__}: {err}")]
        log.warning("a batch of %d failed (%s); retrying one request at a time", len(alive), err)
        out: list[Out | BaseException] = []
        for p in alive:
            try:
                out.append(self._run_batch([p.item])[0])
            except Exception as one_err:
                log.exception("inference failed", exc_info=one_err)
                out.append(InferenceError(f"inference failed: {type(one_err).__name__}: {one_err}"))
        return out

    def _record(self, size: int, elapsed: float, padding_ratio: float) -> None:
        s = self.stats
        s.batches += 1
        s.items += size
        s.max_batch_seen = max(s.max_batch_seen, size)
        if len(s.sizes) < 10000:
            s.sizes.append(size)
        per_item = elapsed / size
        s.per_item_s = per_item if s.per_item_s == 0 else 0.8 * s.per_item_s + 0.2 * per_item
        self._observer.batch(size, elapsed, padding_ratio)
