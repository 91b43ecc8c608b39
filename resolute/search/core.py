"""The event loop every searcher shares; each algorithm fills in the decisions.

``SearcherCore`` implements the ``Searcher`` protocol of ``base.py``: it parses reports
through the ``Ledger`` (ignoring those without the searcher metric, or that do not bring
a running trial to its target), hands the decisive events to the subclass, issues
``Shutdown`` exactly once when every trial is closed and the subclass has nothing left to
do, and snapshots the ledger, the generator state and the subclass state together.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np

from resolute.errors import SearcherError
from resolute.search.base import Action, ExitReason, rank_value
from resolute.search.ledger import Ledger, Reached, TrialStatus
from resolute.search.space import Space, check_space


def check_common(
    *,
    metric: str,
    max_trials: int | None,
    max_concurrent_trials: int | None,
    max_time: float,
    time_metric: str | None,
) -> None:
    """Raise ValueError, saying what to change, for settings no searcher can run with."""
    if not metric:
        raise ValueError("searcher metric is empty: name the metric your code reports")
    if max_trials is not None and max_trials < 1:
        raise ValueError(f"max_trials must be at least 1, got {max_trials}")
    if max_concurrent_trials is not None and max_concurrent_trials < 1:
        raise ValueError(
            f"max_concurrent_trials must be at least 1 (or unset for no limit), "
            f"got {max_concurrent_trials}"
        )
    if not (math.isfinite(max_time) and max_time > 0):
        raise ValueError(f"max_time must be a positive number of time units, got {max_time}")
    if time_metric is not None and not time_metric:
        raise ValueError("time_metric is empty: name a reported metric, or leave it unset")


class SearcherCore(ABC):
    """Base class of the searchers: protocol plumbing around subclass decisions."""

    kind: str = "core"

    def __init__(
        self,
        *,
        space: Space,
        metric: str,
        smaller_is_better: bool,
        max_trials: int | None,
        max_concurrent_trials: int | None,
        max_time: float,
        time_metric: str | None,
        rng: np.random.Generator,
    ) -> None:
        check_common(
            metric=metric,
            max_trials=max_trials,
            max_concurrent_trials=max_concurrent_trials,
            max_time=max_time,
            time_metric=time_metric,
        )
        check_space(space)
        self.space = space
        self.metric = metric
        self.smaller_is_better = smaller_is_better
        self.max_concurrent_trials = max_concurrent_trials
        self.max_time = float(max_time)
        self.time_metric = time_metric
        self._rng = rng
        self._ledger = Ledger()
        self._started = False

    # -- the Searcher protocol ---------------------------------------------------------

    def initial(self) -> list[Action]:
        if self._started:
            raise SearcherError("initial() was called twice; call it once per experiment")
        self._started = True
        return self._finish(self._start())

    def on_result(self, trial_id: int, step: int, metrics: dict[str, float]) -> list[Action]:
        self._require_started()
        reached = self._ledger.on_report(
            trial_id, step, metrics, metric=self.metric, time_metric=self.time_metric
        )
        if reached is None:
            return []
        return self._finish(self._on_reached(reached))

    def on_trial_exited(self, trial_id: int, reason: ExitReason) -> list[Action]:
        self._require_started()
        before = self._ledger.on_exit(trial_id)
        if before is None:
            return []
        return self._finish(self._on_exited(trial_id, before, reason))

    def progress(self) -> float:
        if self._ledger.shut_down:
            return 1.0
        return min(max(self._progress(), 0.0), 1.0)

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "started": self._started,
            "rng": self._rng.bit_generator.state,
            "ledger": self._ledger.snapshot(),
            "search": self._snapshot(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise SearcherError(
                f"cannot restore a {state.get('kind')!r} searcher snapshot into a {self.kind!r} "
                "searcher; restore with the searcher settings the experiment was created with"
            )
        self._started = bool(state["started"])
        self._rng.bit_generator.state = state["rng"]
        self._ledger.restore(state["ledger"])
        self._restore(state["search"])

    # -- helpers for subclasses --------------------------------------------------------

    def _rank(self, value: float) -> float:
        return rank_value(value, smaller_is_better=self.smaller_is_better)

    def _room(self) -> int:
        """How many more trials may become active under max_concurrent_trials."""
        if self.max_concurrent_trials is None:
            return 1 << 30
        return self.max_concurrent_trials - self._ledger.active()

    def _finish(self, actions: list[Action]) -> list[Action]:
        ledger = self._ledger
        if not ledger.shut_down and ledger.all_closed() and self._done():
            actions.append(ledger.shutdown())
        return actions

    def _require_started(self) -> None:
        if not self._started:
            raise SearcherError("an event arrived before initial(); call initial() first")

    # -- what each algorithm decides ---------------------------------------------------

    @abstractmethod
    def _start(self) -> list[Action]:
        """The first actions (called once)."""

    @abstractmethod
    def _on_reached(self, reached: Reached) -> list[Action]:
        """A trial reached its target and is WAITING; decide what happens to it."""

    @abstractmethod
    def _on_exited(self, trial_id: int, before: TrialStatus, reason: ExitReason) -> list[Action]:
        """A trial (in state ``before``) ended on its own and is now CLOSED."""

    @abstractmethod
    def _done(self) -> bool:
        """True when the algorithm will start nothing more (checked once all are closed)."""

    @abstractmethod
    def _progress(self) -> float:
        """Monotone estimate of the fraction done."""

    @abstractmethod
    def _snapshot(self) -> dict[str, Any]: ...

    @abstractmethod
    def _restore(self, state: Mapping[str, Any]) -> None: ...
