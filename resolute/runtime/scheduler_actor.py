"""The Scheduler actor: a thin Ray shell around ``runtime.scheduler.SchedulerCore``.

Every process that unpickles a handle to an actor imports the module that defines its
class; each trial worker holds one (its reports go to the scheduler). So this module
imports nothing heavy: the core (the journal's SQLAlchemy, the config's pydantic, ~0.45 s of
CPU) is imported in the scheduler's own process only, when the actor starts.
"""

from __future__ import annotations

import gc
import logging
import sys
from typing import TYPE_CHECKING, Any

import ray

if TYPE_CHECKING:
    from resolute.config import ExperimentConfig
    from resolute.elastic.spec import Report


@ray.remote(num_cpus=0, max_restarts=0)
class Scheduler:
    """Ray actor shell around SchedulerCore (async: trials' reports and CLI calls interleave)."""

    def __init__(self, journal_url: str | None = None, **options: Any) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        from resolute.runtime.scheduler import (
            SWITCH_INTERVAL_S,
            SchedulerCore,
            default_journal_url,
        )

        # The imports so far live as long as the process: kept out of full collections,
        # which stall the event loop (0.1-0.3 s each while the first experiment starts).
        gc.freeze()
        # The event loop shares the GIL with the trackers' writer threads (MLflow is pure
        # Python: a batch of run creations and metrics holds the GIL for tens of ms). A
        # thread waiting for the GIL asks for it after the switch interval, 5 ms by default,
        # and a trial handover resumes the loop several times: 1 ms bounds each wait.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        handle = ray.get_runtime_context().current_actor
        self.core = SchedulerCore(
            journal_url=journal_url or default_journal_url(), self_handle=handle, **options
        )

    async def submit(self, config: ExperimentConfig) -> int:
        return await self.core.submit(config)

    async def on_reports(self, trial_id: int, reports: list[Report]) -> None:
        await self.core.on_reports(trial_id, reports)

    async def status(self, experiment_id: int) -> dict[str, Any]:
        return self.core.status(experiment_id)

    async def wait(self, experiment_id: int, timeout: float = 1.0) -> dict[str, Any]:
        return await self.core.wait(experiment_id, timeout)

    async def experiment_over(self, experiment_id: int, timeout: float = 1.0) -> bool:
        return await self.core.experiment_over(experiment_id, timeout)

    async def kill(self, experiment_id: int) -> dict[str, Any]:
        return await self.core.kill(experiment_id)

    async def pause(self, experiment_id: int) -> dict[str, Any]:
        return await self.core.pause(experiment_id)

    async def activate(self, experiment_id: int) -> dict[str, Any]:
        return await self.core.activate(experiment_id)

    async def set_priority(self, experiment_id: int, priority: int) -> dict[str, Any]:
        return self.core.set_priority(experiment_id, priority)

    async def set_max_slots(self, experiment_id: int, max_slots: int | None) -> dict[str, Any]:
        return self.core.set_max_slots(experiment_id, max_slots)

    async def kill_trial(self, trial_id: int) -> dict[str, Any]:
        return await self.core.kill_trial(trial_id)

    async def list(self) -> list[dict[str, Any]]:
        return self.core.list()

    async def cluster_status(self) -> dict[str, Any]:
        return self.core.cluster_status()

    async def allocation_round(self) -> int:
        return self.core.allocation_round()

    async def shutdown(self, pause: bool = False) -> None:
        await self.core.shutdown(pause=pause)

    def __repr__(self) -> str:
        return f"Scheduler({len(self.core.experiments)} experiments)"
