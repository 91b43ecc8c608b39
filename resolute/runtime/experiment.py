"""One experiment inside the scheduler: turns searcher actions into trials and trials' reports
into searcher events.

The Scheduler actor owns one ``ExperimentRun`` per experiment and calls it from its event
loop. Everything durable goes to the journal *before* it takes effect (a trial row exists
before its workers start; a status is written before the slots are reused).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from resolute.config import ExperimentConfig
from resolute.elastic.spec import Report, TrialSpec
from resolute.errors import EntrypointError, ResourcesUnavailable
from resolute.runtime.journal import Journal
from resolute.runtime.lifecycle import ExperimentStatus, TrialStatus
from resolute.runtime.searcher_actor import Event, ExitEvent, ResultEvent
from resolute.runtime.storage import ExperimentStorage
from resolute.runtime.tracking import Tracker
from resolute.search.base import (
    Action,
    Continue,
    Create,
    ExitReason,
    Pause,
    Shutdown,
    Stop,
    StopReason,
    rank_value,
)

log = logging.getLogger("resolute.scheduler")

TERMINAL = {TrialStatus.COMPLETED, TrialStatus.STOPPED, TrialStatus.ERRORED, TrialStatus.KILLED}


@dataclass
class TrialRun:
    """The scheduler's in-memory view of one trial (the journal holds the durable one)."""

    searcher_id: int
    trial_id: int
    hparams: dict[str, Any]
    seed: int
    until: float
    clone_from: int | None = None  # searcher id of the donor (PBT)
    status: TrialStatus = TrialStatus.PENDING
    group: Any = None  # elastic.group.WorkerGroup while running
    request: str | None = None  # "stop" | "pause" | "kill" while the group winds down
    stop_reason: StopReason | None = None
    restarts: int = 0
    latest_checkpoint: str | None = None
    last_step: int = -1
    best: float | None = None
    best_step: int | None = None
    queued: bool = False
    waiting: bool = False  # at its target with no decision yet (holds its slots)
    resume_pending: bool = False  # a Continue arrived while it was yielding its slots
    started_once: bool = False
    slots: int = 0
    history: list[str] = field(default_factory=list)
    metric_at: dict[int, float] = field(default_factory=dict)  # step -> searcher metric


class ExperimentRun:
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
        free_slots: Callable[[ExperimentConfig], int],
        on_change: Callable[[], None],
    ) -> None:
        self.id = experiment_id
        self.config = config
        self.seed = seed
        self.journal = journal
        self.storage = storage
        self.tracker = tracker
        self.searcher = searcher
        self._start_group = start_group
        self._free_slots = free_slots
        self._on_change = on_change
        self.trials: dict[int, TrialRun] = {}  # by searcher id
        self.by_global: dict[int, TrialRun] = {}
        self.queue: deque[TrialRun] = deque()
        self.searcher_done = False
        self.status = ExperimentStatus.ACTIVE
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.progress = 0.0
        self.best_trial: TrialRun | None = None
        self.error: str | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.finished = asyncio.Event()

    # ----------------------------------------------------------------- searcher calls
    async def _call(self, method: str, *args: Any) -> Any:
        fn = getattr(self.searcher, method)
        if hasattr(fn, "remote"):
            return await fn.remote(*args)
        return fn(*args)

    async def begin(self) -> None:
        async with self._lock:
            actions = await self._call("initial")
            await self._apply(actions)
            await self._after_decisions()

    async def _feed(self, events: list[Event], at_target: set[int] | None = None) -> None:
        """Send events to the searcher and carry out what it answers (in order).

        ``at_target``: searcher ids of trials whose reports reached their target; those the
        searcher leaves without an action now wait for a later decision."""
        if not events or self.searcher_done:
            return
        actions = await self._call("handle", events)
        touched = {a.trial_id for a in actions if not isinstance(a, Shutdown)}
        for sid in (at_target or set()) - touched:
            self.trials[sid].waiting = True
        await self._apply(actions)
        await self._after_decisions()

    async def _after_decisions(self) -> None:
        self.progress = float(await self._call("progress"))
        self.journal.save_searcher_snapshot(self.id, await self._call("snapshot"))
        self.journal.update_experiment(self.id, progress=self.progress)
        self._schedule()
        self._check_finished()
        self._on_change()

    # ------------------------------------------------------------------ actions
    async def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if not isinstance(action, (Create, Shutdown)):
                self.trials[action.trial_id].waiting = False
            if isinstance(action, Create):
                self._create(action)
            elif isinstance(action, Continue):
                self._continue(action)
            elif isinstance(action, Pause):
                self._pause(action)
            elif isinstance(action, Stop):
                self._stop(action)
            elif isinstance(action, Shutdown):
                self.searcher_done = True

    def _create(self, action: Create) -> None:
        donor = self.trials.get(action.clone_from) if action.clone_from is not None else None
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
        tags = {"resolute.searcher_trial_id": str(action.trial_id)}
        if donor is not None:
            tags["resolute.clone_from"] = str(donor.trial_id)
        run_id = self.tracker.start_trial(trial_id, action.hparams, tags)
        if run_id:
            self.journal.update_trial(trial_id, mlflow_run_id=run_id)
        self.trials[action.trial_id] = tr
        self.by_global[trial_id] = tr
        self._enqueue(tr)

    def _continue(self, action: Continue) -> None:
        tr = self.trials[action.trial_id]
        tr.until = action.until
        self._decision(tr, f"continue until {action.until:g}")
        if tr.request == "yield":  # giving its slots back: resume once it has
            tr.resume_pending = True
        elif tr.slots and tr.request is None:
            if tr.group is not None:  # else the group gets it once it has started
                tr.group.set_target(action.until)
        elif tr.status == TrialStatus.PAUSED:
            self._enqueue(tr)

    def _pause(self, action: Pause) -> None:
        tr = self.trials[action.trial_id]
        self._decision(tr, "pause")
        if tr.slots:  # running, or its group is starting (then told once it has started)
            yielding, tr.request = tr.request == "yield", "pause"
            if yielding:
                return
            if tr.group is not None:
                tr.group.request_stop(pause=True)
        elif tr.queued:
            self._dequeue(tr)

    def _stop(self, action: Stop) -> None:
        tr = self.trials[action.trial_id]
        tr.stop_reason = action.reason
        self._decision(tr, "stop" if action.reason == StopReason.EARLY_STOPPED else "finish")
        if tr.slots:
            yielding, tr.request = tr.request == "yield", "stop"
            if tr.group is not None and not yielding:
                tr.group.request_stop(pause=False)
            return
        if tr.queued:
            self._dequeue(tr)
        if tr.status not in TERMINAL:
            self._end_trial(tr, TrialStatus.STOPPED)

    def _decision(self, tr: TrialRun, what: str) -> None:
        tr.history.append(what)
        step = max(tr.last_step, 0)
        # One tag per decision, in order (a step can see several: pause, then continue).
        tag = f"decision.{len(tr.history):03d}"
        self.tracker.set_trial_tags(tr.trial_id, {tag: f"step {step}: {what}"})

    # --------------------------------------------------------------- scheduling
    def _enqueue(self, tr: TrialRun) -> None:
        if not tr.queued:
            tr.queued = True
            self.queue.append(tr)

    def _dequeue(self, tr: TrialRun) -> None:
        if tr.queued:
            tr.queued = False
            self.queue.remove(tr)

    def _schedule(self) -> None:
        """Start queued trials while slots are free (FIFO within the experiment)."""
        if self.status != ExperimentStatus.ACTIVE:
            return
        slots = self.config.resources.slots_per_trial
        while self.queue:
            free = self._free_slots(self.config)
            if free < slots.min:
                self._yield_waiting(len(self.queue))
                return
            tr = self.queue.popleft()
            tr.queued = False
            tr.slots = min(slots.max, free)  # counted as used while its group starts
            task = asyncio.get_running_loop().create_task(self._run_trial(tr, tr.slots))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _yield_waiting(self, wanted: int) -> None:
        """Trials waiting at their target for a decision hold slots that queued trials need
        (PBT waits for its whole population): checkpoint them and give the slots back. They
        resume from that checkpoint when the searcher says Continue."""
        for tr in self.trials.values():
            if wanted <= 0:
                return
            if tr.waiting and tr.group is not None and tr.request is None:
                tr.request = "yield"
                tr.group.request_stop(pause=True)
                self._decision(tr, "yield slots while waiting")
                wanted -= 1

    def used_slots(self) -> int:
        return sum(tr.slots for tr in self.trials.values())

    def _spec(self, tr: TrialRun) -> TrialSpec:
        cfg = self.config
        return TrialSpec(
            experiment_id=self.id,
            experiment_name=cfg.name,
            trial_id=tr.trial_id,
            searcher_trial_id=tr.searcher_id,
            hparams=tr.hparams,
            seed=tr.seed,
            entrypoint=cfg.entrypoint,
            context_dir=str(cfg.context_dir),
            storage_root=self.storage.root,
            metric=cfg.searcher.metric,
            time_metric=cfg.searcher.time_metric,
            until=tr.until,
            restore_from=tr.latest_checkpoint,
            checkpoint_period=cfg.checkpoint.period,
            backend=cfg.resources.backend,
            gpus_per_slot=cfg.resources.gpus_per_slot,
            cpus_per_slot=cfg.resources.cpus_per_slot,
            env_vars=dict(cfg.environment.env_vars),
            reuse_workers=cfg.resources.reuse_workers,
            attempt=tr.restarts,
        )

    async def _run_trial(self, tr: TrialRun, n: int) -> None:
        slots = self.config.resources.slots_per_trial
        spec = self._spec(tr)
        try:
            group = await self._start_group(spec, n, slots.max)
        except ResourcesUnavailable as exc:
            # The slots were promised by our count but Ray could not place them (a node went
            # away, or another tenant took them): back to the queue, nothing lost.
            log.warning("trial %s: %s; queued again", tr.trial_id, exc)
            tr.slots = 0
            async with self._lock:
                self._enqueue(tr)
                await asyncio.sleep(1.0)
                self._on_change()
            return
        except EntrypointError as exc:
            # Every trial would fail the same way: end the experiment now, with the reason.
            tr.slots = 0
            async with self._lock:
                self.error = str(exc)
                self._end_trial(tr, TrialStatus.ERRORED, error=str(exc))
                await self._fail(str(exc))
            return
        except Exception as exc:
            log.exception("trial %s: worker group failed to start", tr.trial_id)
            outcome: Any = _FailedOutcome(error=f"{type(exc).__name__}: {exc}")
        else:
            tr.group = group
            tr.started_once = True
            self._set_status(tr, TrialStatus.RUNNING)
            # Decisions that arrived while the group was starting.
            if tr.request is not None:
                group.request_stop(pause=tr.request == "pause")
            elif tr.until != spec.until:
                group.set_target(tr.until)
            try:
                outcome = await group.wait()
            except Exception as exc:
                log.exception("trial %s: worker group failed", tr.trial_id)
                outcome = _FailedOutcome(error=f"{type(exc).__name__}: {exc}")
            finally:
                tr.group = None
                try:
                    await group.shutdown()
                except Exception:
                    log.exception("trial %s: shutting down its worker group", tr.trial_id)
        tr.slots = 0
        if getattr(outcome, "checkpoint_uri", None):
            tr.latest_checkpoint = outcome.checkpoint_uri
        async with self._lock:
            await self._on_outcome(tr, outcome)

    async def _on_outcome(self, tr: TrialRun, outcome: Any) -> None:
        status = getattr(outcome, "status", "errored")
        request, tr.request = tr.request, None
        events: list[Event] = []
        if request == "kill":
            self._end_trial(tr, TrialStatus.KILLED)
            events.append(ExitEvent(tr.searcher_id, ExitReason.KILLED))
        elif request == "pause" and status != "errored":
            self._set_status(tr, TrialStatus.PAUSED)
        elif request == "yield" and status != "errored":
            self._set_status(tr, TrialStatus.PAUSED)
            tr.waiting = False
            if tr.resume_pending:
                tr.resume_pending = False
                self._enqueue(tr)
        elif request == "stop" and status != "errored":
            done = tr.stop_reason == StopReason.FINISHED
            self._end_trial(tr, TrialStatus.COMPLETED if done else TrialStatus.STOPPED)
        elif status == "errored":
            error = getattr(outcome, "error", None) or "unknown error"
            counts = getattr(outcome, "counts_as_restart", True)
            if self.status == ExperimentStatus.ACTIVE and (
                not counts or tr.restarts < self.config.max_restarts
            ):
                # Lost workers or nodes do not use up max_restarts; a user exception does.
                if counts:
                    tr.restarts += 1
                self.journal.update_trial(tr.trial_id, restarts=tr.restarts, error=error[:2000])
                log.warning(
                    "trial %s failed (%s); restart %d of %d (%s) from %s",
                    tr.trial_id,
                    error.splitlines()[-1] if error else "",
                    tr.restarts,
                    self.config.max_restarts,
                    "counted" if counts else "workers lost, not counted",
                    tr.latest_checkpoint or "scratch",
                )
                if request == "pause":
                    self._set_status(tr, TrialStatus.PAUSED)
                elif request == "stop":
                    self._end_trial(tr, TrialStatus.STOPPED)
                else:
                    # Back to the queue; it is RUNNING again from its latest checkpoint.
                    self._set_status(tr, TrialStatus.PAUSED)
                    self._enqueue(tr)
            else:
                self._end_trial(tr, TrialStatus.ERRORED, error=error[:2000])
                if request is None:
                    events.append(ExitEvent(tr.searcher_id, ExitReason.ERRORED))
        else:  # the user's function returned on its own
            self._end_trial(tr, TrialStatus.COMPLETED)
            events.append(ExitEvent(tr.searcher_id, ExitReason.COMPLETED))
        if events:
            await self._feed(events)
        else:
            self._schedule()
            self._check_finished()
            self._on_change()

    def _set_status(self, tr: TrialRun, status: TrialStatus, error: str | None = None) -> None:
        if tr.status == status:
            return
        self.journal.set_trial_status(tr.trial_id, status, error=error)
        tr.status = status

    def _end_trial(self, tr: TrialRun, status: TrialStatus, error: str | None = None) -> None:
        self._set_status(tr, status, error=error)
        self.tracker.end_trial(tr.trial_id, status)

    def _check_finished(self) -> None:
        if self.finished.is_set():
            return
        live = [t for t in self.trials.values() if t.status not in TERMINAL]
        running = [t for t in live if t.status == TrialStatus.RUNNING or t.queued or t.slots]
        if self.status in (ExperimentStatus.STOPPED, ExperimentStatus.ERRORED):
            if not running:
                self._finish(self.status)
            return
        if self.searcher_done and not live:
            self._finish(ExperimentStatus.COMPLETED)
        elif not self.searcher_done and not running and not self.queue:
            # Nothing runs and nothing will: the searcher is waiting on trials that cannot
            # report. That is a searcher bug; fail loudly instead of hanging forever.
            self.error = "the searcher stopped issuing work before finishing (searcher bug)"
            log.error("experiment %s: %s", self.id, self.error)
            self._finish(ExperimentStatus.ERRORED)

    async def _fail(self, error: str) -> None:
        """End the experiment as ERRORED: stop what runs, keep what was recorded."""
        self.error = error
        self.status = ExperimentStatus.ERRORED
        self.searcher_done = True
        for tr in list(self.queue):
            self._dequeue(tr)
        for tr in self.trials.values():
            if tr.slots:
                tr.request = "kill"
                if tr.group is not None:
                    tr.group.request_stop(pause=False)
            elif tr.status not in TERMINAL:
                self._end_trial(tr, TrialStatus.STOPPED)
        self._check_finished()
        self._on_change()

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
        self.finished.set()

    # ------------------------------------------------------------------ reports
    async def on_reports(self, trial_id: int, reports: list[Report]) -> None:
        tr = self.by_global.get(trial_id)
        if tr is None:
            log.warning("reports for unknown trial %s dropped", trial_id)
            return
        metric = self.config.searcher.metric
        smaller = self.config.searcher.smaller_is_better
        events: list[Event] = []
        at_target: set[int] = set()
        for rep in reports:
            if rep.kind == "metrics":
                tr.last_step = max(tr.last_step, rep.step)
                self.tracker.log_metrics(tr.trial_id, rep.step, rep.metrics)
                value = rep.metrics.get(metric)
                if value is not None:
                    tr.metric_at[rep.step] = float(value)
                    self._label_checkpoint(tr, rep.step, float(value))
                    if not math.isnan(value):
                        self._update_best(tr, float(value), rep.step, smaller)
                # Results of a trial that is winding down are not the searcher's business.
                if tr.request is None and tr.status == TrialStatus.RUNNING:
                    events.append(ResultEvent(tr.searcher_id, rep.step, dict(rep.metrics)))
                    if value is not None and rep.time >= tr.until:
                        at_target.add(tr.searcher_id)
            elif rep.kind == "checkpoint" and rep.checkpoint_uri:
                tr.latest_checkpoint = rep.checkpoint_uri
                value = rep.metrics.get(metric, tr.metric_at.get(rep.step))
                self.journal.record_checkpoint(
                    tr.trial_id, uri=rep.checkpoint_uri, step=rep.step, metric=value
                )
                self.tracker.log_checkpoint(tr.trial_id, rep.checkpoint_uri, rep.step)
                self._gc_checkpoints(tr)
            elif rep.kind == "event":
                log.info("trial %s: %s", tr.trial_id, rep.message)
        self.journal.update_trial(tr.trial_id, last_step=tr.last_step)
        async with self._lock:
            await self._feed(events, at_target)

    def _update_best(self, tr: TrialRun, value: float, step: int, smaller: bool) -> None:
        score = rank_value(value, smaller_is_better=smaller)
        if tr.best is None or score < rank_value(tr.best, smaller_is_better=smaller):
            tr.best, tr.best_step = value, step
            self.journal.update_trial(tr.trial_id, best_metric=value, best_step=step)
        best = self.best_trial
        if (
            best is None
            or best.best is None
            or score < rank_value(best.best, smaller_is_better=smaller)
        ):
            self.best_trial = tr
            self.journal.update_experiment(self.id, best_trial_id=tr.trial_id, best_metric=value)

    def _label_checkpoint(self, tr: TrialRun, step: int, value: float) -> None:
        """A checkpoint saved just before the report of its step gets that step's metric
        (the keep=best policy ranks checkpoints by it)."""
        uri = tr.latest_checkpoint
        if uri is None:
            return
        for ckpt in self.journal.list_checkpoints(tr.trial_id)[-1:]:
            if ckpt.uri == uri and ckpt.step == step and ckpt.metric is None:
                self.journal.record_checkpoint(tr.trial_id, uri=uri, step=step, metric=value)
                self._gc_checkpoints(tr)

    def _gc_checkpoints(self, tr: TrialRun) -> None:
        """Apply the keep policy: latest N, best N (by the metric at checkpoint time), or all.

        The trial's latest checkpoint is always kept: it is what a resume starts from."""
        policy = self.config.checkpoint
        if policy.keep == "all":
            return
        live = self.journal.list_checkpoints(tr.trial_id)
        if len(live) <= policy.keep_count:
            return
        smaller = self.config.searcher.smaller_is_better
        if policy.keep == "best":
            ordered = sorted(
                live, key=lambda c: (rank_value(c.metric, smaller_is_better=smaller), -c.step)
            )
        else:
            ordered = sorted(live, key=lambda c: -c.step)
        keep = {c.uri for c in ordered[: policy.keep_count]}
        keep.add(tr.latest_checkpoint or "")
        # Donors of pending clones must keep the checkpoint the clone will start from.
        keep |= {t.latest_checkpoint or "" for t in self.trials.values() if not t.started_once}
        for ckpt in live:
            if ckpt.uri not in keep:
                try:
                    self.storage.delete_checkpoint(ckpt.uri)
                    self.journal.mark_checkpoint_deleted(ckpt.uri)
                except Exception:
                    log.exception("could not delete checkpoint %s", ckpt.uri)

    # ------------------------------------------------------------------ control
    async def kill(self) -> None:
        """Stop every trial now (user request)."""
        async with self._lock:
            self.status = ExperimentStatus.STOPPED
            self.searcher_done = True
            for tr in list(self.queue):
                self._dequeue(tr)
            for tr in self.trials.values():
                if tr.slots:
                    tr.request = "kill"
                    if tr.group is not None:
                        tr.group.request_stop(pause=False)
                elif tr.status not in TERMINAL:
                    self._end_trial(tr, TrialStatus.KILLED)
            self._check_finished()
            self._on_change()

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for tr in self.trials.values():
            key = "QUEUED" if tr.queued else tr.status.value
            counts[key] = counts.get(key, 0) + 1
        best = self.best_trial
        return {
            "id": self.id,
            "name": self.config.name,
            "status": self.status.value,
            "progress": self.progress,
            "counts": counts,
            "trials": len(self.trials),
            "best_trial": best.trial_id if best else None,
            "best_metric": best.best if best else None,
            "best_hparams": best.hparams if best else None,
            "best_checkpoint": best.latest_checkpoint if best else None,
            "metric": self.config.searcher.metric,
            "elapsed": (self.ended_at or time.time()) - self.started_at,
            "error": self.error,
            "done": self.finished.is_set(),
        }


@dataclass(frozen=True)
class _FailedOutcome:
    error: str
    status: str = "errored"
