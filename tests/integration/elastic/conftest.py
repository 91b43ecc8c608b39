"""Fixtures for worker-group tests: a recording sink actor, trial specs pointing at the
user functions in ``userfns/``, and a worker pool that is emptied after each test."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from resolute.elastic.spec import TrialSpec

from .helpers import RecordingSink

USERFNS = Path(__file__).parent / "userfns"
_trial_ids = itertools.count(1)


@pytest.fixture
def sink(ray_local: Any) -> Any:
    actor = ray_local.remote(num_cpus=0)(RecordingSink).remote()
    yield actor
    ray_local.kill(actor)


@pytest.fixture
def make_spec(tmp_path: Path) -> Callable[..., TrialSpec]:
    base = TrialSpec(
        experiment_id=1,
        experiment_name="elastic-tests",
        trial_id=0,
        searcher_trial_id=0,
        hparams={},
        seed=7,
        entrypoint="fns:count_steps",
        context_dir=str(USERFNS),
        storage_root=str(tmp_path / "storage"),
        metric="loss",
        time_metric=None,
        until=float("inf"),
    )

    def make(**changes: Any) -> TrialSpec:
        trial_id = changes.pop("trial_id", next(_trial_ids))
        return replace(base, trial_id=trial_id, searcher_trial_id=trial_id, **changes)

    return make


@pytest.fixture
def pool_factory() -> Iterator[Callable[..., Any]]:
    from resolute.elastic.pool import WorkerPool

    pools: list[WorkerPool] = []

    def make(**kwargs: Any) -> WorkerPool:
        pool = WorkerPool(**kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        asyncio.run(pool.close())
