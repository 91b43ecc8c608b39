"""A trial told to stop at its target hands its workers straight to the next trial: the
successor's start waits on the worker for the old run to end, with no round trip through the
scheduler in between. Real Ray actors, real gloo groups."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from resolute.elastic.group import WorkerGroup
from resolute.errors import ResourcesUnavailable

from .helpers import wait_for

pytestmark = pytest.mark.integration


async def _steps(sink: Any, trial_id: int, kind: str = "metrics") -> list[int]:
    return [r.step for r in await sink.get.remote(trial_id, kind)]


async def _reached(sink: Any, trial_id: int, n: int) -> bool:
    return len(await _steps(sink, trial_id)) >= n


@pytest.mark.parametrize("n_ranks", [1, 2])
def test_a_trial_stopped_at_its_target_hands_its_workers_to_the_next(
    sink, make_spec, pool_factory, n_ranks
):
    first = make_spec(hparams={"steps": 10}, until=3.0)
    second = make_spec(hparams={"steps": 4}, until=2.0)

    async def main():
        pool = pool_factory()
        old = WorkerGroup(spec=first, sink=sink, pool=pool, max_workers=2)
        await old.start(n_ranks)
        await wait_for(lambda: _reached(sink, first.trial_id, 3))
        old_pids = sorted(old.worker_pids)
        old.request_stop(pause=False, ending=True)
        new = WorkerGroup(spec=second, sink=sink, pool=pool, max_workers=2)
        await new.start(n_ranks)
        new_pids = sorted(new.worker_pids)
        old_outcome = await asyncio.wait_for(old.wait(), 60)
        await old.shutdown()
        await wait_for(lambda: _reached(sink, second.trial_id, 2))
        # The old group still talks to those workers under its own run's name: a late stop
        # or target from it must not reach the run that holds them now.
        old.request_stop(pause=False)
        old.set_target(1.0)
        await asyncio.sleep(0.5)
        new.set_target(float("inf"))
        new_outcome = await asyncio.wait_for(new.wait(), 60)
        await new.shutdown()
        return (
            old_pids,
            new_pids,
            old_outcome,
            new_outcome,
            (pool.created, pool.handed_over, pool.idle_count()),
            await _steps(sink, first.trial_id),
            await _steps(sink, first.trial_id, "checkpoint"),
            await _steps(sink, second.trial_id),
        )

    old_pids, new_pids, old_out, new_out, counts, old_steps, old_ckpts, new_steps = asyncio.run(
        main()
    )
    assert new_pids == old_pids, "the next trial runs on the stopped trial's workers"
    assert counts == (n_ranks, n_ranks, n_ranks), "no new worker, all handed over, all idle"
    assert old_out.status == "stopped" and old_out.last_step == 3, old_out
    assert old_steps == [1, 2, 3]
    assert old_ckpts == [3], "the stopped trial saved its checkpoint before handing over"
    assert new_out.status == "completed" and new_out.last_step == 4, new_out
    assert new_steps == [1, 2, 3, 4]


def test_a_successor_gives_the_worker_back_when_the_old_run_does_not_end(
    sink, make_spec, pool_factory
):
    # Both trials share the runtime_env, so the successor may claim the worker; the env var
    # makes it wait 0.5 s for the old run (which lingers 4 s after its stop) instead of 10 s.
    env = {"env_vars": {"RESOLUTE_SUCCEED_TIMEOUT_S": "0.5"}}
    first = make_spec(
        entrypoint="fns:slow_to_stop",
        hparams={"steps": 10, "linger_s": 4.0},
        until=2.0,
        runtime_env=env,
    )
    second = make_spec(hparams={"steps": 3}, runtime_env=env)
    third = make_spec(hparams={"steps": 3}, runtime_env=env)

    async def main():
        pool = pool_factory()
        old = WorkerGroup(spec=first, sink=sink, pool=pool)
        await old.start(1)
        await wait_for(lambda: _reached(sink, first.trial_id, 2))
        pid = old.worker_pids[0]
        old.request_stop(pause=False, ending=True)
        refused_after = time.monotonic()
        with pytest.raises(ResourcesUnavailable, match="still runs"):
            await WorkerGroup(spec=second, sink=sink, pool=pool).start(1)
        refused_after = time.monotonic() - refused_after
        old_outcome = await asyncio.wait_for(old.wait(), 60)
        await old.shutdown()
        idle = pool.idle_count()
        again = WorkerGroup(spec=third, sink=sink, pool=pool)
        await again.start(1)
        again_outcome = await asyncio.wait_for(again.wait(), 60)
        await again.shutdown()
        return pid, refused_after, old_outcome, idle, again.worker_pids[0], again_outcome, pool

    pid, refused_after, old_outcome, idle, again_pid, again_outcome, pool = asyncio.run(main())
    assert refused_after < 4.0, "the successor gave up before the old run ended"
    assert old_outcome.status == "stopped" and old_outcome.last_step == 2, old_outcome
    assert idle == 1, "the worker went back to the old trial, then to the pool, not killed"
    assert again_pid == pid and pool.created == 1
    assert again_outcome.status == "completed", again_outcome
