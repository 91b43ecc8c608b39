"""GPU statistics for the GPUs a worker was given, read through NVML (``nvidia-ml-py``).

Everything here degrades to "no GPUs" rather than raising: a CPU-only node, a machine
without the NVIDIA driver, or an environment without ``nvidia-ml-py`` gives an empty
sample list and a ``reason`` saying why. Training must never fail because a statistic
could not be read.

NVML enumerates every GPU of the machine; CUDA (and Ray, which assigns GPUs to actors by
setting ``CUDA_VISIBLE_DEVICES``) shows a process only some. ``visible_devices`` maps the
process's CUDA ordinals to NVML devices: an integer entry is an NVML index (Ray's GPU ids
are NVML indices), a ``GPU-``/``MIG-`` entry is matched by UUID.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

_NO_DEVICES = {"", "-1", "none", "nodevfiles"}


@dataclass(frozen=True)
class GpuSample:
    """One reading of one GPU, ``index`` being its CUDA ordinal in this process."""

    index: int
    uuid: str
    name: str
    utilization_pct: float | None
    memory_used_mb: float
    memory_total_mb: float
    temperature_c: float | None
    power_w: float | None


def visible_devices(value: str | None) -> list[str] | None:
    """Parse ``CUDA_VISIBLE_DEVICES``: ``None`` means every device, ``[]`` none."""
    if value is None:
        return None
    if value.strip().lower() in _NO_DEVICES:
        return []
    entries = [e.strip() for e in value.split(",")]
    # CUDA stops at the first invalid entry; so do we.
    out: list[str] = []
    for entry in entries:
        if not entry or (not entry.isdigit() and not entry.startswith(("GPU-", "MIG-"))):
            break
        out.append(entry)
    return out


class GpuMonitor:
    """Samples the GPUs visible to this process. Thread-safe; cheap to call every few
    seconds (one NVML query per field per GPU)."""

    def __init__(self, *, cuda_visible_devices: str | None = None, use_env: bool = True) -> None:
        if use_env and cuda_visible_devices is None:
            cuda_visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
        self._visible = visible_devices(cuda_visible_devices)
        self._lock = threading.Lock()
        self._nvml: Any = None
        self._handles: list[tuple[int, Any]] = []
        self.reason: str | None = None
        self._open()

    @property
    def available(self) -> bool:
        return bool(self._handles)

    def _open(self) -> None:
        if self._visible == []:
            self.reason = "no GPU is assigned to this process (CUDA_VISIBLE_DEVICES is empty)"
            return
        try:
            import pynvml
        except ImportError:
            self.reason = "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
            return
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            self.reason = f"no NVIDIA driver here (NVML: {exc})"
            return
        self._nvml = pynvml
        try:
            self._handles = list(self._resolve(pynvml))
        except pynvml.NVMLError as exc:
            self.reason = f"NVML could not list the GPUs: {exc}"
            self._handles = []
        if not self._handles and self.reason is None:
            self.reason = "NVML sees no GPU matching CUDA_VISIBLE_DEVICES"

    def _resolve(self, nvml: Any) -> Iterable[tuple[int, Any]]:
        count = nvml.nvmlDeviceGetCount()
        if self._visible is None:
            for i in range(count):
                yield i, nvml.nvmlDeviceGetHandleByIndex(i)
            return
        for ordinal, entry in enumerate(self._visible):
            if entry.isdigit():
                if int(entry) >= count:
                    return
                yield ordinal, nvml.nvmlDeviceGetHandleByIndex(int(entry))
            else:
                try:
                    yield ordinal, nvml.nvmlDeviceGetHandleByUUID(entry)
                except nvml.NVMLError:
                    return

    def sample(self) -> list[GpuSample]:
        if not self._handles:
            return []
        with self._lock:
            return [s for i, h in self._handles if (s := self._read(i, h)) is not None]

    def _read(self, index: int, handle: Any) -> GpuSample | None:
        nvml = self._nvml
        try:
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            name = nvml.nvmlDeviceGetName(handle)
        except nvml.NVMLError as exc:
            log.debug("GPU %d: NVML read failed: %s", index, exc)
            return None
        return GpuSample(
            index=index,
            uuid=_text(uuid),
            name=_text(name),
            utilization_pct=_optional(
                lambda: float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu), nvml
            ),
            memory_used_mb=mem.used / 2**20,
            memory_total_mb=mem.total / 2**20,
            temperature_c=_optional(
                lambda: float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
                nvml,
            ),
            power_w=_optional(lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0, nvml),
        )

    def close(self) -> None:
        with self._lock:
            if self._nvml is not None and self._handles:
                with contextlib.suppress(self._nvml.NVMLError):
                    self._nvml.nvmlShutdown()
            self._handles = []


def _optional(read: Any, nvml: Any) -> float | None:
    """A field some GPUs do not support (MIG utilisation, power on some boards)."""
    try:
        return float(read())
    except nvml.NVMLError:
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def gpu_metrics(samples: Iterable[GpuSample], *, prefix: str = "system/gpu") -> dict[str, float]:
    """Flat metric names for a tracker: ``system/gpu0/utilization_pct`` and so on."""
    out: dict[str, float] = {}
    for s in samples:
        base = f"{prefix}{s.index}"
        out[f"{base}/memory_used_mb"] = s.memory_used_mb
        out[f"{base}/memory_used_pct"] = (
            100.0 * s.memory_used_mb / s.memory_total_mb if s.memory_total_mb else 0.0
        )
        for key, value in (
            ("utilization_pct", s.utilization_pct),
            ("temperature_c", s.temperature_c),
            ("power_w", s.power_w),
        ):
            if value is not None:
                out[f"{base}/{key}"] = value
    return out


class GpuSampler:
    """Samples the process's GPUs every ``interval_s`` in a daemon thread and hands the
    metrics to ``emit``. A failing ``emit`` is logged, never raised into training; a process
    without GPUs starts no thread at all."""

    def __init__(
        self,
        *,
        emit: Callable[[dict[str, float]], None],
        interval_s: float = 30.0,
        prefix: str = "system/gpu",
        monitor: GpuMonitor | None = None,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {interval_s!r}")
        self._emit = emit
        self._interval_s = interval_s
        self._prefix = prefix
        self._monitor = monitor
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Start sampling; False (and nothing started) when there is no GPU to read."""
        if self._monitor is None:
            self._monitor = GpuMonitor()
        if not self._monitor.available:
            log.debug("no GPU statistics: %s", self._monitor.reason)
            return False
        self._thread = threading.Thread(target=self._loop, name="resolute-gpu-stats", daemon=True)
        self._thread.start()
        return True

    def _loop(self) -> None:
        assert self._monitor is not None
        while True:
            try:
                metrics = gpu_metrics(self._monitor.sample(), prefix=self._prefix)
                if metrics:
                    self._emit(metrics)
            except Exception:  # statistics must never take training down
                log.warning("GPU statistics: sampling or sending failed", exc_info=True)
            if self._stop.wait(self._interval_s):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._monitor is not None:
            self._monitor.close()
