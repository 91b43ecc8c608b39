"""One experiment inside the scheduler: turns searcher actions into trials, and trials'
outcomes into searcher events (trial groups run in ``runtime/running.py``).

The Scheduler owns one ``ExperimentRun`` per experiment and calls it from its event loop.
Which queued trial starts, and at what size, is the allocator's decision
(``runtime/allocator.py``); this class carries it out. Everything durable goes to the
journal *before* it takes effect (a trial row exists before its workers start; a status is
written before its slots are reused). Reports are handled in ``runtime/reports.py``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from resolute.config import ExperimentConfig
from resolute.elastic.spec import TrialSpec
from resolute.runtime.journal import Journal
from resolute.runtime.lifecycle import ExperimentStatus, TrialStatus
from resolute.runtime.reports import ReportHandling
from resolute.runtime.running import TrialRunning
from resolute.runtime.searcher_actor import Decision, Event, ExitEvent
from resolute.runtime.storage import ExperimentStorage, default_tracking_uri
from resolute.runtime.tracking import Tracker
from resolute.runtime.trial_run import TrialRun
from resolute.search.base import (
    Action,
    Continue,
    Create,
    ExitReason,
    Pause,
    Shutdown,
    Stop,
    StopReason,
)

log = logging.getLogger("resolute.scheduler")

# How a group that wound down on request ends, when it did not error.
_RESUMES = {"yield", "preempt"}


class ExperimentRun(ReportHandling, TrialRunning):
    """Carries out one experiment's searcher actions on worker groups."""

    def __init__(
        self,
        *,
        experiment_id: int,
        config: ExperimentConfig,
        seed: int,
        journal: Journal,
        storage: ExperimentStorage,
        tracker: Tracker,
        searcher: Any,  # SearcherActor handle (remote) or SearcherShell (in-process)
        start_group: Callable[[TrialSpec, int, int], Awaitable[Any]],
        on_change: Callable[[], None],
        next_seq: Callable[[], int],
    ) -> None:
        self.id = experiment_id
        self.config = config
        self.seed = seed
        self.journal = journal
        self.storage = storage
        self.tracker = tracker
        self.searcher = searcher
        self._start_group = start_group
        self._on_change = on_change
        self._next_seq = next_seq
        res = config.resources
        self.priority, self.weight, self.max_slots = res.priority, res.weight, res.max_slots
        self.trials: dict[int, TrialRun] = {}  # by searcher id
        # Adopted rows the restored searcher has not created yet (runtime/recovery.py).
        self.unplanned: dict[int, TrialRun] = {}
        self.by_global: dict[int, TrialRun] = {}
        self.searcher_done = False
        self.status = ExperimentStatus.ACTIVE
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.progress = 0.0
        self.best_trial: TrialRun | None = None
        self.error: str | None = None
        self._lock = asyncio.Lock()
        self._pending_writes: list[functools.partial[Any]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.slot_seconds = 0.0  # slots held x seconds, over the experiment's life
        self._accounted_at = time.monotonic()
        self.finished = asyncio.Event()

    def _journal_later(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Write to the journal in the event loop's next turn, in order, after what this
        turn set going: a trial started now sends its first call to its worker before the
        (synchronous, milliseconds-long) write runs. For records that only inform. Once
        the experiment has ended, and before it is marked ended, they are written at once,
        so that whoever waits for the end reads them."""
        self._pending_writes.append(functools.partial(fn, *args, **kwargs))
        if self.finished.is_set():
            self._write_pending()
        elif len(self._pending_writes) == 1:
            asyncio.get_running_loop().call_soon(self._write_pending)

    def _write_pending(self) -> None:
        writes, self._pending_writes = self._pending_writes, []
        for write in writes:
            try:
                write()
            except Exception:
                log.exception("journal write %s failed", getattr(write.func, "__name__", write))

    # ----------------------------------------------------------------- searcher calls
    async def _call(self, method: str, *args: Any) -> Any:
        fn = getattr(self.searcher, method)
        if hasattr(fn, "remote"):
            return await fn.remote(*args)
        return fn(*args)

    async def begin(self) -> None:
        async with self._lock:
            await self._decided(await self._call("begin"))

    async def _feed(self, events: list[Event], at_target: set[int] | None = None) -> None:
        """Send events to the searcher and carry out what it answers (in order).

        ``at_target``: searcher ids of trials whose reports reached their target; those the
        searcher leaves without an action now wait for a later decision."""
        if not events or self.searcher_done:
            self._changed()
            return
        decision: Decision = await self._call("decide", events)
        # Waiting for this answer; an action on one of them ends its wait (``_apply``).
        for sid in at_target or set():
            self.trials[sid].waiting = True
        await self._decided(decision)

    async def _decided(self, decision: Decision) -> None:
        await self._apply(decision.actions)
        self.progress = float(decision.progress)
        # The allocation round first (a trial the searcher just stopped frees its slot for
        # one it just created), the snapshot after it: nothing waits on that write.
        self._changed()
        self._journal_later(self.journal.save_searcher_snapshot, self.id, decision.snapshot)
        self._journal_later(self.journal.update_experiment, self.id, progress=self.progress)

    def _changed(self) -> None:
        self._check_finished()
        self._on_change()

    # ------------------------------------------------------------------ actions
    async def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Create):
                self._create(action)
            elif isinstance(action, Shutdown):
                self.searcher_done = True
            else:
                tr = self.trials[action.trial_id]
                # A trial waiting at its target returns as soon as it is told to stop.
                ending, tr.waiting = tr.waiting, False
                if isinstance(action, Continue):
                    self._continue(tr, action.until)
                elif isinstance(action, Pause):
                    self._pause(tr, ending=ending)
                elif isinstance(action, Stop):
                    self._stop(tr, action.reason, ending=ending)

    def _create(self, action: Create) -> None:
        donor = self.trials.get(action.clone_from) if action.clone_from is not None else None
        unplanned = self.unplanned.pop(action.trial_id, None)
        if unplanned is not None:
            # Its row was written just before an earlier scheduler died, after the searcher
            # snapshot this one restored: the searcher creates the same trial again.
            trial_id = unplanned.trial_id
        else:
            trial_id = self.journal.create_trial(
                experiment_id=self.id,
                searcher_trial_id=action.trial_id,
                hparams=action.hparams,
                seed=action.seed,
                clone_from=donor.trial_id if donor else None,
            )
        tr = TrialRun(
            searcher_id=action.trial_id,
            trial_id=trial_id,
            hparams=action.hparams,
            seed=action.seed,
            until=action.until,
            clone_from=action.clone_from,
        )
        if donor is not None:
            # A clone starts from its donor's latest checkpoint (PBT exploit).
            tr.latest_checkpoint = donor.latest_checkpoint
        self.trials[action.trial_id] = tr
        self.by_global[trial_id] = tr
        self._enqueue(tr)
        if unplanned is not None:
            tr.status, tr.restarts = unplanned.status, unplanned.restarts
            tr.latest_checkpoint = unplanned.latest_checkpoint or tr.latest_checkpoint
            if self.tracker.trial_run_id(trial_id) is not None:
                return
        tags = {"resolute.searcher_trial_id": str(action.trial_id)}
        if donor is not None:
            tags["resolute.clone_from"] = str(donor.trial_id)
        # Created on the tracker's thread: an MLflow run costs tens of milliseconds, and a
        # trial created here usually takes a slot that is free right now.
        self.tracker.start_trial_later(
            trial_id,
            action.hparams,
            tags,
            on_started=run_id_recorder(self.journal.update_trial, trial_id, what="trial"),
        )

    def _continue(self, tr: TrialRun, until: float) -> None:
        tr.until = until
        self._decision(tr, f"continue until {until:g}")
        if tr.request in ("pause", "yield", "preempt"):  # resume once its slots are back
            tr.resume_pending = True
        elif tr.slots and tr.request is None:
            if tr.group is not None:  # else the group gets it once it has started
                tr.group.set_target(until)
        elif tr.status == TrialStatus.PAUSED:
            self._enqueue(tr)

    def _pause(self, tr: TrialRun, *, ending: bool = False) -> None:
        self._decision(tr, "pause")
        tr.resume_pending = False
        if tr.slots:  # running, or its group is starting (then told once it has started)
            told, tr.request = tr.request in _RESUMES, "pause"
            if tr.group is not None and not told:
                tr.group.request_stop(pause=True, ending=ending)
        else:
            self._dequeue(tr)

    def _stop(self, tr: TrialRun, reason: StopReason, *, ending: bool = False) -> None:
        tr.stop_reason = reason
        self._decision(tr, "stop" if reason == StopReason.EARLY_STOPPED else "finish")
        if tr.slots:
            told, tr.request = tr.request in _RESUMES, "stop"
            if tr.group is not None and not told:
                tr.group.request_stop(pause=False, ending=ending)
            return
        self._dequeue(tr)
        if tr.live:
            self._end_trial(tr, TrialStatus.STOPPED)

    def _decision(self, tr: TrialRun, what: str) -> None:
        tr.history.append(what)
        step = max(tr.last_step, 0)
        # One tag per decision, in order (a step can see several: pause, then continue).
        tag = f"decision.{len(tr.history):03d}"
        self.tracker.set_trial_tags(tr.trial_id, {tag: f"step {step}: {what}"})

    # ------------------------------------------------------------ running trials
    def _enqueue(self, tr: TrialRun) -> None:
        if not tr.queued:
            tr.queued = True
            tr.queued_seq = self._next_seq()

    def _dequeue(self, tr: TrialRun) -> None:
        tr.queued = False

    def queued(self) -> list[TrialRun]:
        """Trials waiting for slots, oldest first (empty unless the experiment is active)."""
        if self.status != ExperimentStatus.ACTIVE:
            return []
        return sorted((t for t in self.trials.values() if t.queued), key=lambda t: t.queued_seq)

    def holding(self) -> list[TrialRun]:
        """Trials that hold slots: running, starting, or winding down."""
        return [t for t in self.trials.values() if t.slots]

    def used_slots(self) -> int:
        return sum(t.slots for t in self.trials.values())

    def _account(self) -> None:
        """Add the slot-seconds held since the last change (call before slots change)."""
        now = time.monotonic()
        self.slot_seconds += (now - self._accounted_at) * self.used_slots()
        self._accounted_at = now

    def _set_status(self, tr: TrialRun, status: TrialStatus, error: str | None = None) -> None:
        if tr.status == status:
            return
        self.journal.set_trial_status(tr.trial_id, status, error=error)
        tr.status = status

    def _end_trial(self, tr: TrialRun, status: TrialStatus, error: str | None = None) -> None:
        tr.queued = False
        self._set_status(tr, status, error=error)
        self.tracker.end_trial(tr.trial_id, status)

    # --------------------------------------------------------------- the end
    def _check_finished(self) -> None:
        if self.finished.is_set():
            return
        live = [t for t in self.trials.values() if t.live]
        busy = [t for t in live if t.slots or t.queued]
        if self.status in (ExperimentStatus.STOPPED, ExperimentStatus.ERRORED):
            if not any(t.slots for t in live):
                self._finish(self.status)
        elif self.searcher_done and not live:
            self._finish(ExperimentStatus.COMPLETED)
        elif self.status == ExperimentStatus.ACTIVE and not self.searcher_done and not busy:
            # Nothing runs and nothing will: the searcher waits on trials that cannot
            # report. That is a searcher bug; fail loudly instead of hanging forever.
            self.fail("the searcher stopped issuing work before finishing (searcher bug)")

    def fail(self, error: str) -> None:
        """End the experiment as ERRORED: stop what runs, keep what was recorded."""
        log.error("experiment %s failed: %s", self.id, error)
        self.error = error
        self._wind_down(ExperimentStatus.ERRORED, TrialStatus.STOPPED)

    async def kill(self) -> None:
        """Stop every trial now (user request)."""
        async with self._lock:
            self._wind_down(ExperimentStatus.STOPPED, TrialStatus.KILLED)

    def _wind_down(self, status: ExperimentStatus, trial_status: TrialStatus) -> None:
        self.status = status
        self.searcher_done = True
        for tr in self.trials.values():
            if tr.slots:
                tr.request = "kill"
                if tr.group is not None:
                    tr.group.request_stop(pause=False)
            elif tr.live:
                self._end_trial(tr, trial_status)
        self._changed()

    async def pause(self) -> None:
        """Checkpoint every running trial and free its slots; ``activate`` resumes them."""
        async with self._lock:
            if self.status != ExperimentStatus.ACTIVE:
                return
            self.status = ExperimentStatus.PAUSED
            self.journal.set_experiment_status(self.id, ExperimentStatus.PAUSED)
            for tr in self.holding():
                self.preempt(tr)
            self._on_change()

    async def activate(self) -> None:
        async with self._lock:
            if self.status != ExperimentStatus.PAUSED:
                return
            self.status = ExperimentStatus.ACTIVE
            self.journal.set_experiment_status(self.id, ExperimentStatus.ACTIVE)
            self._changed()

    async def kill_trial(self, tr: TrialRun) -> None:
        async with self._lock:
            if tr.slots:
                tr.request = "kill"
                if tr.group is not None:
                    tr.group.request_stop(pause=False)
            elif tr.live:
                self._end_trial(tr, TrialStatus.KILLED)
                await self._feed([ExitEvent(tr.searcher_id, ExitReason.KILLED)])

    def _finish(self, status: ExperimentStatus) -> None:
        self.status = status
        self.ended_at = time.time()
        best = self.best_trial
        self.journal.set_experiment_status(self.id, status)
        self.tracker.end_experiment(
            status,
            best.trial_id if best else None,
            best.best if best else None,
            best.hparams if best else None,
        )
        self.tracker.flush()
        self._write_pending()
        self.finished.set()


def run_id_recorder(
    update: Callable[..., None], record_id: int, *, what: str
) -> Callable[[str], None]:
    """A callback for the tracker's thread that journals an MLflow run id with ``update``
    (``Journal.update_trial`` / ``update_experiment``); it logs a failure, never raises."""

    def record(run_id: str) -> None:
        try:
            update(record_id, mlflow_run_id=run_id)
        except Exception:  # the tracker's thread: log, never raise into it
            log.exception("%s %s: could not journal its MLflow run id", what, record_id)

    return record


def experiment_tracker(config: ExperimentConfig, storage: ExperimentStorage) -> Tracker:
    """The experiment's MLflow/TensorBoard tracker. Opening MLflow's store takes seconds (a
    new SQLite store is migrated): the tracker does it on its own thread."""
    return Tracker(
        tracking_uri=config.tracking.mlflow_uri or default_tracking_uri(config.storage),
        experiment_name=config.name,
        tensorboard_root=storage.tensorboard_dir if config.tracking.tensorboard else None,
        connect_now=False,
    )


def start_parent_run(
    tracker: Tracker, journal: Journal, config: ExperimentConfig, experiment_id: int, seed: int
) -> None:
    """Create the experiment's MLflow parent run on the tracker's thread; its id is
    journaled once it exists."""
    tracker.start_experiment_later(
        config.to_dict(),
        config.searcher.name,
        {"resolute.experiment_id": str(experiment_id), "resolute.seed": str(seed)},
        on_started=run_id_recorder(journal.update_experiment, experiment_id, what="experiment"),
    )
