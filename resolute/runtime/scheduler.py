"""The Scheduler actor: the control plane's event loop.

It accepts experiments, keeps a SearcherActor per experiment, runs allocation rounds that
start, resize and preempt trials across all experiments (``runtime/allocator.py`` around the
pure ``runtime/policy.py``), sends unmet demand to the Ray autoscaler, and routes the
workers' reports to tracking, the journal and the searchers. Named ``scheduler`` in the
``resolute`` namespace; on a cluster it runs detached, so the CLI can exit and come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
from pathlib import Path
from typing import Any

from resolute.config import ExperimentConfig
from resolute.elastic.spec import Report, TrialSpec
from resolute.errors import NotFound, SchedulerError
from resolute.runtime.allocator import apply_round, plan_round, resources_shape, slot_shape
from resolute.runtime.cluster import ClusterView, can_autoscale
from resolute.runtime.experiment import ExperimentRun, experiment_tracker, start_parent_run
from resolute.runtime.journal import Journal
from resolute.runtime.lifecycle import ExperimentStatus
from resolute.runtime.package import hold_package
from resolute.runtime.policy import TrialDemand, fits_ever
from resolute.runtime.prewarm import Prewarm
from resolute.runtime.recovery import ExperimentAdoption
from resolute.runtime.searcher_actor import SearcherActor
from resolute.runtime.storage import ExperimentStorage
from resolute.runtime.tracking import Tracker
from resolute.search import make_searcher

NAMESPACE = "resolute"
SCHEDULER_NAME = "scheduler"
ROUND_INTERVAL_S = 2.0  # safety-net allocation round (nodes joining/leaving are seen here)
NODES_MAX_AGE_S = 0.5  # how stale the node list an allocation round uses may be
SWITCH_INTERVAL_S = 0.001  # the scheduler process's GIL switch interval (see Scheduler)
DEFAULT_RESIZE_COOLDOWN_S = 10.0
SHUTDOWN_WAIT_S = 30.0  # per experiment: its trials' checkpoints (pause) or ends (kill)

log = logging.getLogger("resolute.scheduler")


def resolute_home() -> Path:
    """Where the control plane keeps its journal (``RESOLUTE_HOME``, default ~/.resolute)."""
    return Path(os.environ.get("RESOLUTE_HOME", "~/.resolute")).expanduser().resolve()


def resize_cooldown_s() -> float:
    """The anti-thrash cool-down (``RESOLUTE_RESIZE_COOLDOWN_S``, seconds): a trial is not
    grown again, nor rebalanced among lenders, sooner than this after its last resize."""
    raw = os.environ.get("RESOLUTE_RESIZE_COOLDOWN_S")
    if raw is None or raw.strip() == "":
        return DEFAULT_RESIZE_COOLDOWN_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise SchedulerError(
            f"RESOLUTE_RESIZE_COOLDOWN_S={raw!r} is not a number of seconds >= 0: "
            "set it to e.g. 10, or unset it for the default"
        )
    return value


def default_journal_url() -> str:
    url = os.environ.get("RESOLUTE_JOURNAL_URL")
    if url:
        return url
    home = resolute_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'resolute.db'}"


class SchedulerCore(ExperimentAdoption):
    """The scheduler's logic, apart from the actor class (which only forwards calls)."""

    def __init__(
        self,
        *,
        journal_url: str,
        self_handle: Any,
        cooldown_s: float | None = None,
        autoscale: bool = True,
        autoscale_cap: int = 16,
    ) -> None:
        from resolute.elastic.pool import WorkerPool

        self.journal = Journal(journal_url)
        self.pool = WorkerPool()
        self.prewarm = Prewarm(self.pool, sink=self_handle)
        self.view = ClusterView(max_pending_bundles=max(autoscale_cap, 1))
        self.cluster = self.view if autoscale else None
        self._self = self_handle
        self.cooldown_s = resize_cooldown_s() if cooldown_s is None else float(cooldown_s)
        self.autoscale_cap = autoscale_cap
        self.experiments: dict[int, ExperimentRun] = {}
        self.trial_owner: dict[int, ExperimentRun] = {}
        self._changed = asyncio.Event()
        self._seq = itertools.count(1)
        self._loop_task: asyncio.Task[None] | None = None
        self._in_round = False

    # ------------------------------------------------------------ allocation
    def _nodes(self) -> list[Any]:
        return self.view.nodes(max_age_s=NODES_MAX_AGE_S)

    def _on_change(self) -> None:
        """Something changed (a trial queued or ended, a setting moved): allocate now.

        The round runs in the caller's turn of the event loop rather than in the rounds
        task's next turn: a slot freed by a searcher's Stop goes to the trial created by the
        same decision before anything else (journal writes, other reports) runs."""
        if self._in_round:
            self._changed.set()  # a change made by the round itself: one more round
        else:
            self._round_logged()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._rounds())

    def _round_logged(self) -> None:
        self._in_round = True
        try:
            self.allocation_round()
        except Exception:
            log.exception("allocation round failed; retrying at the next change")
        finally:
            self._in_round = False

    async def _rounds(self) -> None:
        """Allocation rounds every few seconds (nodes joining or leaving are seen here), and
        after a change a round made itself."""
        while any(not e.finished.is_set() for e in self.experiments.values()):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), ROUND_INTERVAL_S)
            self._changed.clear()
            self._round_logged()
        if self.cluster is not None:
            self.cluster.withdraw()  # nothing left to ask the autoscaler for
        # Idle warm workers hold their slots: with nothing to run they would keep autoscaled
        # nodes busy forever. The next experiment pays one cold start instead.
        await self.pool.trim(keep=0)

    def allocation_round(self) -> int:
        live = [e for e in self.experiments.values() if not e.finished.is_set()]
        result, trials, owners = plan_round(
            experiments=live,
            nodes=self._nodes(),
            cooldown_s=self.cooldown_s,
            headroom_cap=self.autoscale_cap,
        )
        changed = apply_round(result, trials, owners)
        # PBT members waiting at a generation's end give their slots to queued members.
        for exp in live:
            starved = [t for t in exp.queued() if result.allocations[t.trial_id].size == 0]
            if starved:
                exp.yield_waiting(len(starved))
        if self.cluster is not None:
            self.cluster.request(result.unmet)
        return changed

    def _check_fits(self, config: ExperimentConfig) -> None:
        """Reject at submit time a trial that can never fit, instead of queueing forever.

        Without an autoscaler the biggest possible cluster is today's; with one, nodes may
        still come, so only a trial larger than every node type together is refused there."""
        if can_autoscale():
            return
        res = config.resources
        shape = resources_shape(res)
        need = res.slots_per_trial.min
        demand = TrialDemand(
            trial_id=0, experiment_id=0, slot=shape, min_slots=need, max_slots=need
        )
        nodes = self._nodes()
        if not fits_ever(demand, nodes):
            total = {k: sum(n.resources.get(k, 0.0) for n in nodes) for k in shape}
            have = ", ".join(f"{v:g} {k}" for k, v in total.items())
            raise SchedulerError(
                f"a trial needs {need} slot(s) of {shape} but this cluster can never give that "
                f"(it has {have} in all, across {len(nodes)} node(s)); lower "
                "resources.slots_per_trial, cpus_per_slot or gpus_per_slot, or add nodes"
            )

    # ---------------------------------------------------------------- experiments
    async def submit(self, config: ExperimentConfig) -> int:
        self._check_fits(config)
        seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
        exp_id = self.journal.create_experiment(
            name=config.name,
            config_yaml=config.to_yaml(),
            seed=seed,
            storage_root=config.storage,
            priority=config.resources.priority,
            max_slots=config.resources.max_slots,
        )
        storage = ExperimentStorage(config.storage, exp_id)
        storage.write_config(config.to_yaml())
        tracker = experiment_tracker(config, storage)
        start_parent_run(tracker, self.journal, config, exp_id, seed)
        searcher = make_searcher(config.searcher_settings(), config.space(), seed)
        shell: Any = SearcherActor.options(  # type: ignore[attr-defined]
            name=f"searcher/{exp_id}", namespace=NAMESPACE
        ).remote(searcher)
        exp = self._experiment_run(exp_id, config, seed, storage, tracker, shell)
        # The uploader's pin on the code package expires in minutes; trials may start hours
        # later (queued, paused): a detached holder keeps it until the experiment ends.
        hold_package(exp_id, config)
        # Its first trials' workers start while its searcher actor starts (after the hold:
        # they unpack the package).
        self.prewarm.start(exp)
        await exp.begin()
        return exp_id

    def _experiment_run(
        self,
        exp_id: int,
        config: ExperimentConfig,
        seed: int,
        storage: ExperimentStorage,
        tracker: Tracker,
        searcher: Any,
    ) -> ExperimentRun:
        exp = ExperimentRun(
            experiment_id=exp_id,
            config=config,
            seed=seed,
            journal=self.journal,
            storage=storage,
            tracker=tracker,
            searcher=searcher,
            start_group=self._start_group,
            on_change=self._on_change,
            next_seq=lambda: next(self._seq),
        )
        self.experiments[exp_id] = exp
        return exp

    async def _start_group(self, spec: TrialSpec, n: int, max_workers: int) -> Any:
        from resolute.elastic.group import WorkerGroup
        from resolute.elastic.placement import Shape

        exp = self.experiments[spec.experiment_id]
        self.trial_owner[spec.trial_id] = exp
        await self.prewarm.wait(Shape.for_spec(spec))
        group = WorkerGroup(
            spec=spec,
            sink=self._self,
            pool=self.pool,
            min_workers=min(exp.config.resources.slots_per_trial.min, n),
            max_workers=max(max_workers, n),
        )
        await group.start(n)
        return group

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
                f"experiment {experiment_id} is not run by this scheduler; "
                "`resolute experiment list` shows the experiments, and `resolute experiment "
                f"activate {experiment_id}` resumes one that an earlier scheduler left PAUSED "
                "or ACTIVE"
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
        exp = await self._get_or_adopt(experiment_id)
        await exp.kill()
        return exp.summary()

    async def pause(self, experiment_id: int) -> dict[str, Any]:
        exp = await self._get_or_adopt(experiment_id)
        await exp.pause()
        return exp.summary()

    async def activate(self, experiment_id: int) -> dict[str, Any]:
        exp = await self._get_or_adopt(experiment_id)
        await exp.activate()
        return exp.summary()

    def set_priority(self, experiment_id: int, priority: int) -> dict[str, Any]:
        if not 1 <= priority <= 99:
            raise SchedulerError(f"priority must be 1..99 (lower runs first), got {priority}")
        exp = self._get(experiment_id)
        self.journal.set_priority(experiment_id, priority)  # durable before it takes effect
        exp.priority = priority
        self._on_change()
        return exp.summary()

    def set_max_slots(self, experiment_id: int, max_slots: int | None) -> dict[str, Any]:
        exp = self._get(experiment_id)
        if max_slots is not None and max_slots < exp.config.resources.slots_per_trial.min:
            raise SchedulerError(
                f"max_slots {max_slots} is below one trial's minimum "
                f"({exp.config.resources.slots_per_trial.min}): no trial could ever run"
            )
        self.journal.set_max_slots(experiment_id, max_slots)
        exp.max_slots = max_slots
        self._on_change()
        return exp.summary()

    async def kill_trial(self, trial_id: int) -> dict[str, Any]:
        for exp in self.experiments.values():
            tr = exp.by_global.get(trial_id)
            if tr is not None:
                await exp.kill_trial(tr)
                return exp.summary()
        raise NotFound(f"trial {trial_id} is not running under this scheduler")

    def list(self) -> list[dict[str, Any]]:
        return [exp.summary() for exp in self.experiments.values()]

    def cluster_status(self) -> dict[str, Any]:
        nodes = self._nodes()
        return {
            "nodes": [{"node_id": n.node_id, "resources": dict(n.resources)} for n in nodes],
            "experiments": [
                {
                    "id": e.id,
                    "name": e.config.name,
                    "status": e.status.value,
                    "priority": e.priority,
                    "weight": e.weight,
                    "slot": slot_shape(e),
                    "used_slots": e.used_slots(),
                    "running_trials": len(e.holding()),
                    "queued_trials": len(e.queued()),
                }
                for e in self.experiments.values()
                if not e.finished.is_set() or e.status == ExperimentStatus.PAUSED
            ],
            "pending_requests": self.cluster.pending() if self.cluster is not None else [],
            "resize_cooldown_s": self.cooldown_s,
            "workers": {
                "created": self.pool.created,
                "reused": self.pool.reused,
                "idle": self.pool.idle_count(),
            },
        }

    async def shutdown(self, pause: bool = False) -> None:
        """End this scheduler's work: kill its running experiments or, with ``pause``, pause
        them (running trials checkpoint and give their slots back; a later scheduler
        resumes each with ``activate``)."""
        for exp in self.experiments.values():
            if not exp.finished.is_set():
                await (exp.pause() if pause else exp.kill())
        for exp in self.experiments.values():
            with contextlib.suppress(asyncio.TimeoutError):
                if pause:
                    await asyncio.wait_for(_released(exp), SHUTDOWN_WAIT_S)
                else:
                    await asyncio.wait_for(exp.finished.wait(), SHUTDOWN_WAIT_S)
            exp._write_pending()
            exp.tracker.close()
        if self.cluster is not None:
            self.cluster.withdraw()
        await self.pool.close()


async def _released(exp: ExperimentRun) -> None:
    """Until no trial of ``exp`` holds slots or waits for its group's end to be recorded (a
    paused experiment's trials have checkpointed and are journaled PAUSED)."""
    while exp.holding() or any(t.request is not None for t in exp.trials.values()):
        await asyncio.sleep(0.1)


# The actor class lives in a module of its own, light to import: every process that unpickles
# a handle to it (each trial worker) imports the module that defines it.
from resolute.runtime.scheduler_actor import Scheduler  # noqa: E402

__all__ = ["Scheduler", "SchedulerCore", "NAMESPACE", "SCHEDULER_NAME"]
