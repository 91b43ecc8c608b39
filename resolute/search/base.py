"""The searcher protocol: events in, a list of Actions out.

A searcher is a pure state machine. It never touches Ray, files, the wall clock or the
global RNG; randomness comes from an injected ``numpy.random.Generator``. The runtime
(``runtime/searcher_actor.py``) forwards events and carries out the actions.

Time. Trials train in *time units*: the value of the experiment's ``time_metric`` in a
report, or the report's ``step`` when no time metric is configured. ``Continue(t, until)``
asks trial ``t`` to train until its time reaches ``until`` and then report the searcher
metric.

Runtime semantics of the actions (the contract every searcher relies on):

- ``Create(trial_id, hparams, seed, clone_from, until)``: start a new trial. With
  ``clone_from`` it starts from that trial's latest checkpoint (PBT exploit). It trains
  until ``until`` time units.
- ``Continue(trial_id, until)``: the trial trains until ``until``. Sent to a trial that is
  waiting at its previous target, it lets it go on; sent to a paused trial, it resumes it
  from its latest checkpoint.
- ``Pause(trial_id)``: the trial saves a checkpoint, exits, and gives its slots back. Only a
  later ``Continue`` brings it back.
- ``Stop(trial_id, reason)``: the trial ends for good (``FINISHED`` when it reached the end of
  its training, ``EARLY_STOPPED`` when the searcher cut it short).
- ``Shutdown()``: the search is over; issued exactly once, after every trial is closed.

A trial that reaches its target (a report with the searcher metric at time >= ``until``)
and gets no action in reply *waits*, keeping its slots, until the searcher decides. A trial
counts against ``max_concurrent_trials`` from ``Create``/``Continue`` until it is paused,
stopped, or exits.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from resolute.search.space import HParams


class ExitReason(str, enum.Enum):
    """Why a trial ended without the searcher asking it to (see ``on_trial_exited``)."""

    COMPLETED = "COMPLETED"  # the user's function returned before its target
    ERRORED = "ERRORED"  # the user's function raised, restarts exhausted
    KILLED = "KILLED"  # a user killed the trial


class StopReason(str, enum.Enum):
    FINISHED = "FINISHED"  # trained for its full length
    EARLY_STOPPED = "EARLY_STOPPED"  # cut short by the searcher


@dataclass(frozen=True)
class Create:
    trial_id: int
    hparams: HParams
    seed: int
    until: float
    clone_from: int | None = None


@dataclass(frozen=True)
class Continue:
    trial_id: int
    until: float


@dataclass(frozen=True)
class Pause:
    trial_id: int


@dataclass(frozen=True)
class Stop:
    trial_id: int
    reason: StopReason = StopReason.EARLY_STOPPED


@dataclass(frozen=True)
class Shutdown:
    pass


Action = Create | Continue | Pause | Stop | Shutdown


@runtime_checkable
class Searcher(Protocol):
    """What every searcher implements. All methods are deterministic given the seed."""

    def initial(self) -> list[Action]:
        """Called once when the experiment starts: the first trials to create."""
        ...

    def on_result(self, trial_id: int, step: int, metrics: dict[str, float]) -> list[Action]:
        """Called for every report of a running trial, in order."""
        ...

    def on_trial_exited(self, trial_id: int, reason: ExitReason) -> list[Action]:
        """Called when a trial ends without a Stop or Pause from the searcher."""
        ...

    def progress(self) -> float:
        """Fraction of the search done, in [0, 1]."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """The whole searcher state as JSON-serialisable plain data."""
        ...

    def restore(self, state: dict[str, Any]) -> None:
        """Replace the state with one from ``snapshot()``; the continuation is identical."""
        ...


def rank_value(value: float | None, *, smaller_is_better: bool) -> float:
    """Map a metric to a 'smaller is better' score; missing or NaN ranks worst (+inf)."""
    if value is None or math.isnan(value):
        return math.inf
    return value if smaller_is_better else -value
