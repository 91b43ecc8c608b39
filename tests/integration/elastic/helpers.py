"""Helpers shared by the worker-group tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from resolute.elastic.spec import Report, TrialSpec


class RecordingSink:
    """A real actor standing in for the scheduler's ``on_reports``: it records every batch."""

    def __init__(self) -> None:
        self.reports: list[tuple[int, Report]] = []

    def on_reports(self, trial_id: int, reports: list[Report]) -> None:
        self.reports.extend((trial_id, r) for r in reports)

    def get(self, trial_id: int | None = None, kind: str | None = None) -> list[Report]:
        return [
            r
            for t, r in self.reports
            if (trial_id is None or t == trial_id) and (kind is None or r.kind == kind)
        ]


def trial_log(spec: TrialSpec) -> str:
    from resolute.runtime.storage import ExperimentStorage

    storage = ExperimentStorage(spec.storage_root, spec.experiment_id)
    path = storage.trial_log_path(spec.trial_id)
    return path.read_text() if path.exists() else ""


async def wait_for(predicate: Callable[[], Any], *, timeout_s: float = 60.0) -> Any:
    """Await a condition that a remote actor makes true (polling its state)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.05)


def first_deliveries(reports: list[Report]) -> tuple[list[Report], int]:
    """The metrics stream as the scheduler keeps it: a report whose step is not newer than
    one already received in this run is a replay (sent again by a new chief after the
    old one was lost) and is dropped. Returns the kept reports and the number dropped."""
    kept: list[Report] = []
    for r in reports:
        if kept and r.step <= kept[-1].step:
            continue
        kept.append(r)
    return kept, len(reports) - len(kept)


async def steps_at_size(sink: Any, trial_id: int, size: int) -> int:
    """Steps the sink holds that ran at world size ``size``. Count by size, not by total:
    ranks flush reports every second, so steps from before a resize arrive after it."""
    reports = await sink.get.remote(trial_id, "metrics")
    return sum(int(r.metrics["world_size"]) == size for r in reports)


async def reached_at_size(sink: Any, trial_id: int, size: int, n: int) -> bool:
    """At least ``n`` steps ran at world size ``size``."""
    return await steps_at_size(sink, trial_id, size) >= n
