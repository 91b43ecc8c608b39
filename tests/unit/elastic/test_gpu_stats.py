"""GPU statistics: degrade to nothing where there is no GPU; read real values where there is."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from resolute.elastic.gpu_stats import (
    GpuMonitor,
    GpuSample,
    GpuSampler,
    gpu_metrics,
    visible_devices,
)


def _nvidia_gpus() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", []),
        ("NoDevFiles", []),
        ("-1", []),
        ("0", ["0"]),
        ("1,0", ["1", "0"]),
        (" 2 , 3 ", ["2", "3"]),
        ("GPU-8f1c,0", ["GPU-8f1c", "0"]),
        ("0,bogus,1", ["0"]),  # CUDA stops at the first invalid entry
    ],
)
def test_cuda_visible_devices_is_parsed_like_cuda(value, expected):
    assert visible_devices(value) == expected


def test_a_process_given_no_gpu_samples_nothing_and_says_why():
    monitor = GpuMonitor(cuda_visible_devices="")
    assert monitor.sample() == []
    assert not monitor.available
    assert "no GPU is assigned" in (monitor.reason or "")


@pytest.mark.skipif(_nvidia_gpus() > 0, reason="this machine has an NVIDIA GPU")
def test_without_a_driver_the_monitor_degrades_with_a_reason():
    monitor = GpuMonitor(use_env=False)
    assert monitor.sample() == []
    assert not monitor.available
    reason = monitor.reason or ""
    assert "driver" in reason or "nvidia-ml-py" in reason, reason
    monitor.close()  # closing a monitor that never opened is harmless


@pytest.mark.skipif(_nvidia_gpus() == 0, reason="needs an NVIDIA GPU")
def test_a_real_gpu_is_read():
    monitor = GpuMonitor(use_env=False)
    samples = monitor.sample()
    monitor.close()
    assert len(samples) == _nvidia_gpus()
    for s in samples:
        assert s.memory_total_mb > 1000
        assert 0 <= s.memory_used_mb <= s.memory_total_mb
        assert s.utilization_pct is None or 0 <= s.utilization_pct <= 100
        assert s.uuid.startswith(("GPU-", "MIG-"))
    # The same GPU found through its UUID, as a process sees it under Ray.
    by_uuid = GpuMonitor(cuda_visible_devices=samples[0].uuid).sample()
    assert [s.uuid for s in by_uuid] == [samples[0].uuid]
    assert by_uuid[0].index == 0


def test_metrics_are_named_per_ordinal_and_skip_unsupported_fields():
    samples = [
        GpuSample(0, "GPU-a", "H100", 87.0, 20480.0, 81920.0, 61.0, 412.5),
        GpuSample(1, "MIG-b", "H100 MIG", None, 512.0, 10240.0, None, None),
    ]
    metrics = gpu_metrics(samples)
    assert metrics == {
        "system/gpu0/memory_used_mb": 20480.0,
        "system/gpu0/memory_used_pct": 25.0,
        "system/gpu0/utilization_pct": 87.0,
        "system/gpu0/temperature_c": 61.0,
        "system/gpu0/power_w": 412.5,
        "system/gpu1/memory_used_mb": 512.0,
        "system/gpu1/memory_used_pct": 5.0,
    }


def test_a_sampler_without_gpus_starts_no_thread():
    sent: list[dict[str, float]] = []
    sampler = GpuSampler(
        emit=sent.append, interval_s=0.01, monitor=GpuMonitor(cuda_visible_devices="")
    )
    assert sampler.start() is False
    sampler.stop()
    assert sent == []
    with pytest.raises(ValueError, match="interval_s"):
        GpuSampler(emit=sent.append, interval_s=0)


@pytest.mark.skipif(_nvidia_gpus() == 0, reason="needs an NVIDIA GPU")
def test_a_sampler_sends_gpu_metrics_and_survives_a_failing_sink():
    import threading

    got = threading.Event()
    sent: list[dict[str, float]] = []

    def emit(metrics: dict[str, float]) -> None:
        sent.append(metrics)
        if len(sent) == 1:
            raise RuntimeError("sink down")  # must not stop the sampler
        got.set()

    sampler = GpuSampler(emit=emit, interval_s=0.05, monitor=GpuMonitor(use_env=False))
    assert sampler.start() is True
    assert got.wait(10)
    sampler.stop()
    assert "system/gpu0/memory_used_mb" in sent[-1]
