"""Drive any searcher with a fake clock, N slots and synthetic learning curves.

The simulation carries out the runtime semantics of ``base.py`` exactly: a created or
continued trial queues for a slot (first come, first served) and then trains, reporting
every ``report_every`` time units and when it reaches its target; a trial at its target
*waits* on its slot until the searcher replies; ``Pause`` frees the slot and ``Continue``
resumes from where it paused; a clone starts from its donor's time (every report is a
checkpoint). One time unit costs ``seconds_per_unit`` seconds of fake clock.

It checks the protocol as it goes and raises ``SearcherError`` on any violation: an
action for an unknown or already-closed trial, a duplicate ``Create`` id, more than
``max_trials`` creates, more active trials than ``max_concurrent_trials`` (counted as in
``base.py``), anything after ``Shutdown``, a ``Shutdown`` with trials still open, a
``Continue`` that does not go beyond the trial's time, progress outside [0, 1] or going
backwards or below 1.0 at Shutdown, and a search that stalls (nothing left to happen and
no ``Shutdown``).

The searcher is only reached through ``searcher``, which the caller may swap between
steps (e.g. for one restored from a snapshot).
"""

from __future__ import annotations

import enum
import heapq
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from resolute.errors import SearcherError
from resolute.search.base import (
    Action,
    Continue,
    Create,
    ExitReason,
    Pause,
    Searcher,
    Shutdown,
    Stop,
    rank_value,
)
from resolute.search.space import HParams

Curve = Callable[[HParams, float], float]
"""metric = curve(hparams, time): the synthetic learning curve."""

_EPS = 1e-9


class SimStatus(str, enum.Enum):
    QUEUED = "QUEUED"  # active, waiting for a free slot
    RUNNING = "RUNNING"
    WAITING = "WAITING"  # at its target, on its slot
    PAUSED = "PAUSED"
    CLOSED = "CLOSED"


_ACTIVE = frozenset({SimStatus.QUEUED, SimStatus.RUNNING, SimStatus.WAITING})


@dataclass
class SimTrial:
    trial_id: int
    hparams: HParams
    clone_from: int | None
    start_time: float
    until: float
    time: float
    status: SimStatus = SimStatus.QUEUED
    metric: float | None = None  # last reported value
    reports: int = 0
    end: str | None = None  # the Stop reason or exit reason that closed it
    epoch: int = 0  # bumps whenever its scheduled event becomes stale


@dataclass(frozen=True)
class SimulationResult:
    actions: tuple[tuple[float, Action], ...]  # (fake clock, action) in issue order
    trials: Mapping[int, SimTrial]
    units_trained: float  # time units trained by all trials together
    makespan: float  # fake clock seconds until Shutdown
    max_active: int
    events: int
    best_trial: int | None
    best_metric: float | None

    def creates(self) -> int:
        return sum(1 for _, a in self.actions if isinstance(a, Create))


@dataclass
class Simulation:
    """A step-by-step simulation; ``simulate()`` runs one to the end."""

    searcher: Searcher
    metric: str
    curve: Curve
    slots: int
    smaller_is_better: bool = True
    time_metric: str | None = None
    max_trials: int | None = None
    max_concurrent_trials: int | None = None
    report_every: float = 1.0
    seconds_per_unit: float = 1.0
    exits: Mapping[int, tuple[float, ExitReason]] = field(default_factory=dict)
    max_events: int = 100_000

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError("a simulation needs at least one slot")
        if not self.report_every > 0:
            raise ValueError("report_every must be positive")
        self.clock = 0.0
        self.events = 0  # searcher calls so far
        self.trials: dict[int, SimTrial] = {}
        self.log: list[tuple[float, Action]] = []
        self.shut_down = False
        self.max_active = 0
        self._creates = 0
        self._progress = 0.0
        self._heap: list[tuple[float, int, int, int]] = []  # (clock, seq, trial, epoch)
        self._seq = 0
        self._slots_used = 0
        self._fifo: list[int] = []
        self._started = False

    # -- driving ---------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            raise SearcherError("simulation already started")
        self._started = True
        self._apply(self.searcher.initial())

    def step(self) -> bool:
        """Process the next event; return False once the search has shut down."""
        if not self._started:
            self.start()
            return not self.shut_down
        if self.shut_down:
            return False
        while self._heap:
            when, _, trial_id, epoch = heapq.heappop(self._heap)
            trial = self.trials[trial_id]
            if epoch != trial.epoch or trial.status is not SimStatus.RUNNING:
                continue
            self.clock = when
            self._advance(trial)
            return not self.shut_down
        raise SearcherError(
            "the search stalled: no trial is training and the searcher has not shut down "
            f"({self._describe()})"
        )

    def run(self) -> SimulationResult:
        while self.step():
            pass
        return self.result()

    def result(self) -> SimulationResult:
        best: tuple[float, int] | None = None
        for t in self.trials.values():
            if t.metric is not None:
                key = (rank_value(t.metric, smaller_is_better=self.smaller_is_better), t.trial_id)
                best = key if best is None or key < best else best
        return SimulationResult(
            actions=tuple(self.log),
            trials=dict(self.trials),
            units_trained=sum(t.time - t.start_time for t in self.trials.values()),
            makespan=self.clock,
            max_active=self.max_active,
            events=self.events,
            best_trial=None if best is None else best[1],
            best_metric=None if best is None else self.trials[best[1]].metric,
        )

    # -- one trial's training --------------------------------------------------------

    def _target(self, trial: SimTrial) -> float:
        # Without a time metric, time is the integer step.
        return math.ceil(trial.until - _EPS) if self.time_metric is None else trial.until

    def _next_report(self, trial: SimTrial) -> float:
        k = math.floor(trial.time / self.report_every + _EPS) + 1
        nxt = min(k * self.report_every, self._target(trial))
        if self.time_metric is None:
            nxt = max(math.ceil(nxt - _EPS), math.floor(trial.time + _EPS) + 1)
        exit_at = self.exits.get(trial.trial_id)
        if exit_at is not None and trial.time < exit_at[0] <= nxt:
            return exit_at[0]
        return nxt

    def _schedule(self, trial: SimTrial) -> None:
        trial.epoch += 1
        delay = (self._next_report(trial) - trial.time) * self.seconds_per_unit
        self._seq += 1
        heapq.heappush(self._heap, (self.clock + delay, self._seq, trial.trial_id, trial.epoch))

    def _advance(self, trial: SimTrial) -> None:
        now = self._next_report(trial)
        trial.time = now
        exit_at = self.exits.get(trial.trial_id)
        if exit_at is not None and abs(now - exit_at[0]) < _EPS:
            self._close(trial, exit_at[1].value)
            self._apply(self.searcher.on_trial_exited(trial.trial_id, exit_at[1]))
            return
        value = float(self.curve(trial.hparams, now))
        trial.metric = value
        trial.reports += 1
        metrics = {self.metric: value}
        if self.time_metric is not None:
            metrics[self.time_metric] = now
            step = trial.reports
        else:
            step = round(now)
        if now >= self._target(trial) - _EPS:
            trial.status = SimStatus.WAITING
        else:
            self._schedule(trial)
        self._apply(self.searcher.on_result(trial.trial_id, step, metrics))

    # -- slots -----------------------------------------------------------------------

    def _close(self, trial: SimTrial, end: str) -> None:
        self._release(trial)
        trial.status = SimStatus.CLOSED
        trial.end = end

    def _release(self, trial: SimTrial) -> None:
        if trial.status in (SimStatus.RUNNING, SimStatus.WAITING):
            self._slots_used -= 1
        if trial.status is SimStatus.QUEUED:
            self._fifo.remove(trial.trial_id)
        trial.epoch += 1

    def _enqueue(self, trial: SimTrial) -> None:
        trial.status = SimStatus.QUEUED
        self._fifo.append(trial.trial_id)

    def _assign_slots(self) -> None:
        while self._fifo and self._slots_used < self.slots:
            trial = self.trials[self._fifo.pop(0)]
            trial.status = SimStatus.RUNNING
            self._slots_used += 1
            self._schedule(trial)

    # -- actions ---------------------------------------------------------------------

    def _violation(self, message: str) -> SearcherError:
        return SearcherError(f"protocol violation at event {self.events}: {message}")

    def _known(self, trial_id: int, action: Action) -> SimTrial:
        trial = self.trials.get(trial_id)
        if trial is None:
            raise self._violation(f"{action} names unknown trial {trial_id}")
        if trial.status is SimStatus.CLOSED:
            raise self._violation(f"{action} names closed trial {trial_id}")
        return trial

    def _apply(self, actions: list[Action]) -> None:
        self.events += 1
        if self.events > self.max_events:
            raise SearcherError(f"simulation passed max_events={self.max_events}")
        for action in actions:
            self.log.append((self.clock, action))
            if self.shut_down:
                raise self._violation(f"{action} after Shutdown")
            self._apply_one(action)
        active = sum(1 for t in self.trials.values() if t.status in _ACTIVE)
        self.max_active = max(self.max_active, active)
        if self.max_concurrent_trials is not None and active > self.max_concurrent_trials:
            raise self._violation(
                f"{active} active trials, max_concurrent_trials is {self.max_concurrent_trials}"
            )
        self._check_progress()
        self._assign_slots()

    def _apply_one(self, action: Action) -> None:
        if isinstance(action, Create):
            self._create(action)
        elif isinstance(action, Continue):
            trial = self._known(action.trial_id, action)
            if action.until <= trial.time + _EPS:
                raise self._violation(f"{action} does not go beyond time {trial.time}")
            trial.until = action.until
            if trial.status is SimStatus.PAUSED:
                self._enqueue(trial)
            elif trial.status is SimStatus.WAITING:
                trial.status = SimStatus.RUNNING
                self._schedule(trial)
            elif trial.status is SimStatus.RUNNING:
                self._schedule(trial)
        elif isinstance(action, Pause):
            trial = self._known(action.trial_id, action)
            if trial.status is SimStatus.PAUSED:
                raise self._violation(f"{action} for a trial that is already paused")
            self._release(trial)
            trial.status = SimStatus.PAUSED
        elif isinstance(action, Stop):
            self._close(self._known(action.trial_id, action), action.reason.value)
        elif isinstance(action, Shutdown):
            open_ = [t.trial_id for t in self.trials.values() if t.status is not SimStatus.CLOSED]
            if open_:
                raise self._violation(f"Shutdown while trials {open_} are still open")
            self.shut_down = True
        else:  # pragma: no cover - the Action union is closed
            raise self._violation(f"unknown action {action!r}")

    def _create(self, action: Create) -> None:
        if action.trial_id in self.trials:
            raise self._violation(f"Create reuses trial id {action.trial_id}")
        self._creates += 1
        if self.max_trials is not None and self._creates > self.max_trials:
            raise self._violation(f"Create #{self._creates} exceeds max_trials {self.max_trials}")
        start = 0.0
        if action.clone_from is not None:
            donor = self.trials.get(action.clone_from)
            if donor is None:
                raise self._violation(f"{action} clones unknown trial {action.clone_from}")
            start = donor.time
        if action.until <= start + _EPS:
            raise self._violation(f"{action} has a target not beyond its start time {start}")
        trial = SimTrial(
            trial_id=action.trial_id,
            hparams=action.hparams,
            clone_from=action.clone_from,
            start_time=start,
            until=action.until,
            time=start,
        )
        self.trials[trial.trial_id] = trial
        self._enqueue(trial)

    def _check_progress(self) -> None:
        progress = self.searcher.progress()
        if not 0.0 <= progress <= 1.0:
            raise self._violation(f"progress {progress} outside [0, 1]")
        if progress < self._progress - 1e-12:
            raise self._violation(f"progress went back from {self._progress} to {progress}")
        if self.shut_down and progress != 1.0:
            raise self._violation(f"progress is {progress} at Shutdown, not 1.0")
        self._progress = progress

    def _describe(self) -> str:
        counts: dict[str, int] = {}
        for t in self.trials.values():
            counts[t.status.value] = counts.get(t.status.value, 0) + 1
        return ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) or "no trials"


def simulate(
    searcher: Searcher,
    *,
    metric: str,
    curve: Curve,
    slots: int,
    smaller_is_better: bool = True,
    time_metric: str | None = None,
    max_trials: int | None = None,
    max_concurrent_trials: int | None = None,
    report_every: float = 1.0,
    seconds_per_unit: float = 1.0,
    exits: Mapping[int, tuple[float, ExitReason]] | None = None,
    max_events: int = 100_000,
) -> SimulationResult:
    """Run ``searcher`` to Shutdown over synthetic curves (see the module doc)."""
    return Simulation(
        searcher=searcher,
        metric=metric,
        curve=curve,
        slots=slots,
        smaller_is_better=smaller_is_better,
        time_metric=time_metric,
        max_trials=max_trials,
        max_concurrent_trials=max_concurrent_trials,
        report_every=report_every,
        seconds_per_unit=seconds_per_unit,
        exits=exits or {},
        max_events=max_events,
    ).run()
