"""The dynamic batcher on its own: a plain function stands in for the model (the batcher is generic over it)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from deepseek_workers.serving.backends import warm_up
from deepseek_workers.serving.batcher import (
    SERVER_CALL_OVERHEAD_S,
    BatchPlan,
    CostModel,
    DeadlineExceededError,
    DynamicBatcher,
    InferenceError,
    MeasuredCost,
    NotAcceptingError,
    QueueFullError,
    plan_by_length,
)


class Recorder:
    """A 'model' that doubles numbers, records every batch it saw, and can be held at a gate."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[int]:
        self.gate.wait(10)
        self.batches.append(list(items))
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [2 * x for x in items]


def make(model: Recorder, **kw: float) -> DynamicBatcher[int, int]:
    opts: dict[str, float] = {"max_batch_size": 4, "max_queue_delay_s": 0.0, "max_queue_size": 100} | kw
    b: DynamicBatcher[int, int] = DynamicBatcher(
        model,
        max_batch_size=int(opts["max_batch_size"]),
        max_queue_delay_s=opts["max_queue_delay_s"],
        max_queue_size=int(opts["max_queue_size"]),
    )
    b.start()
    return b


async def test_each_caller_gets_its_own_result_in_batches_no_larger_than_the_maximum() -> None:
    model = Recorder()
    model.gate.clear()  # hold the model so that requests pile up behind the first batch
    b = make(model, max_batch_size=4)
    tasks = [asyncio.ensure_future(b.submit(i, 10)) for i in range(10)]
    await asyncio.sleep(0.05)
    model.gate.set()
    assert await asyncio.gather(*tasks) == [2 * i for i in range(10)]
    assert max(len(x) for x in model.batches) == 4
    assert sorted(x for batch in model.batches for x in batch) == list(range(10))
    assert len(model.batches) <= 4  # 1 (taken before the pile-up) + 3 batches of <= 4
    await b.stop()


async def test_waits_up_to_the_delay_for_a_fuller_batch() -> None:
    model = Recorder()
    b = make(model, max_batch_size=8, max_queue_delay_s=0.2)
    first = asyncio.ensure_future(b.submit(1, 10))
    await asyncio.sleep(0.05)  # well inside the delay: the second request joins the first one's batch
    second = asyncio.ensure_future(b.submit(2, 10))
    assert await asyncio.gather(first, second) == [2, 4]
    assert model.batches == [[1, 2]]
    await b.stop()


async def test_a_full_batch_goes_without_waiting_for_the_delay() -> None:
    model = Recorder()
    b = make(model, max_batch_size=3, max_queue_delay_s=30.0)
    results = await asyncio.wait_for(asyncio.gather(*(b.submit(i, 60) for i in range(3))), 10)
    assert results == [0, 2, 4]
    assert model.batches == [[0, 1, 2]]
    await b.stop()


async def test_a_lone_sequential_caller_stops_paying_the_delay() -> None:
    model = Recorder()
    b = make(model, max_batch_size=8, max_queue_delay_s=0.5)
    t0 = time.monotonic()
    for i in range(12):
        assert await b.submit(i, 10) == 2 * i
    # Waiting never paid off (nobody else came), so the policy stops waiting after a few requests: 12 full
    # delays would take 6 s. Not a timing assert on speed: it checks that most requests skipped the wait.
    assert time.monotonic() - t0 < 12 * 0.5 / 2
    assert all(len(x) == 1 for x in model.batches)
    await b.stop()


async def test_full_queue_is_refused_at_once_with_a_retry_hint() -> None:
    model = Recorder()
    model.gate.clear()
    b = make(model, max_batch_size=1, max_queue_size=3)
    running = asyncio.ensure_future(b.submit(0, 10))
    await asyncio.sleep(0.05)  # item 0 is on the model thread now
    queued = [asyncio.ensure_future(b.submit(i, 10)) for i in (1, 2, 3)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFullError) as info:
        await b.submit(4, 10)
    assert info.value.retry_after_s >= 1
    with pytest.raises(QueueFullError):
        b.enqueue([5, 6], 10)  # all or nothing
    model.gate.set()
    assert await asyncio.gather(running, *queued) == [0, 2, 4, 6]
    await b.stop()


async def test_deadline_passes_while_queued_and_the_work_is_skipped() -> None:
    model = Recorder()
    model.gate.clear()
    b = make(model, max_batch_size=1)
    slow = asyncio.ensure_future(b.submit(0, 10))
    await asyncio.sleep(0.05)
    with pytest.raises(DeadlineExceededError):
        await b.submit(1, 0.05)
    model.gate.set()
    assert await slow == 0
    await asyncio.sleep(0.05)
    assert [1] not in model.batches
    await b.stop()


async def test_cancelled_callers_are_dropped_before_they_take_a_batch_slot() -> None:
    model = Recorder()
    model.gate.clear()
    b = make(model, max_batch_size=4)
    first = asyncio.ensure_future(b.submit(0, 10))
    await asyncio.sleep(0.05)
    gone = [asyncio.ensure_future(b.submit(i, 10)) for i in (1, 2)]
    kept = asyncio.ensure_future(b.submit(3, 10))
    await asyncio.sleep(0)
    for t in gone:
        t.cancel()
    model.gate.set()
    assert await first == 0
    assert await kept == 6
    assert [x for batch in model.batches for x in batch] == [0, 3]
    await b.stop()


async def test_a_failing_request_fails_alone() -> None:
    model = Recorder(fail_on=2)
    model.gate.clear()
    b = make(model, max_batch_size=4)
    tasks = [asyncio.ensure_future(b.submit(i, 10)) for i in range(4)]
    await asyncio.sleep(0.05)
    model.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[:2] == [0, 2]
    assert isinstance(results[2], InferenceError)
    assert "bad item 2" in str(results[2])
    assert results[3] == 6
    await b.stop()


async def test_close_refuses_new_work_and_wait_idle_sees_queued_work_finish() -> None:
    model = Recorder()
    model.gate.clear()
    b = make(model, max_batch_size=2)
    tasks = [asyncio.ensure_future(b.submit(i, 10)) for i in range(5)]
    await asyncio.sleep(0.05)
    b.close()
    with pytest.raises(NotAcceptingError):
        await b.submit(9, 10)
    assert not await b.wait_idle(0.05)
    model.gate.set()
    assert await b.wait_idle(10)
    assert await asyncio.gather(*tasks) == [0, 2, 4, 6, 8]
    await b.stop()


def test_length_plan_separates_short_from_long_when_padding_costs_more_than_a_call() -> None:
    cost = CostModel(fixed_s=5e-3, per_token_s=1e-4)
    lengths = [10, 500, 12, 11, 480, 9]
    plan = plan_by_length(lengths, cost)
    groups = [sorted(lengths[i] for i in g) for g in plan.groups]
    assert groups == [[9, 10, 11, 12], [480, 500]]
    assert sorted(i for g in plan.groups for i in g) == list(range(6))
    assert plan.padding_ratio < 0.05
    # When a call is expensive (a GPU launch-bound regime), one padded batch is cheaper.
    one = plan_by_length(lengths, CostModel(fixed_s=1.0, per_token_s=1e-6))
    assert len(one.groups) == 1
    assert one.padding_ratio > 0.5


# MiniLM on one AVX2 core, as measured at warm-up (n, length, seconds): a call's cost per token falls with
# its size, which no fixed-overhead-plus-per-token formula captures.
MINILM_AVX2 = [
    (1, 16, 0.0151), (2, 16, 0.0197), (4, 16, 0.0275), (8, 16, 0.0482), (32, 16, 0.1737),
    (1, 64, 0.0324), (2, 64, 0.0566), (4, 64, 0.0888), (8, 64, 0.1694), (32, 64, 0.7667),
    (1, 256, 0.1125), (4, 256, 0.3460), (16, 256, 1.6679),
]  # fmt: skip


def test_measured_cost_interpolates_between_and_scales_beyond_the_timings() -> None:
    table = MeasuredCost([*MINILM_AVX2, (1, 16, 0.020)])  # a slower repeat of a shape: the faster one counts
    assert table.cost(1, 16) == pytest.approx(0.0151)
    assert table.cost(4, 64) == pytest.approx(0.0888)
    assert table.cost(3, 16) == pytest.approx((0.0197 + 0.0275) / 2)  # linear in n between measured sizes
    assert table.cost(4, 160) == pytest.approx((0.0888 + 0.3460) / 2)  # and in length
    assert table.cost(16, 16) == pytest.approx(0.0482 + (0.1737 - 0.0482) / 3)
    assert table.cost(64, 64) == pytest.approx(0.7667 * 2)  # beyond the largest n: in proportion
    assert table.cost(1, 512) == pytest.approx(0.1125 * 2)  # beyond the longest length: in proportion
    assert table.cost(2, 5) == pytest.approx(0.0197)  # shorter than measured: at least that much
    with pytest.raises(ValueError, match="no timings"):
        MeasuredCost([])


def test_measured_cost_plans_small_sorted_groups_where_a_formula_plans_one_call_each() -> None:
    lengths = [12 + (7 * i) % 32 * 3 for i in range(32)]  # 32 distinct lengths from 12 to 105, shuffled
    measured = plan_by_length(lengths, MeasuredCost(MINILM_AVX2))
    # What the old least-squares fit of a + b·n·L + c·n·L² made of these timings: no overhead per call.
    formula = plan_by_length(lengths, CostModel(fixed_s=0.0, per_token_s=3.5e-4, per_token_sq_s=5.7e-7))
    assert len(formula.groups) == len(lengths)  # one call per request
    assert 4 <= len(measured.groups) <= 16
    assert all(len(g) >= 2 for g in measured.groups)
    assert sorted(i for g in measured.groups for i in g) == list(range(len(lengths)))
    for group in measured.groups:  # each group holds neighbours in length order
        span = sorted(lengths[i] for i in group)
        assert span[-1] - span[0] <= 40


def test_a_per_call_overhead_plans_fewer_larger_groups_and_keeps_every_request() -> None:
    lengths = [12 + (7 * i) % 32 * 3 for i in range(32)]
    table = MeasuredCost(MINILM_AVX2)
    alone = plan_by_length(lengths, table)
    with_overhead = plan_by_length(lengths, table, call_overhead_s=SERVER_CALL_OVERHEAD_S)
    assert len(with_overhead.groups) < len(alone.groups)
    assert sorted(i for g in with_overhead.groups for i in g) == list(range(len(lengths)))

    # The plan minimises the modelled total with the overhead counted per call.
    def total(plan: BatchPlan, overhead: float) -> float:
        return sum(table.cost(len(g), max(lengths[i] for i in g)) + overhead for g in plan.groups)

    assert total(with_overhead, SERVER_CALL_OVERHEAD_S) <= total(alone, SERVER_CALL_OVERHEAD_S)
    assert len(plan_by_length(lengths, table, call_overhead_s=10.0).groups) == 1  # calls dearer than padding


def test_cpu_quota_reads_cgroup_v2(tmp_path: Path) -> None:
    from deepseek_workers.serving.backends import cpu_quota

    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert cpu_quota(tmp_path) == 2.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(tmp_path) is None
    assert cpu_quota(tmp_path / "missing") is None


async def test_concurrent_batches_run_at_the_same_time_on_their_own_threads() -> None:
    both_running = threading.Barrier(2, timeout=10)  # passes only when two model calls are in flight at once
    threads: set[str] = set()

    def model(items: list[int]) -> list[int]:
        threads.add(threading.current_thread().name)
        both_running.wait()
        return [2 * x for x in items]

    b: DynamicBatcher[int, int] = DynamicBatcher(
        model, max_batch_size=2, max_queue_delay_s=0.0, max_queue_size=100, max_concurrent_batches=2
    )
    b.start()
    results = await asyncio.wait_for(asyncio.gather(*(b.submit(i, 30) for i in range(8))), 30)
    assert results == [2 * i for i in range(8)]
    assert len(threads) == 2
    await b.stop()


async def test_model_threads_share_the_groups_of_one_formed_batch() -> None:
    # Every model call waits for a second one in flight: only two threads taking groups of the same batch pass.
    in_pairs = threading.Barrier(2, timeout=10)
    threads: set[str] = set()
    planned: list[int] = []

    def model(items: list[int]) -> list[int]:
        threads.add(threading.current_thread().name)
        in_pairs.wait()
        return [2 * x for x in items]

    def one_group_each(items: list[int]) -> BatchPlan:
        planned.append(len(items))
        return BatchPlan([[i] for i in range(len(items))])

    b: DynamicBatcher[int, int] = DynamicBatcher(
        model,
        max_batch_size=8,
        max_queue_delay_s=5.0,
        max_queue_size=100,
        planner=one_group_each,
        max_concurrent_batches=2,
    )
    b.start()
    results = await asyncio.wait_for(asyncio.gather(*(b.submit(i, 30) for i in range(8))), 30)
    assert results == [2 * i for i in range(8)]
    assert planned == [8]  # one formed batch ...
    assert len(threads) == 2  # ... run by both model threads
    assert b.stats.batches == 8
    await b.stop()


def test_concurrent_batches_split_the_pods_cpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepseek_workers.serving.backends import threads_per_batch

    monkeypatch.setattr("os.cpu_count", lambda: 64)
    (tmp_path / "cpu.max").write_text("400000 100000\n")  # a 4-CPU limit on a 64-core node
    assert [threads_per_batch(n, tmp_path) for n in (1, 2, 3, 4, 8)] == [4, 2, 1, 1, 1]
    (tmp_path / "cpu.max").write_text("max 100000\n")  # no limit: the node's cores
    assert threads_per_batch(2, tmp_path) == 32


class _CountingClassifier:
    """A text classifier whose calls take 2 ms and which records how many ran at once."""

    task: Literal["text-classification"] = "text-classification"
    max_tokens = 64
    device = "cpu"
    runtime = "test"

    def __init__(self) -> None:
        self.labels = ["a", "b"]
        self._lock = threading.Lock()
        self._running = 0
        self.most_at_once = 0
        self.calls = 0

    def encode(self, text: str) -> list[int]:
        return [1] * len(text.split())

    def predict(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        with self._lock:
            self.calls += 1
            self._running += 1
            self.most_at_once = max(self.most_at_once, self._running)
        time.sleep(0.002)
        with self._lock:
            self._running -= 1
        return np.zeros((len(batch), 2), dtype=np.float32)


@pytest.mark.parametrize("at_once", [1, 2])
def test_warm_up_times_each_shape_with_as_many_calls_at_once_as_batches_run(at_once: int) -> None:
    backend = _CountingClassifier()
    samples = warm_up(backend, max_batch_size=8, concurrent_batches=at_once)
    assert {(n, length) for n, length, _ in samples} >= {(1, 16), (8, 16), (1, 64), (8, 64)}
    assert all(s >= 0.002 for _, _, s in samples)  # each a real call's duration, not a share of one
    assert backend.most_at_once == at_once
    # The first call, then two passes over the shapes and a third for shapes whose two timings disagree.
    assert 1 + 2 * at_once * len(samples) <= backend.calls <= 1 + 3 * at_once * len(samples)


class _BusySpellClassifier(_CountingClassifier):
    """Calls take 2 ms, except during a busy spell (calls 3-8, a whole row of the table): 20 ms."""

    def predict(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        self.calls += 1
        time.sleep(0.02 if 3 <= self.calls <= 8 else 0.002)
        return np.zeros((len(batch), 2), dtype=np.float32)


def test_warm_up_keeps_a_busy_spell_out_of_the_cost_table() -> None:
    # Each shape is timed in separate passes over the grid, so a spell that slows a run of consecutive calls
    # reaches one timing of each shape it covers, and the fastest timing counts.
    samples = warm_up(_BusySpellClassifier(), max_batch_size=8, concurrent_batches=1)
    assert max(s for _, _, s in samples) < 0.012, samples
