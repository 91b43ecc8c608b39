"""The searcher's view of its trials: lifecycle, targets, and the concurrency accounting.

Every searcher keeps one ``Ledger`` and issues its actions through it, so the bookkeeping
that ``base.py`` defines (what counts as active, what "reaching the target" means, which
events are protocol violations) lives in one place.

Trial lifecycle, as the searcher sees it:

- Create or Continue -> RUNNING (training towards ``until``);
- RUNNING -> WAITING on a report with the searcher metric at time >= ``until``;
- WAITING -> RUNNING (Continue), PAUSED (Pause) or CLOSED (Stop);
- PAUSED -> RUNNING (Continue) or CLOSED (Stop);
- any open state -> CLOSED when the trial exits on its own.

RUNNING and WAITING trials are *active*: they count against ``max_concurrent_trials``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from resolute.errors import SearcherError
from resolute.search.base import Continue, Create, Pause, Shutdown, Stop, StopReason
from resolute.search.space import HParams

_SEED_LIMIT = 2**31 - 1


class TrialStatus(str, enum.Enum):
    RUNNING = "RUNNING"  # training towards its target
    WAITING = "WAITING"  # reached its target; holds its slots until the searcher decides
    PAUSED = "PAUSED"  # checkpointed and off its slots until a Continue
    CLOSED = "CLOSED"  # stopped by the searcher, or exited on its own


ACTIVE = frozenset({TrialStatus.RUNNING, TrialStatus.WAITING})


@dataclass
class TrialRecord:
    trial_id: int
    hparams: HParams
    seed: int
    until: float
    status: TrialStatus
    group: int = 0  # which bracket (ASHA) the trial belongs to; 0 elsewhere
    time: float = 0.0  # the furthest time the trial has reported (clones start at the donor's)
    start_time: float = 0.0  # a clone's donor time at creation; 0 for a fresh trial
    clone_from: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "trial_id": self.trial_id,
            "hparams": self.hparams,
            "seed": self.seed,
            "until": self.until,
            "status": self.status.value,
            "group": self.group,
            "time": self.time,
            "start_time": self.start_time,
            "clone_from": self.clone_from,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrialRecord:
        return cls(
            trial_id=int(data["trial_id"]),
            hparams=dict(data["hparams"]),
            seed=int(data["seed"]),
            until=float(data["until"]),
            status=TrialStatus(data["status"]),
            group=int(data["group"]),
            time=float(data["time"]),
            start_time=float(data["start_time"]),
            clone_from=None if data["clone_from"] is None else int(data["clone_from"]),
        )


@dataclass(frozen=True)
class Reached:
    """A report that brought a running trial to its target: the trial is now WAITING."""

    trial_id: int
    time: float
    value: float


def encode_float(value: float) -> float | str:
    """JSON has no inf or NaN: keep them as strings so snapshots stay strict JSON."""
    return value if math.isfinite(value) else str(value)


def decode_float(value: float | str) -> float:
    return float(value)


class Ledger:
    """Every trial a searcher has created, keyed by id (ids count up from 1)."""

    def __init__(self) -> None:
        self._trials: dict[int, TrialRecord] = {}
        self._next_id = 1
        self._shut_down = False
        self._active_by_group: dict[int, int] = {}

    # -- queries ---------------------------------------------------------------------

    def __contains__(self, trial_id: int) -> bool:
        return trial_id in self._trials

    def get(self, trial_id: int) -> TrialRecord:
        try:
            return self._trials[trial_id]
        except KeyError:
            raise SearcherError(
                f"trial {trial_id} was never created by this searcher; the runtime must only "
                "forward events for trials the searcher created"
            ) from None

    def records(self) -> list[TrialRecord]:
        return list(self._trials.values())

    @property
    def created(self) -> int:
        return len(self._trials)

    @property
    def shut_down(self) -> bool:
        return self._shut_down

    def active(self, group: int | None = None) -> int:
        if group is None:
            return sum(self._active_by_group.values())
        return self._active_by_group.get(group, 0)

    def all_closed(self) -> bool:
        return all(t.status is TrialStatus.CLOSED for t in self._trials.values())

    def total_time(self) -> float:
        """Time units trained by all trials together (a clone counts from its donor's time)."""
        return sum(t.time - t.start_time for t in self._trials.values())

    # -- actions ---------------------------------------------------------------------

    def create(
        self,
        rng: np.random.Generator,
        hparams: HParams,
        *,
        until: float,
        group: int = 0,
        clone_from: int | None = None,
    ) -> Create:
        self._check_open()
        trial_id = self._next_id
        self._next_id += 1
        seed = int(rng.integers(0, _SEED_LIMIT))
        start = 0.0 if clone_from is None else self.get(clone_from).time
        self._trials[trial_id] = TrialRecord(
            trial_id=trial_id,
            hparams=hparams,
            seed=seed,
            until=until,
            status=TrialStatus.RUNNING,
            group=group,
            time=start,
            start_time=start,
            clone_from=clone_from,
        )
        self._count(group, +1)
        return Create(
            trial_id=trial_id, hparams=hparams, seed=seed, until=until, clone_from=clone_from
        )

    def continue_(self, trial_id: int, until: float) -> Continue:
        trial = self.get(trial_id)
        if trial.status is TrialStatus.CLOSED:
            raise SearcherError(f"internal: Continue for closed trial {trial_id}")
        if trial.status is TrialStatus.PAUSED:
            self._count(trial.group, +1)
        trial.status = TrialStatus.RUNNING
        trial.until = until
        return Continue(trial_id=trial_id, until=until)

    def pause(self, trial_id: int) -> Pause:
        trial = self.get(trial_id)
        if trial.status not in ACTIVE:
            raise SearcherError(f"internal: Pause for inactive trial {trial_id}")
        trial.status = TrialStatus.PAUSED
        self._count(trial.group, -1)
        return Pause(trial_id=trial_id)

    def stop(self, trial_id: int, reason: StopReason) -> Stop:
        trial = self.get(trial_id)
        if trial.status is TrialStatus.CLOSED:
            raise SearcherError(f"internal: Stop for closed trial {trial_id}")
        self._close(trial)
        return Stop(trial_id=trial_id, reason=reason)

    def shutdown(self) -> Shutdown:
        self._check_open()
        if not self.all_closed():
            raise SearcherError("internal: Shutdown while trials are still open")
        self._shut_down = True
        return Shutdown()

    # -- events ----------------------------------------------------------------------

    def on_report(
        self,
        trial_id: int,
        step: int,
        metrics: Mapping[str, float],
        *,
        metric: str,
        time_metric: str | None,
    ) -> Reached | None:
        """Record a report; return it when it brings a running trial to its target."""
        if self._shut_down:
            raise SearcherError(
                f"result for trial {trial_id} after Shutdown; the runtime must stop forwarding "
                "results once the searcher has shut down"
            )
        trial = self.get(trial_id)
        if time_metric is None:
            time = float(step)
        elif time_metric in metrics:
            time = float(metrics[time_metric])
        elif metric in metrics:
            raise SearcherError(
                f"trial {trial_id} reported {metric!r} without the time metric "
                f"{time_metric!r}; report {time_metric!r} in every report that carries "
                f"{metric!r}, or drop time_metric to count time in steps"
            )
        else:
            return None
        if not math.isfinite(time):
            raise SearcherError(
                f"trial {trial_id} reported time {time} ({time_metric or 'step'}); the time "
                "metric must be a finite, growing counter such as epochs or samples seen"
            )
        if trial.status is not TrialStatus.RUNNING:
            return None  # a late report from a trial that has already been decided on
        trial.time = max(trial.time, time)
        if metric not in metrics or time < trial.until:
            return None
        trial.status = TrialStatus.WAITING
        return Reached(trial_id=trial_id, time=time, value=float(metrics[metric]))

    def on_exit(self, trial_id: int) -> TrialStatus | None:
        """Close a trial that ended on its own; return its status before, None if closed."""
        trial = self.get(trial_id)
        if trial.status is TrialStatus.CLOSED:
            return None  # it was stopped and exited before the Stop reached it
        before = trial.status
        self._close(trial)
        return before

    # -- state -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "trials": [t.to_json() for t in self._trials.values()],
            "next_id": self._next_id,
            "shut_down": self._shut_down,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        trials = [TrialRecord.from_json(t) for t in state["trials"]]
        self._trials = {t.trial_id: t for t in trials}
        self._next_id = int(state["next_id"])
        self._shut_down = bool(state["shut_down"])
        self._active_by_group = {}
        for t in trials:
            if t.status in ACTIVE:
                self._count(t.group, +1)

    # -- internals -------------------------------------------------------------------

    def _close(self, trial: TrialRecord) -> None:
        if trial.status in ACTIVE:
            self._count(trial.group, -1)
        trial.status = TrialStatus.CLOSED

    def _count(self, group: int, delta: int) -> None:
        self._active_by_group[group] = self._active_by_group.get(group, 0) + delta

    def _check_open(self) -> None:
        if self._shut_down:
            raise SearcherError("internal: action after Shutdown")
