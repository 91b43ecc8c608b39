"""Adopting an experiment that an earlier scheduler left in the journal.

``resolute cluster down`` pauses every active experiment (each running trial checkpoints and
gives its slots back) before the scheduler goes; a scheduler that died (its node lost, the
actor killed) leaves its experiments ACTIVE in the journal, with no process running them.
Either way the journal holds what a new scheduler needs to carry on: the config, the
searcher's snapshot (written after every decision), every trial's status, restarts and
latest checkpoint, and the MLflow run ids. ``resolute experiment activate ID`` on the new
scheduler rebuilds the experiment from those (as PAUSED) and resumes it: trials that were
running or queued start again from their latest checkpoint, with the target the searcher
had given them; trials the searcher had paused stay paused until it says otherwise.

The searcher's snapshot can be one decision behind the trial rows (its write follows the
rows of the same decision): a trial whose end the searcher never heard of is told now, and
a trial the searcher has closed is closed in the journal too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resolute.config import ExperimentConfig
from resolute.errors import NotFound, RuntimeEnvError
from resolute.runtime.experiment import (
    ExperimentRun,
    experiment_tracker,
    run_id_recorder,
    start_parent_run,
)
from resolute.runtime.lifecycle import ExperimentStatus, TrialStatus
from resolute.runtime.package import hold_package, upload_context
from resolute.runtime.searcher_actor import Event, ExitEvent, SearcherActor
from resolute.runtime.storage import ExperimentStorage
from resolute.runtime.trial_run import TrialRun
from resolute.search import make_searcher
from resolute.search.base import ExitReason
from resolute.search.ledger import Ledger
from resolute.search.ledger import TrialStatus as Planned

if TYPE_CHECKING:
    from resolute.runtime.journal import Journal
    from resolute.runtime.journal_schema import ExperimentRecord, TrialRecord

log = logging.getLogger("resolute.scheduler")

ADOPTABLE = frozenset({ExperimentStatus.PAUSED, ExperimentStatus.ACTIVE})

_EXIT_REASONS = {
    TrialStatus.COMPLETED: ExitReason.COMPLETED,
    TrialStatus.ERRORED: ExitReason.ERRORED,
    TrialStatus.KILLED: ExitReason.KILLED,
}


def adoptable_record(
    journal: Journal, experiment_id: int
) -> tuple[ExperimentRecord, dict[str, Any]]:
    """The journal's record of an experiment this scheduler may adopt, and its searcher's
    snapshot; ``NotFound`` saying why not otherwise."""
    try:
        record = journal.get_experiment(experiment_id)
    except NotFound:
        raise NotFound(
            f"experiment {experiment_id} is not in this scheduler's journal; "
            "`resolute experiment list` shows the experiments"
        ) from None
    if record.status not in ADOPTABLE:
        raise NotFound(
            f"experiment {experiment_id} has ended ({record.status.value}); "
            "`resolute experiment describe` shows its results"
        )
    snapshot = journal.load_searcher_snapshot(experiment_id)
    if snapshot is None:
        raise NotFound(
            f"experiment {experiment_id} has no searcher snapshot in the journal (its scheduler "
            "stopped before the searcher's first decision): submit it again"
        )
    return record, dict(snapshot)


def code_on_this_cluster(config: ExperimentConfig, experiment_id: int) -> ExperimentConfig:
    """The config with a code package this Ray cluster has. A ``gcs://`` package lives in
    the GCS of the cluster it was uploaded to: a new cluster (an embedded Ray started again,
    a head that restarted) does not have it, and ``context_dir`` is packed again if it is
    on this machine."""
    uri = config.environment.package
    if uri is None or not uri.startswith("gcs://"):
        return config
    from ray._private.runtime_env import packaging

    if packaging.package_exists(uri):
        return config
    if not Path(config.context_dir).is_dir():
        raise RuntimeEnvError(
            f"experiment {experiment_id}'s code package {uri} is gone with the Ray cluster "
            f"that held it, and its context_dir {str(config.context_dir)!r} is not on the "
            "scheduler's machine to pack again: activate it from a scheduler whose machine "
            "has that folder, or submit the experiment again"
        )
    fresh = upload_context(config.with_package(None))
    if fresh.environment.package != uri:
        log.warning(
            "experiment %s: the code in %s changed since it was submitted; its trials resume "
            "with the code as it is now (%s)",
            experiment_id,
            config.context_dir,
            fresh.environment.package,
        )
    return fresh


def searcher_ledger(snapshot: dict[str, Any]) -> Ledger:
    """The searcher's view of its trials (status, target) from its snapshot."""
    ledger = Ledger()
    ledger.restore(snapshot["ledger"])
    return ledger


def rebuild_trials(
    exp: ExperimentRun, records: Iterable[TrialRecord], ledger: Ledger
) -> list[Event]:
    """Fill ``exp.trials`` from the journal's rows and the searcher's ledger. Returns the
    events the searcher missed (trials whose end was journaled after its snapshot)."""
    planned = {r.trial_id: r for r in ledger.records()}
    events: list[Event] = []
    for row in records:
        plan = planned.get(row.searcher_trial_id)
        if plan is None and row.status in (TrialStatus.PENDING, TrialStatus.RUNNING):
            # Written after the searcher's snapshot: the restored searcher creates it again
            # (same id, same draws), and ExperimentRun._create takes this row back then.
            exp.unplanned[row.searcher_trial_id] = _row_run(row, until=0.0)
            continue
        tr = _row_run(row, until=plan.until if plan is not None else 0.0)
        exp.trials[tr.searcher_id] = tr
        exp.by_global[tr.trial_id] = tr
        if row.best_metric is not None and row.best_step is not None:
            exp._update_best(tr, row.best_metric, row.best_step)
        if not tr.live:
            if plan is not None and plan.status is not Planned.CLOSED:
                reason = _EXIT_REASONS.get(tr.status, ExitReason.KILLED)
                events.append(ExitEvent(tr.searcher_id, reason))
            continue
        if plan is None or plan.status is Planned.CLOSED:
            # Closed by the searcher while its end was not journaled yet (or unknown to it).
            exp._set_status(tr, TrialStatus.STOPPED)
        elif plan.status is Planned.PAUSED or (
            plan.status is Planned.WAITING and tr.latest_checkpoint is not None
        ):
            # Off its slots until the searcher's Continue (which queues it) or Stop.
            _off_slots(exp, tr)
        else:
            # It was running or queued: it resumes from its latest checkpoint when the
            # experiment is active (restarts are not used up: its code did not fail).
            _off_slots(exp, tr)
            exp._enqueue(tr)
    return events


def _row_run(row: TrialRecord, *, until: float) -> TrialRun:
    return TrialRun(
        searcher_id=row.searcher_trial_id,
        trial_id=row.id,
        hparams=dict(row.hparams),
        seed=row.seed,
        until=until,
        status=row.status,
        restarts=row.restarts,
        latest_checkpoint=row.latest_checkpoint,
        last_step=row.last_step if row.last_step is not None else -1,
        started_once=row.started_at is not None,
    )


def _off_slots(exp: ExperimentRun, tr: TrialRun) -> None:
    """A trial whose group is gone: PAUSED in the journal if it ran (PENDING stays)."""
    if tr.status in (TrialStatus.RUNNING, TrialStatus.RESIZING):
        exp._set_status(tr, TrialStatus.PAUSED)


class ExperimentAdoption:
    """The scheduler's side: a mixin of ``SchedulerCore`` (its journal, experiments and
    trial routing)."""

    journal: Journal
    experiments: dict[int, ExperimentRun]
    trial_owner: dict[int, ExperimentRun]

    if TYPE_CHECKING:

        def _experiment_run(
            self,
            exp_id: int,
            config: ExperimentConfig,
            seed: int,
            storage: ExperimentStorage,
            tracker: Any,
            searcher: Any,
        ) -> ExperimentRun: ...

    async def experiment_over(self, experiment_id: int, timeout: float) -> bool:
        """For the experiment's package holder: whether it may let the code go. An
        experiment an earlier scheduler left in the journal is not over: it may be adopted."""
        exp = self.experiments.get(experiment_id)
        if exp is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(exp.finished.wait(), timeout)
            return exp.finished.is_set()
        try:
            status = self.journal.get_experiment(experiment_id).status
        except NotFound:
            return True
        if status in ADOPTABLE:
            await asyncio.sleep(timeout)
            return False
        return True

    async def _get_or_adopt(self, experiment_id: int) -> ExperimentRun:
        exp = self.experiments.get(experiment_id)
        return exp if exp is not None else await self._adopt(experiment_id)

    async def _adopt(self, experiment_id: int) -> ExperimentRun:
        """Rebuild, as PAUSED, an experiment an earlier scheduler left in the journal;
        ``activate`` then resumes it."""
        from resolute.runtime.scheduler import NAMESPACE

        record, snapshot = adoptable_record(self.journal, experiment_id)
        config = await asyncio.to_thread(
            code_on_this_cluster, ExperimentConfig.from_yaml(record.config_yaml), experiment_id
        )
        storage = ExperimentStorage(record.storage_root, experiment_id)
        tracker = experiment_tracker(config, storage)
        run_id = record.mlflow_run_id
        if not (run_id and await asyncio.to_thread(tracker.attach_experiment, run_id)):
            start_parent_run(tracker, self.journal, config, experiment_id, record.seed)
        searcher = make_searcher(config.searcher_settings(), config.space(), record.seed)
        # A new name: the dead scheduler's searcher actor may not be gone yet.
        shell: Any = SearcherActor.options(  # type: ignore[attr-defined]
            name=f"searcher/{experiment_id}/{uuid.uuid4().hex[:8]}", namespace=NAMESPACE
        ).remote(searcher, snapshot)
        exp = self._experiment_run(experiment_id, config, record.seed, storage, tracker, shell)
        exp.status = ExperimentStatus.PAUSED
        if record.status != ExperimentStatus.PAUSED:
            self.journal.set_experiment_status(experiment_id, ExperimentStatus.PAUSED)
        if record.priority is not None:
            exp.priority = record.priority
        exp.max_slots = record.max_slots
        exp.progress, exp.started_at = record.progress, record.created_at
        ledger = searcher_ledger(snapshot)
        exp.searcher_done = ledger.shut_down
        rows = self.journal.list_trials(experiment_id)
        missed = rebuild_trials(exp, rows, ledger)
        for row in rows:
            self.trial_owner[row.id] = exp
            tr = exp.by_global.get(row.id)
            if row.mlflow_run_id:
                tracker.attach_trial(row.id, row.mlflow_run_id)
            elif tr is not None and tr.live:  # (an unplanned one gets its run when created)
                tracker.start_trial_later(
                    row.id,
                    tr.hparams,
                    {"resolute.searcher_trial_id": str(tr.searcher_id)},
                    on_started=run_id_recorder(self.journal.update_trial, row.id, what="trial"),
                )
        hold_package(experiment_id, config)
        async with exp._lock:
            await exp._feed(missed)
        resume = sum(1 for t in exp.trials.values() if t.queued)
        log.info(
            "experiment %s adopted from the journal (was %s): %d trial(s), %d to resume",
            experiment_id,
            record.status.value,
            len(rows),
            resume,
        )
        return exp
