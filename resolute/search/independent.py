"""Searchers whose trials do not depend on each other's results: each trains to max_time.

Random, grid and single search differ only in where the next trial's hyperparameters come
from. Up to ``max_concurrent_trials`` trials run at once; each ``Stop(FINISHED)`` or exit
frees room for the next ``Create``; ``Shutdown`` follows the last trial's close.
"""

from __future__ import annotations

from abc import abstractmethod

from resolute.search.base import Action, ExitReason, StopReason
from resolute.search.core import SearcherCore
from resolute.search.ledger import Reached, TrialStatus
from resolute.search.space import HParams


class IndependentSearcher(SearcherCore):
    """Runs ``_total()`` trials, each to ``max_time``, ``max_concurrent_trials`` at a time."""

    @abstractmethod
    def _total(self) -> int:
        """How many trials the search runs in all."""

    @abstractmethod
    def _next_hparams(self, index: int) -> HParams:
        """Hyperparameters of the ``index``-th trial (0-based), called in creation order."""

    def _start(self) -> list[Action]:
        return self._fill()

    def _fill(self) -> list[Action]:
        actions: list[Action] = []
        while self._ledger.created < self._total() and self._room() > 0:
            hparams = self._next_hparams(self._ledger.created)
            actions.append(self._ledger.create(self._rng, hparams, until=self.max_time))
        return actions

    def _on_reached(self, reached: Reached) -> list[Action]:
        actions: list[Action] = [self._ledger.stop(reached.trial_id, StopReason.FINISHED)]
        return actions + self._fill()

    def _on_exited(self, trial_id: int, before: TrialStatus, reason: ExitReason) -> list[Action]:
        return self._fill()

    def _done(self) -> bool:
        return self._ledger.created >= self._total()

    def _progress(self) -> float:
        done = 0.0
        for trial in self._ledger.records():
            if trial.status is TrialStatus.CLOSED:
                done += 1.0
            else:
                done += min(trial.time / self.max_time, 1.0)
        return done / max(self._total(), 1)
