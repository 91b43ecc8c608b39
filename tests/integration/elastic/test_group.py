"""Fixed-size worker groups on real Ray actors with real torch.distributed (gloo): reports,
decision points, stop/pause/resume, user errors, entrypoint errors, warm worker reuse."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from resolute.elastic.group import WorkerGroup
from resolute.errors import EntrypointError

from .helpers import trial_log, wait_for

pytestmark = pytest.mark.integration


async def _reports(sink: Any, trial_id: int, kind: str = "metrics") -> list[Any]:
    return await sink.get.remote(trial_id, kind)


@pytest.mark.parametrize("n_ranks", [1, 2])
def test_reports_arrive_in_order_and_run_completes(sink, make_spec, pool_factory, n_ranks):
    spec = make_spec(hparams={"steps": 12})

    async def main():
        group = WorkerGroup(spec=spec, sink=sink, pool=pool_factory(), max_workers=2)
        await group.start(n_ranks)
        assert group.size == n_ranks
        outcome = await asyncio.wait_for(group.wait(), 120)
        await group.shutdown()
        return outcome, await _reports(sink, spec.trial_id)

    outcome, reports = asyncio.run(main())
    assert outcome.status == "completed", outcome
    assert outcome.last_step == 12
    assert [r.step for r in reports] == list(range(1, 13))
    assert all(r.metrics["world_size"] == n_ranks for r in reports)
    assert [r.time for r in reports] == [float(s) for s in range(1, 13)]


@pytest.mark.parametrize("n_ranks", [1, 2])
def test_chief_blocks_at_target_until_the_control_plane_answers(
    sink, make_spec, pool_factory, n_ranks
):
    spec = make_spec(hparams={"steps": 8}, until=3.0)
    held_s = 1.0

    async def main():
        group = WorkerGroup(spec=spec, sink=sink, pool=pool_factory(), max_workers=2)
        await group.start(n_ranks)
        await wait_for(lambda: _reports(sink, spec.trial_id))
        reached = await wait_for(lambda: _count_at_least(sink, spec.trial_id, 3), timeout_s=60)
        # Held at the target: nothing past step 3 may arrive while we keep it waiting.
        await asyncio.sleep(held_s)
        held = [r.step for r in await _reports(sink, spec.trial_id)]
        answered_at = time.time()
        group.set_target(6.0)
        await wait_for(lambda: _count_at_least(sink, spec.trial_id, 6), timeout_s=60)
        await asyncio.sleep(held_s)
        held_again = [r.step for r in await _reports(sink, spec.trial_id)]
        group.request_stop(pause=False)
        outcome = await asyncio.wait_for(group.wait(), 60)
        await group.shutdown()
        return reached, held, answered_at, held_again, outcome, await _reports(sink, spec.trial_id)

    _, held, _, held_again, outcome, reports = asyncio.run(main())
    assert held == [1, 2, 3]
    assert held_again == [1, 2, 3, 4, 5, 6]
    assert outcome.status == "stopped"
    assert [r.step for r in reports] == [1, 2, 3, 4, 5, 6]


async def _count_at_least(sink: Any, trial_id: int, n: int) -> bool:
    return len(await _reports(sink, trial_id)) >= n


def test_pause_writes_a_checkpoint_that_a_restarted_group_resumes_from(
    sink, make_spec, pool_factory
):
    spec = make_spec(hparams={"steps": 10}, until=4.0)

    async def main():
        pool = pool_factory()
        group = WorkerGroup(spec=spec, sink=sink, pool=pool, max_workers=2)
        await group.start(2)
        await wait_for(lambda: _count_at_least(sink, spec.trial_id, 4))
        group.request_stop(pause=True)
        first = await asyncio.wait_for(group.wait(), 60)
        await group.shutdown()
        ckpts = await _reports(sink, spec.trial_id, "checkpoint")
        resumed_spec = make_spec(
            trial_id=spec.trial_id,
            hparams={"steps": 10},
            restore_from=first.checkpoint_uri,
            attempt=1,
        )
        again = WorkerGroup(spec=resumed_spec, sink=sink, pool=pool, max_workers=2)
        await again.start(2)
        second = await asyncio.wait_for(again.wait(), 60)
        await again.shutdown()
        return first, ckpts, second, await _reports(sink, spec.trial_id)

    first, ckpts, second, reports = asyncio.run(main())
    assert first.status == "paused"
    assert first.last_step == 4
    assert first.checkpoint_uri is not None
    assert [c.checkpoint_uri for c in ckpts] == [first.checkpoint_uri]
    assert ckpts[0].step == 4
    assert second.status == "completed"
    assert [r.step for r in reports] == list(range(1, 11))
    assert "resumed from step 4" in trial_log(spec)


def test_raising_user_code_errors_the_run_with_its_traceback_in_the_log(
    sink, make_spec, pool_factory
):
    spec = make_spec(entrypoint="fns:raise_error")

    async def main():
        group = WorkerGroup(spec=spec, sink=sink, pool=pool_factory(), max_workers=2)
        await group.start(2)
        outcome = await asyncio.wait_for(group.wait(), 90)
        await group.shutdown()
        return outcome

    outcome = asyncio.run(main())
    assert outcome.status == "errored"
    assert outcome.counts_as_restart is True
    assert outcome.error == "ValueError: boom from user code"
    assert "raise ValueError" in (outcome.traceback or "")
    log = trial_log(spec)
    assert "boom from user code" in log
    assert "Traceback (most recent call last)" in log
    assert "rank1 ERROR" in log


@pytest.mark.parametrize(
    "entrypoint, expected",
    [
        ("no_such_module:train", "cannot import module 'no_such_module'"),
        ("fns:no_such_function", "has no function 'no_such_function'"),
        ("just-a-name", "must look like 'module:function'"),
    ],
)
def test_a_missing_entrypoint_fails_fast(sink, make_spec, pool_factory, entrypoint, expected):
    spec = make_spec(entrypoint=entrypoint)

    async def main():
        pool = pool_factory()
        group = WorkerGroup(spec=spec, sink=sink, pool=pool, max_workers=2)
        started = time.monotonic()
        with pytest.raises(EntrypointError) as info:
            await group.start(2)
        return info.value, time.monotonic() - started, pool.idle_count()

    error, elapsed, idle = asyncio.run(main())
    assert expected in str(error)
    assert elapsed < 30
    assert idle == 2  # the workers are healthy and went back to the pool


def test_warm_workers_are_reused_with_their_cache(sink, make_spec, pool_factory):
    async def main():
        pool = pool_factory()
        pids, hits = [], []
        for _ in range(2):
            spec = make_spec(entrypoint="fns:cache_probe")
            group = WorkerGroup(spec=spec, sink=sink, pool=pool)
            await group.start(1)
            outcome = await asyncio.wait_for(group.wait(), 60)
            assert outcome.status == "completed", outcome
            await group.shutdown()
            (report,) = await _reports(sink, spec.trial_id)
            pids.append(int(report.metrics["pid"]))
            hits.append(report.metrics["cache_hit"])
        return pids, hits, pool.created, pool.reused

    pids, hits, created, reused = asyncio.run(main())
    assert pids[0] == pids[1]
    assert hits == [0.0, 1.0]
    assert (created, reused) == (1, 1)


def test_reuse_can_be_turned_off(sink, make_spec, pool_factory):
    async def main():
        pool = pool_factory()
        pids = []
        for _ in range(2):
            spec = make_spec(entrypoint="fns:cache_probe", reuse_workers=False)
            group = WorkerGroup(spec=spec, sink=sink, pool=pool)
            await group.start(1)
            assert (await asyncio.wait_for(group.wait(), 60)).status == "completed"
            await group.shutdown()
            (report,) = await _reports(sink, spec.trial_id)
            pids.append(int(report.metrics["pid"]))
            assert report.metrics["cache_hit"] == 0.0
        return pids, pool.idle_count(), pool.created

    pids, idle, created = asyncio.run(main())
    assert pids[0] != pids[1]
    assert idle == 0
    assert created == 2


def test_ddp_step_on_two_ranks_equals_one_process_on_the_global_batch(
    sink, make_spec, pool_factory, tmp_path
):
    import torch

    spec = make_spec(entrypoint="fns:ddp_one_step", hparams={"out_dir": str(tmp_path)})

    async def main():
        group = WorkerGroup(spec=spec, sink=sink, pool=pool_factory(), max_workers=2)
        await group.start(2)
        outcome = await asyncio.wait_for(group.wait(), 90)
        await group.shutdown()
        return outcome

    assert asyncio.run(main()).status == "completed"
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 4, generator=gen)
    y = torch.randn(8, 3, generator=gen)
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    before = torch.nn.Linear(4, 3)
    for name, value in model.state_dict().items():
        # Identical on both ranks (DDP's allreduce gives each the same averaged gradient) ...
        assert torch.equal(rank0[name], rank1[name]), name
        # ... and equal to one process on the whole batch up to float32 summation order.
        torch.testing.assert_close(rank0[name], value, rtol=0, atol=1e-6)
        assert not torch.equal(value, before.state_dict()[name])


def test_idle_workers_beyond_the_cap_are_released(sink, make_spec, pool_factory):
    spec = make_spec(hparams={"steps": 2})

    async def main():
        pool = pool_factory(max_idle=1)
        group = WorkerGroup(spec=spec, sink=sink, pool=pool, max_workers=2)
        await group.start(2)
        outcome = await asyncio.wait_for(group.wait(), 60)
        await group.shutdown()
        return outcome, pool.idle_count()

    outcome, idle = asyncio.run(main())
    assert outcome.status == "completed"
    assert idle == 1


def test_gpu_statistics_on_a_cpu_slot_send_nothing_and_harm_nothing(sink, make_spec, pool_factory):
    # No GPU here: each rank's sampler finds none, starts no thread, and the run is as usual.
    spec = make_spec(hparams={"steps": 3, "step_s": 0.3}, gpu_stats_interval_s=0.05)

    async def main():
        group = WorkerGroup(spec=spec, sink=sink, pool=pool_factory(), max_workers=2)
        await group.start(2)
        outcome = await asyncio.wait_for(group.wait(), 60)
        await group.shutdown()
        return (
            outcome,
            await _reports(sink, spec.trial_id),
            await _reports(sink, spec.trial_id, "system"),
        )

    outcome, reports, system = asyncio.run(main())
    assert outcome.status == "completed", outcome
    assert [r.step for r in reports] == [1, 2, 3]
    assert system == []
