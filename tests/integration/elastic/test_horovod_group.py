"""backend="horovod" through the real WorkerGroup: a trial forms a Horovod world on Ray
workers, grows and shrinks in place, and ends where one process training on the same
global batches ends.

Equivalence: float64, and each step's global batch is split into equal shards, so every
world size computes the same averaged gradient up to summation order (~1e-16 relative per
step); 1e-9 absolute after the run leaves room for that and still catches a lost, repeated
or unaveraged step (those move the parameters by >1e-4)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "horovod.torch", reason="Horovod is not installed: run scripts/build-horovod.sh"
)

import torch  # noqa: E402

from resolute.context import TrialContext  # noqa: E402
from resolute.elastic.group import WorkerGroup  # noqa: E402

from .helpers import reached_at_size, wait_for  # noqa: E402
from .horovod_userfns import hvd_fns  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.horovod]

HOROVOD_USERFNS = Path(__file__).parent / "horovod_userfns"
ATOL = 1e-9


def _reference(steps: int, tmp: Path) -> dict[str, torch.Tensor]:
    """The same training function as a plain local script (one process, no backend)."""
    out = tmp / "reference"
    out.mkdir()
    hvd_fns.elastic_regression(
        TrialContext.local({"steps": steps, "out_dir": str(out)}, checkpoint_dir=tmp / "ref")
    )
    return torch.load(out / "final.pt")


async def _metrics(sink: Any, trial_id: int) -> list[Any]:
    return await sink.get.remote(trial_id, "metrics")


async def _reached(sink: Any, trial_id: int, n: int) -> bool:
    return len(await _metrics(sink, trial_id)) >= n


def test_horovod_group_grows_and_shrinks_in_place_and_matches_one_process(
    sink, make_spec, pool_factory, tmp_path
):
    out = tmp_path / "out"
    out.mkdir()
    spec = make_spec(
        backend="horovod",
        entrypoint="hvd_fns:elastic_regression",
        context_dir=str(HOROVOD_USERFNS),
        hparams={"steps": 100_000, "step_delay": 0.02, "out_dir": str(out)},
    )
    resize_s: list[float] = []

    async def resize(group: WorkerGroup, n: int) -> bool:
        started = time.monotonic()
        done = await group.resize(n)
        resize_s.append(time.monotonic() - started)
        return done

    async def main():
        group = WorkerGroup(spec=spec, sink=sink, pool=pool_factory(), min_workers=1, max_workers=3)
        await group.start(2)
        await wait_for(lambda: _reached(sink, spec.trial_id, 8), timeout_s=120)
        pids_before = set(group.worker_pids)
        assert await resize(group, 3) is True
        assert group.size == 3
        pids_grown = set(group.worker_pids)
        await wait_for(lambda: reached_at_size(sink, spec.trial_id, 3, 8), timeout_s=120)
        assert await resize(group, 1) is True
        assert group.size == 1
        await wait_for(lambda: reached_at_size(sink, spec.trial_id, 1, 8), timeout_s=120)
        group.request_stop(pause=False)
        outcome = await asyncio.wait_for(group.wait(), 120)
        await group.shutdown()
        return pids_before, pids_grown, outcome, await _metrics(sink, spec.trial_id)

    pids_before, pids_grown, outcome, reports = asyncio.run(main())
    print(f"horovod resize 2->3 took {resize_s[0]:.2f}s, 3->1 took {resize_s[1]:.2f}s")
    assert outcome.status == "stopped", outcome
    assert outcome.reformations == 2
    assert outcome.workers_lost == 0
    assert pids_before < pids_grown  # the two running ranks kept their processes
    steps = [r.step for r in reports]
    assert steps == list(range(1, len(steps) + 1)), "a step was lost or repeated"
    sizes = [int(r.metrics["world_size"]) for r in reports]
    assert [s for i, s in enumerate(sizes) if i == 0 or sizes[i - 1] != s] == [2, 3, 1]
    final = torch.load(out / "final.pt")
    reference = _reference(steps[-1], tmp_path)
    assert final.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(final[name], value, rtol=0, atol=ATOL)
