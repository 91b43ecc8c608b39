"""GPU slots: the torch backend forms an NCCL group and puts the model on the slot's GPU."""

from __future__ import annotations

import asyncio

import pytest

from resolute.elastic.group import WorkerGroup

pytestmark = [pytest.mark.integration, pytest.mark.gpu]


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.skipif(_gpus() == 0, reason="needs an NVIDIA GPU")
def test_a_gpu_slot_trains_on_cuda_with_nccl(sink, make_spec, pool_factory):
    # The session's embedded Ray detects the machine's GPUs by itself.
    ranks = min(2, _gpus())
    spec = make_spec(entrypoint="fns:gpu_probe", gpus_per_slot=1.0)

    async def main():
        group = WorkerGroup(spec=spec, sink=sink, pool=pool_factory(), max_workers=ranks)
        await group.start(ranks)
        outcome = await asyncio.wait_for(group.wait(), 180)
        await group.shutdown()
        return outcome, await sink.get.remote(spec.trial_id, "metrics")

    outcome, reports = asyncio.run(main())
    assert outcome.status == "completed", outcome
    (report,) = reports
    assert report.metrics["cuda"] == 1.0
    assert report.metrics["nccl"] == 1.0
