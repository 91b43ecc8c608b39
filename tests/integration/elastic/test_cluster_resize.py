"""Elastic resizing across real Ray nodes (``ray.cluster_utils.Cluster``, 1 CPU per node):
a node joins and the trial grows onto it; a node is removed and the trial shrinks to the
survivors; the training result matches a single-process run (see ``test_elastic``)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest
import ray

from resolute.elastic.group import WorkerGroup
from resolute.elastic.pool import WorkerPool

from .helpers import (
    RecordingSink,
    first_deliveries,
    reached_at_size,
    steps_at_size,
    trial_log,
    wait_for,
)
from .test_elastic import assert_close_to_reference

pytestmark = pytest.mark.integration

# Node failure is noticed by Ray's health checks; make them fast so the test is.
FAST_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
}


@pytest.fixture
def cluster() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    local_was_up = ray.is_initialized()
    if local_was_up:
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": False,
            "_system_config": FAST_HEALTH_CHECKS,
        },
    )
    try:
        ray.init(address=cluster.address, namespace="resolute-test")
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if local_was_up:
            # Put back the session's embedded Ray for the tests that share it.
            ray.init(
                num_cpus=int(os.environ.get("RESOLUTE_TEST_CPUS", "4")),
                include_dashboard=False,
                namespace="resolute-test",
                _temp_dir=os.environ["RAY_TMPDIR"],
            )


async def _metrics(sink: Any, trial_id: int) -> list[Any]:
    return await sink.get.remote(trial_id, "metrics")


async def _reached(sink: Any, trial_id: int, n: int) -> bool:
    return len(await _metrics(sink, trial_id)) >= n


def test_grow_onto_a_new_node_then_shrink_when_a_node_is_removed(cluster, make_spec, tmp_path):
    worker_node = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # The sink stands in for the scheduler, which lives on the head: keep it off the node
    # that the test removes.
    head = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    sink = ray.remote(num_cpus=0)(RecordingSink).options(scheduling_strategy=head).remote()
    out = tmp_path / "out"
    out.mkdir()
    spec = make_spec(
        entrypoint="fns:elastic_regression",
        hparams={"steps": 100_000, "step_delay": 0.02, "out_dir": str(out)},
    )

    async def main():
        pool = WorkerPool(acquire_timeout_s=30.0)
        group = WorkerGroup(
            spec=spec, sink=sink, pool=pool, min_workers=1, max_workers=3, reform_timeout_s=30
        )
        await group.start(2)
        nodes_at_start = {m.worker.node_id for m in group._members}
        await wait_for(lambda: _reached(sink, spec.trial_id, 10))

        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        assert await group.resize(3) is True
        nodes_grown = {m.worker.node_id for m in group._members}
        await wait_for(lambda: reached_at_size(sink, spec.trial_id, 3, 10))

        cluster.remove_node(worker_node, allow_graceful=False)
        await wait_for(lambda: group.generation >= 2 and group.size == 2, timeout_s=120)
        at_two = await steps_at_size(sink, spec.trial_id, 2)
        await wait_for(lambda: reached_at_size(sink, spec.trial_id, 2, at_two + 10))
        group.request_stop(pause=False)
        outcome = await asyncio.wait_for(group.wait(), 120)
        await group.shutdown()
        await pool.close()
        events = [e.message for e in await sink.get.remote(spec.trial_id, "event")]
        return nodes_at_start, nodes_grown, outcome, await _metrics(sink, spec.trial_id), events

    nodes_at_start, nodes_grown, outcome, reports, events = asyncio.run(main())
    assert len(nodes_at_start) == 2
    assert len(nodes_grown) == 3
    assert outcome.status == "stopped", outcome
    assert outcome.counts_as_restart is False
    assert outcome.workers_lost == 1
    kept, replays = first_deliveries(reports)
    steps = [r.step for r in kept]
    assert steps == list(range(1, len(steps) + 1))  # no step lost, none counted twice
    assert replays <= 50  # at most the chief's last unacknowledged reports
    sizes = [int(r.metrics["world_size"]) for r in kept]
    assert [s for i, s in enumerate(sizes) if i == 0 or sizes[i - 1] != s] == [2, 3, 2]
    assert any("grow to 3" in m for m in events), events
    assert any("a rank was lost" in m for m in events), events
    assert "lost" in trial_log(spec)
    assert_close_to_reference(out, steps[-1], tmp_path)
