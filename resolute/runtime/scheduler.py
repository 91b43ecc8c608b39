"""The Scheduler actor: the control plane's event loop.

It accepts experiments, keeps a SearcherActor per experiment, starts trials as worker groups
on free slots, and routes the workers' reports to tracking, the journal and the searcher.
Named ``scheduler`` in the ``resolute`` namespace so that the dashboard and the CLI find it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from pathlib import Path
from typing import Any

import ray

from resolute.config import ExperimentConfig
from resolute.elastic.spec import Report, TrialSpec
from resolute.errors import NotFound, SchedulerError
from resolute.runtime.experiment import ExperimentRun
from resolute.runtime.journal import Journal
from resolute.runtime.searcher_actor import SearcherActor, SearcherShell
from resolute.runtime.storage import ExperimentStorage, default_tracking_uri
from resolute.runtime.tracking import Tracker
from resolute.search import make_searcher

NAMESPACE = "resolute"
SCHEDULER_NAME = "scheduler"

log = logging.getLogger("resolute.scheduler")


def resolute_home() -> Path:
    """Where the control plane keeps its journal (``RESOLUTE_HOME``, default ~/.resolute)."""
    return Path(os.environ.get("RESOLUTE_HOME", "~/.resolute")).expanduser().resolve()


def default_journal_url() -> str:
    url = os.environ.get("RESOLUTE_JOURNAL_URL")
    if url:
        return url
    home = resolute_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'resolute.db'}"


class SchedulerCore:
    """The scheduler's logic, separate from the actor class so that it can be read and
    tested on its own; the actor below only forwards calls."""

    def __init__(self, *, journal_url: str, self_handle: Any) -> None:
        from resolute.elastic.pool import WorkerPool

        self.journal = Journal(journal_url)
        self.pool = WorkerPool()
        self._self = self_handle
        self.experiments: dict[int, ExperimentRun] = {}
        self.trial_owner: dict[int, ExperimentRun] = {}
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ capacity
    def _capacity(self) -> dict[str, float]:
        return {k: float(v) for k, v in ray.cluster_resources().items()}

    def _used(self) -> dict[str, float]:
        used = {"CPU": 0.0, "GPU": 0.0}
        for exp in self.experiments.values():
            res = exp.config.resources
            n = exp.used_slots()
            used["CPU"] += n * res.cpus_per_slot
            used["GPU"] += n * res.gpus_per_slot
        return used

    def free_slots(self, config: ExperimentConfig) -> int:
        res = config.resources
        cap, used = self._capacity(), self._used()
        limits = []
        if res.cpus_per_slot > 0:
            limits.append((cap.get("CPU", 0.0) - used["CPU"]) / res.cpus_per_slot)
        if res.gpus_per_slot > 0:
            limits.append((cap.get("GPU", 0.0) - used["GPU"]) / res.gpus_per_slot)
        free = int(min(limits) + 1e-9) if limits else res.slots_per_trial.max
        if res.max_slots is not None:
            exp_used = sum(e.used_slots() for e in self.experiments.values() if e.config is config)
            free = min(free, res.max_slots - exp_used)
        return max(free, 0)

    def _check_fits(self, config: ExperimentConfig) -> None:
        """Reject at submit time a trial that can never fit, instead of queueing forever."""
        res = config.resources
        cap = self._capacity()
        need = res.slots_per_trial.min
        if res.gpus_per_slot > 0 and cap.get("GPU", 0.0) < need * res.gpus_per_slot:
            raise SchedulerError(
                f"a trial needs {need} slot(s) x {res.gpus_per_slot:g} GPU but the cluster has "
                f"{cap.get('GPU', 0.0):g} GPU(s); lower resources.slots_per_trial or "
                "resources.gpus_per_slot, or add GPU nodes"
            )
        if res.cpus_per_slot > 0 and cap.get("CPU", 0.0) < need * res.cpus_per_slot:
            raise SchedulerError(
                f"a trial needs {need} slot(s) x {res.cpus_per_slot:g} CPU but the cluster has "
                f"{cap.get('CPU', 0.0):g} CPU(s); lower resources.slots_per_trial or "
                "resources.cpus_per_slot, or add nodes"
            )

    # ---------------------------------------------------------------- experiments
    async def submit(self, config: ExperimentConfig) -> int:
        self._check_fits(config)
        seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
        exp_id = self.journal.create_experiment(
            name=config.name, config_yaml=config.to_yaml(), seed=seed, storage_root=config.storage
        )
        storage = ExperimentStorage(config.storage, exp_id)
        storage.write_config(config.to_yaml())
        tracker = Tracker(
            tracking_uri=config.tracking.mlflow_uri or default_tracking_uri(config.storage),
            experiment_name=config.name,
            tensorboard_root=storage.tensorboard_dir if config.tracking.tensorboard else None,
        )
        run_id = tracker.start_experiment(
            config.to_dict(),
            config.searcher.name,
            {"resolute.experiment_id": str(exp_id), "resolute.seed": str(seed)},
        )
        self.journal.update_experiment(exp_id, mlflow_run_id=run_id)
        searcher = make_searcher(config.searcher_settings(), config.space(), seed)
        shell: Any = SearcherActor.options(  # type: ignore[attr-defined]
            name=f"searcher/{exp_id}", namespace=NAMESPACE
        ).remote(searcher)
        exp = ExperimentRun(
            experiment_id=exp_id,
            config=config,
            seed=seed,
            journal=self.journal,
            storage=storage,
            tracker=tracker,
            searcher=shell,
            start_group=self._start_group,
            free_slots=self.free_slots,
            on_change=self._on_change,
        )
        self.experiments[exp_id] = exp
        await exp.begin()
        return exp_id

    async def _start_group(self, spec: TrialSpec, n: int, max_workers: int) -> Any:
        from resolute.elastic.group import WorkerGroup

        exp = self.experiments[spec.experiment_id]
        self.trial_owner[spec.trial_id] = exp
        group = WorkerGroup(
            spec=spec,
            sink=self._self,
            pool=self.pool,
            min_workers=exp.config.resources.slots_per_trial.min,
            max_workers=max_workers,
        )
        await group.start(n)
        return group

    def _on_change(self) -> None:
        # Another experiment's trials may fit now that slots moved.
        for exp in self.experiments.values():
            exp._schedule()
        self._changed.set()

    async def on_reports(self, trial_id: int, reports: list[Report]) -> None:
        exp = self.trial_owner.get(trial_id)
        if exp is None:
            log.warning("reports for unknown trial %s dropped", trial_id)
            return
        await exp.on_reports(trial_id, reports)

    def _get(self, experiment_id: int) -> ExperimentRun:
        exp = self.experiments.get(experiment_id)
        if exp is None:
            raise NotFound(
                f"experiment {experiment_id} is not known to this scheduler; "
                "`resolute experiment list` shows the experiments"
            )
        return exp

    def status(self, experiment_id: int) -> dict[str, Any]:
        return self._get(experiment_id).summary()

    async def wait(self, experiment_id: int, timeout: float) -> dict[str, Any]:
        exp = self._get(experiment_id)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(exp.finished.wait(), timeout)
        return exp.summary()

    async def kill(self, experiment_id: int) -> dict[str, Any]:
        exp = self._get(experiment_id)
        await exp.kill()
        return exp.summary()

    def list(self) -> list[dict[str, Any]]:
        return [exp.summary() for exp in self.experiments.values()]

    async def shutdown(self) -> None:
        for exp in self.experiments.values():
            if not exp.finished.is_set():
                await exp.kill()
        for exp in self.experiments.values():
            exp.tracker.close()
        await self.pool.close()


@ray.remote(num_cpus=0, max_restarts=0)
class Scheduler:
    """Ray actor shell around SchedulerCore (async: trials' reports and CLI calls interleave)."""

    def __init__(self, journal_url: str | None = None) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        handle = ray.get_runtime_context().current_actor
        self.core = SchedulerCore(
            journal_url=journal_url or default_journal_url(), self_handle=handle
        )

    async def submit(self, config: ExperimentConfig) -> int:
        return await self.core.submit(config)

    async def on_reports(self, trial_id: int, reports: list[Report]) -> None:
        await self.core.on_reports(trial_id, reports)

    async def status(self, experiment_id: int) -> dict[str, Any]:
        return self.core.status(experiment_id)

    async def wait(self, experiment_id: int, timeout: float = 1.0) -> dict[str, Any]:
        return await self.core.wait(experiment_id, timeout)

    async def kill(self, experiment_id: int) -> dict[str, Any]:
        return await self.core.kill(experiment_id)

    async def list(self) -> list[dict[str, Any]]:
        return self.core.list()

    async def shutdown(self) -> None:
        await self.core.shutdown()

    def __repr__(self) -> str:
        return f"Scheduler({len(self.core.experiments)} experiments)"


__all__ = ["Scheduler", "SchedulerCore", "SearcherShell", "NAMESPACE", "SCHEDULER_NAME"]
