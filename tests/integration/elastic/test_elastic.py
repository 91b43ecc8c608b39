"""Elastic groups on one Ray node: a killed rank is replaced without restarting the trial,
planned grow/shrink in place, and the numbers match a single-process run.

Equivalence: the regression trains in float64 and each step's global batch is split into
equal shards, so every world size computes the same averaged gradient up to summation
order (~1e-16 relative per step); 1e-9 absolute after the whole run leaves room for that and
still catches a lost, repeated or mis-sharded step (those move the parameters by >1e-4)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import ray
import torch

from resolute.context import TrialContext
from resolute.elastic.group import WorkerGroup

from .helpers import first_deliveries, reached_at_size, trial_log, wait_for
from .userfns import fns

pytestmark = pytest.mark.integration

ATOL = 1e-9


def reference_params(steps: int, tmp: Path) -> dict[str, torch.Tensor]:
    """The same training function, run as a plain local script (one process)."""
    out = tmp / "reference"
    out.mkdir()
    fns.elastic_regression(
        TrialContext.local({"steps": steps, "out_dir": str(out)}, checkpoint_dir=tmp / "ref-ckpt")
    )
    return torch.load(out / "final.pt")


def assert_close_to_reference(out_dir: Path, steps: int, tmp: Path) -> None:
    final = torch.load(out_dir / "final.pt")
    reference = reference_params(steps, tmp)
    assert final.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(final[name], value, rtol=0, atol=ATOL)


async def _metrics(sink: Any, trial_id: int) -> list[Any]:
    return await sink.get.remote(trial_id, "metrics")


async def _reached(sink: Any, trial_id: int, n: int) -> bool:
    return len(await _metrics(sink, trial_id)) >= n


def test_a_killed_rank_is_replaced_and_the_run_finishes_without_a_restart(
    sink, make_spec, pool_factory, tmp_path
):
    out = tmp_path / "out"
    out.mkdir()
    steps = 60
    spec = make_spec(
        entrypoint="fns:elastic_regression",
        hparams={"steps": steps, "step_delay": 0.05, "out_dir": str(out)},
    )

    async def main():
        group = WorkerGroup(spec=spec, sink=sink, pool=pool_factory(), min_workers=1, max_workers=3)
        await group.start(3)
        await wait_for(lambda: _reached(sink, spec.trial_id, 10))
        victim = group._members[1].worker
        ray.kill(victim.handle)
        outcome = await asyncio.wait_for(group.wait(), 180)
        await group.shutdown()
        return (
            victim.pid,
            outcome,
            await _metrics(sink, spec.trial_id),
            await sink.get.remote(spec.trial_id, "event"),
        )

    victim_pid, outcome, reports, events = asyncio.run(main())
    assert outcome.status == "completed", outcome
    assert outcome.counts_as_restart is False
    assert outcome.workers_lost >= 1
    assert outcome.reformations >= 1
    kept, replays = first_deliveries(reports)
    assert [r.step for r in kept] == list(range(1, steps + 1))
    assert replays <= 50
    messages = [e.message for e in events]
    assert any(f"(pid {victim_pid}) lost" in m for m in messages), messages
    assert any("re-formed generation 1" in m for m in messages), messages
    log = trial_log(spec)
    assert f"(pid {victim_pid}) lost" in log
    assert "re-formed generation 1 (a rank was lost)" in log
    assert_close_to_reference(out, steps, tmp_path)


def test_grow_and_shrink_in_place_keep_every_step_once(sink, make_spec, pool_factory, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    spec = make_spec(
        entrypoint="fns:elastic_regression",
        hparams={"steps": 100_000, "step_delay": 0.02, "out_dir": str(out)},
    )

    async def main():
        group = WorkerGroup(spec=spec, sink=sink, pool=pool_factory(), min_workers=1, max_workers=3)
        await group.start(2)
        await wait_for(lambda: _reached(sink, spec.trial_id, 10))
        pids_before = set(group.worker_pids)
        assert await group.resize(3) is True
        assert group.size == 3
        pids_grown = set(group.worker_pids)
        await wait_for(lambda: reached_at_size(sink, spec.trial_id, 3, 10))
        assert await group.resize(1) is True
        assert group.size == 1
        await wait_for(lambda: reached_at_size(sink, spec.trial_id, 1, 10))
        group.request_stop(pause=False)
        outcome = await asyncio.wait_for(group.wait(), 120)
        await group.shutdown()
        return pids_before, pids_grown, outcome, await _metrics(sink, spec.trial_id)

    pids_before, pids_grown, outcome, reports = asyncio.run(main())
    assert outcome.status == "stopped", outcome
    assert outcome.reformations == 2
    assert outcome.workers_lost == 0
    assert pids_before < pids_grown  # the two running ranks stayed in the same processes
    steps = [r.step for r in reports]
    assert steps == list(range(1, len(steps) + 1))
    sizes = [int(r.metrics["world_size"]) for r in reports]
    # 2 ranks, then 3, then 1, each for a contiguous stretch of steps.
    assert [s for i, s in enumerate(sizes) if i == 0 or sizes[i - 1] != s] == [2, 3, 1]
    assert_close_to_reference(out, steps[-1], tmp_path)


@pytest.mark.parametrize("optimizer", [True, False], ids=["optimizer", "no-optimizer"])
def test_a_joining_rank_imports_ahead_what_the_running_ranks_imported(
    sink, make_spec, pool_factory, tmp_path, optimizer
):
    # The first optimizer makes torch import torch._dynamo (over a second): a rank joining
    # a group whose code built one imports it while it warms, before the group pauses; a
    # rank joining code that never needs it does not spend its slot's time on it.
    out = tmp_path / "out"
    out.mkdir()
    spec = make_spec(
        entrypoint="fns:lazy_import_probe", hparams={"optimizer": optimizer, "out_dir": str(out)}
    )

    async def main():
        group = WorkerGroup(spec=spec, sink=sink, pool=pool_factory(), min_workers=1, max_workers=2)
        await group.start(1)
        await wait_for(lambda: _reached(sink, spec.trial_id, 5))
        (first,) = group.worker_pids
        assert await group.resize(2) is True
        await wait_for(lambda: reached_at_size(sink, spec.trial_id, 2, 3))
        group.request_stop(pause=False)
        outcome = await asyncio.wait_for(group.wait(), 120)
        await group.shutdown()
        return first, outcome

    first, outcome = asyncio.run(main())
    assert outcome.status == "stopped", outcome
    entries = {int(p.stem): p.read_text().split() for p in out.glob("*.txt")}
    (newcomer,) = set(entries) - {first}
    world, imported = entries[newcomer][:2]
    assert world == "2"
    assert imported == str(int(optimizer))


def test_resize_refuses_code_without_an_elastic_state(sink, make_spec, pool_factory):
    spec = make_spec(entrypoint="fns:not_elastic", hparams={"steps": 100_000})

    async def main():
        group = WorkerGroup(spec=spec, sink=sink, pool=pool_factory(), min_workers=1, max_workers=3)
        await group.start(2)
        await wait_for(lambda: _reached(sink, spec.trial_id, 3))
        refused = await group.resize(3)
        size = group.size
        group.request_stop(pause=False)
        outcome = await asyncio.wait_for(group.wait(), 60)
        await group.shutdown()
        return refused, size, outcome

    refused, size, outcome = asyncio.run(main())
    assert refused is False
    assert size == 2
    assert outcome.status == "stopped"
