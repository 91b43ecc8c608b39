"""Ranks agree on stop and re-formation at checks, not at every step: fast steps check
rarely, yet a stop still takes effect on every rank at the same step, and a stop decided at
the target takes effect at that very step."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from resolute.elastic.group import WorkerGroup

from .helpers import wait_for

pytestmark = pytest.mark.integration

USERFNS = Path(__file__).parent / "userfns"


async def _metrics(sink: Any, trial_id: int) -> list[Any]:
    return await sink.get.remote(trial_id, "metrics")


def test_fast_steps_check_rarely_and_a_stop_ends_every_rank_at_the_same_step(
    sink, make_spec, pool_factory
):
    spec = make_spec(entrypoint="agreement_fns:fast_elastic_steps", context_dir=str(USERFNS))

    async def main():
        group = WorkerGroup(spec=spec, sink=sink, pool=pool_factory(), max_workers=2)
        await group.start(2)
        await wait_for(lambda: _reached(sink, spec.trial_id, 300), timeout_s=120)
        asked = time.monotonic()
        group.request_stop(pause=False)
        outcome = await asyncio.wait_for(group.wait(), 60)
        took = time.monotonic() - asked
        await group.shutdown()
        return outcome, took, await _metrics(sink, spec.trial_id)

    outcome, took, reports = asyncio.run(main())
    assert outcome.status == "stopped", outcome
    steps = [r.step for r in reports if "done" not in r.metrics]
    assert steps == list(range(1, len(steps) + 1))
    done = next(r.metrics for r in reports if "done" in r.metrics)
    assert done["last_step"] == steps[-1]
    # Each schedule checks at least every 0.1 s of training; steps are ~1 ms, so far fewer
    # checks than steps (a collective every step would make these equal).
    assert done["stop_checks"] < len(steps) / 3, done
    assert done["commit_checks"] < len(steps) / 3, done
    assert took < 30


async def _reached(sink: Any, trial_id: int, n: int) -> bool:
    return len(await _metrics(sink, trial_id)) >= n


def test_a_stop_decided_at_the_target_ends_the_trial_at_that_step(sink, make_spec, pool_factory):
    spec = make_spec(
        entrypoint="agreement_fns:fast_elastic_steps",
        context_dir=str(USERFNS),
        until=200.0,
    )

    async def main():
        group = WorkerGroup(spec=spec, sink=sink, pool=pool_factory(), max_workers=2)
        await group.start(2)
        await wait_for(lambda: _reached(sink, spec.trial_id, 200), timeout_s=120)
        await asyncio.sleep(0.5)  # held at the target: nothing past step 200 arrives
        held = len(await _metrics(sink, spec.trial_id))
        group.request_stop(pause=False)
        outcome = await asyncio.wait_for(group.wait(), 60)
        await group.shutdown()
        return held, outcome, await _metrics(sink, spec.trial_id)

    held, outcome, reports = asyncio.run(main())
    assert held == 200
    assert outcome.status == "stopped", outcome
    steps = [r.step for r in reports if "done" not in r.metrics]
    assert steps == list(range(1, 201))
