"""The data plan: which rows each rank sees in each step (what makes DDP and resume reproducible)."""

from __future__ import annotations

from pathlib import Path

import pytest
from deepseek_workers.errors import BadConfigError
from deepseek_workers.training.engine import epoch_order, fingerprint, make_plan, micro_batches

from tests.training.helpers import make_config


def test_two_ranks_see_the_global_batch_of_one_process(tmp_path: Path) -> None:
    one = make_plan(make_config(tmp_path, training={"batchSize": 16}), 100, world=1)
    two = make_plan(make_config(tmp_path, training={"batchSize": 8}), 100, world=2)
    acc = make_plan(make_config(tmp_path, training={"batchSize": 8, "gradientAccumulationSteps": 2}), 100, world=1)
    assert one.steps_per_epoch == two.steps_per_epoch == acc.steps_per_epoch == 6  # 100 // 16, remainder dropped
    order = epoch_order(seed=3, epoch=1, n=100)
    for step in range(one.steps_per_epoch):
        single = sorted(r for mb in micro_batches(one, order, step, 0) for r in mb)
        ranks = sorted(r for rank in (0, 1) for mb in micro_batches(two, order, step, rank) for r in mb)
        accumulated = sorted(r for mb in micro_batches(acc, order, step, 0) for r in mb)
        assert single == ranks == accumulated
        assert len(set(single)) == 16


def test_epochs_reshuffle_deterministically() -> None:
    assert epoch_order(1, 0, 50) == epoch_order(1, 0, 50)
    assert epoch_order(1, 0, 50) != epoch_order(1, 1, 50)
    assert sorted(epoch_order(1, 1, 50)) == list(range(50))


def test_too_few_rows_for_one_step_is_a_config_error(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, training={"batchSize": 64, "gradientAccumulationSteps": 2})
    with pytest.raises(BadConfigError, match=r"needs 256 rows .* 2 workers\) but there are only 100"):
        make_plan(cfg, 100, world=2)


def test_max_steps_overrides_epochs(tmp_path: Path) -> None:
    plan = make_plan(make_config(tmp_path, training={"epochs": 9, "maxSteps": 7}), 100, world=1)
    assert plan.total_steps == 7


def test_fingerprint_ignores_cadence_but_not_the_trajectory(tmp_path: Path) -> None:
    base = fingerprint(make_config(tmp_path), 1)
    assert base == fingerprint(make_config(tmp_path, training={"checkpointEverySteps": 5, "evalEverySteps": 3}), 1)
    assert base == fingerprint(make_config(tmp_path, dataset={"maxEvalSamples": 10}), 1)
    assert base != fingerprint(make_config(tmp_path, training={"learningRate": 2e-3}), 1)
    assert base != fingerprint(make_config(tmp_path), 2)
