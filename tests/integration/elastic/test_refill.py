"""After a rank is lost the group waits for a slot to grow back to its target size; a shrink
meanwhile lowers the target, and the waiting refill must not grow the group past it when a
slot turns up (here: the very worker the shrink gave back)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import ray

from resolute.elastic.group import WorkerGroup

from .helpers import wait_for

pytestmark = pytest.mark.integration


class _Blocker:
    """Holds the CPUs no rank uses, so that a lost rank's slot cannot be refilled at once."""

    def ready(self) -> bool:
        return True


async def _sizes(sink: Any, trial_id: int) -> list[int]:
    return [int(r.metrics["world_size"]) for r in await sink.get.remote(trial_id, "metrics")]


async def _steps_at(sink: Any, trial_id: int, size: int, n: int) -> bool:
    sizes = await _sizes(sink, trial_id)
    return len(sizes) >= n and sizes[-1] == size


def test_a_refill_does_not_grow_past_a_target_lowered_by_a_shrink(
    sink, make_spec, pool_factory, tmp_path
):
    spec = make_spec(
        entrypoint="fns:elastic_regression",
        hparams={"steps": 100_000, "step_delay": 0.02, "out_dir": str(tmp_path)},
    )

    async def main() -> tuple[int, list[int], int, int]:
        pool = pool_factory()
        group = WorkerGroup(spec=spec, sink=sink, pool=pool, min_workers=1, max_workers=3)
        await group.start(3)
        free = int(ray.available_resources().get("CPU", 0))
        blocker = None
        if free > 0:
            blocker = ray.remote(num_cpus=free)(_Blocker).remote()
            await blocker.ready.remote()
        try:
            await wait_for(lambda: _steps_at(sink, spec.trial_id, 3, 5))
            ray.kill(group._members[2].worker.handle)
            # A survivor stuck in a collective with the dead rank may be replaced too.
            await wait_for(lambda: group.generation >= 1 and group.size < 3, timeout_s=120)
            released = group.size - 1
            # The group now waits for a slot to get back to 3 ranks; none is free.
            assert await group.resize(1) is True
            # A rank the shrink released returns to the pool as an idle warm worker: a slot
            # a refill still waiting would take at once.
            await wait_for(lambda: pool.idle_count() == released, timeout_s=60)
            n = len(await _sizes(sink, spec.trial_id))
            await wait_for(lambda: _steps_at(sink, spec.trial_id, 1, n + 40), timeout_s=120)
            size_after = group.size
            idle_after = pool.idle_count()
        finally:
            if blocker is not None:
                ray.kill(blocker)
        sizes = await _sizes(sink, spec.trial_id)
        group.request_stop(pause=False)
        await asyncio.wait_for(group.wait(), 120)
        await group.shutdown()
        return size_after, sizes, idle_after, released

    size_after, sizes, idle_after, released = asyncio.run(main())
    assert size_after == 1
    # 3 ranks, maybe 2 for a few steps, then 1 for good: never grown back.
    runs = [s for i, s in enumerate(sizes) if i == 0 or sizes[i - 1] != s]
    assert runs in ([3, 2, 1], [3, 1]), runs
    assert idle_after == released  # nobody took the worker the shrink gave back
