"""``WorkerGroup.timeline``: every phase of a re-formation, in the order it happens, on the
group's side and on each rank's; a new rank is made ready before the running ranks pause."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from resolute.elastic.group import WorkerGroup

from .helpers import reached_at_size, wait_for

pytestmark = pytest.mark.integration

GROUP_PHASES = ("decided", "warmed", "announced", "settled", "rendezvous_open", "worlds_sent")
SURVIVOR_PHASES = ("world_received", "group_formed", "state_synced", "first_commit")
NEWCOMER_PHASES = ("thread_started", "group_formed", "state_synced", "first_commit")


async def _count(sink: Any, trial_id: int) -> int:
    return len(await sink.get.remote(trial_id, "metrics"))


def _in_order(marks: dict[str, float], names: tuple[str, ...]) -> None:
    missing = [n for n in names if n not in marks]
    assert not missing, f"phases {missing} not recorded in {marks}"
    times = [marks[n] for n in names]
    assert times == sorted(times), dict(zip(names, times, strict=True))


def test_grow_and_shrink_record_each_phase_in_order(sink, make_spec, pool_factory, tmp_path):
    spec = make_spec(
        entrypoint="fns:elastic_regression",
        hparams={"steps": 100_000, "step_delay": 0.01, "out_dir": str(tmp_path)},
    )

    async def main() -> tuple[set[int], set[int], int, dict[int, Any], int, dict[int, Any]]:
        group = WorkerGroup(spec=spec, sink=sink, pool=pool_factory(), min_workers=1, max_workers=3)
        await group.start(2)
        await wait_for(lambda: _count(sink, spec.trial_id))
        before = set(group.worker_pids)
        assert await group.resize(3) is True
        await wait_for(lambda: reached_at_size(sink, spec.trial_id, 3, 4))
        grown_to, after_grow = group.generation, await group.timeline()
        grown = set(group.worker_pids)
        assert await group.resize(1) is True
        await wait_for(lambda: reached_at_size(sink, spec.trial_id, 1, 4))
        shrunk_to, after_shrink = group.generation, await group.timeline()
        group.request_stop(pause=False)
        await asyncio.wait_for(group.wait(), 120)
        await group.shutdown()
        return before, grown, grown_to, after_grow, shrunk_to, after_shrink

    before, grown, g, timeline, s, shrink_timeline = asyncio.run(main())
    group_marks = timeline[g]["group"]
    # A new rank is started, imported and prepared before the running ranks are told to
    # leave; they leave only after the announcement, and the new worlds follow.
    _in_order(group_marks, GROUP_PHASES)
    (newcomer,) = grown - before
    assert set(timeline[g]["ranks"]) == grown
    for pid in before:
        left = timeline[g - 1]["ranks"][pid]
        _in_order(left, ("left_loop", "torn_down"))
        assert group_marks["announced"] <= left["left_loop"] <= group_marks["settled"]
        _in_order(timeline[g]["ranks"][pid], SURVIVOR_PHASES)
        assert timeline[g]["ranks"][pid]["world_received"] >= group_marks["rendezvous_open"]
    _in_order(timeline[g]["ranks"][newcomer], NEWCOMER_PHASES)
    assert timeline[g]["ranks"][newcomer]["thread_started"] >= group_marks["rendezvous_open"]

    # After the shrink only the remaining rank is asked; it went through every phase.
    assert s == g + 1
    (remaining,) = shrink_timeline[s]["ranks"]
    assert remaining in grown
    _in_order(shrink_timeline[s]["group"], ("decided", "announced", "settled", "worlds_sent"))
    _in_order(shrink_timeline[s]["ranks"][remaining], SURVIVOR_PHASES)
