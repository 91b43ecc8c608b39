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


@pytest.mark.skipif(_gpus() == 0, reason="needs an NVIDIA GPU")
def test_a_gpu_actor_reads_the_stats_of_the_gpu_ray_gave_it(ray_local):
    # Ray sets CUDA_VISIBLE_DEVICES for a GPU actor; NVML must read that GPU, as ordinal 0.
    @ray_local.remote(num_gpus=1, num_cpus=0)
    def probe() -> tuple[str, list[dict[str, object]]]:
        import os

        import torch

        from resolute.elastic.gpu_stats import GpuMonitor

        x = torch.ones(1024, 1024, device="cuda")  # some memory in use on this GPU
        monitor = GpuMonitor()
        samples = monitor.sample()
        monitor.close()
        uuid = str(torch.cuda.get_device_properties(0).uuid)
        del x
        return os.environ.get("CUDA_VISIBLE_DEVICES", ""), [
            {"index": s.index, "uuid": s.uuid, "used": s.memory_used_mb, "uuid_torch": uuid}
            for s in samples
        ]

    visible, samples = ray_local.get(probe.remote(), timeout=120)
    assert visible != ""
    assert len(samples) == 1, samples
    (sample,) = samples
    assert sample["index"] == 0
    # torch prints the UUID without NVML's "GPU-" prefix.
    assert str(sample["uuid"]).removeprefix("GPU-") == str(sample["uuid_torch"]).removeprefix(
        "GPU-"
    )
    assert float(sample["used"]) > 4  # at least the 4 MiB tensor


@pytest.mark.skipif(_gpus() == 0, reason="needs an NVIDIA GPU")
def test_each_rank_sends_the_statistics_of_its_gpu(sink, make_spec, pool_factory):
    ranks = min(2, _gpus())
    spec = make_spec(
        entrypoint="fns:count_steps",
        hparams={"steps": 3, "step_s": 1.0},
        gpus_per_slot=1.0,
        gpu_stats_interval_s=0.2,
    )

    async def main():
        group = WorkerGroup(spec=spec, sink=sink, pool=pool_factory(), max_workers=ranks)
        await group.start(ranks)
        outcome = await asyncio.wait_for(group.wait(), 180)
        await group.shutdown()
        return outcome, await sink.get.remote(spec.trial_id, "system")

    outcome, system = asyncio.run(main())
    assert outcome.status == "completed", outcome
    names = {name for report in system for name in report.metrics}
    for rank in range(ranks):
        assert f"system/rank{rank}/gpu0/memory_used_mb" in names, sorted(names)
