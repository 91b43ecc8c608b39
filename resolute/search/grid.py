"""Grid search: one trial per point of ``space.grid_points``, each trained to max_time.

When ``max_trials`` is smaller than the grid, a uniformly random subset of ``max_trials``
points (drawn from the injected generator when the search starts) runs, in grid order: a
prefix of the grid would only vary the last parameters. ``max_trials=None`` runs them all.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np

from resolute.search.base import Action
from resolute.search.independent import IndependentSearcher
from resolute.search.space import HParams, Space, grid_points


class GridSearcher(IndependentSearcher):
    kind = "grid"

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
        super().__init__(
            space=space,
            metric=metric,
            smaller_is_better=smaller_is_better,
            max_trials=max_trials,
            max_concurrent_trials=max_concurrent_trials,
            max_time=max_time,
            time_metric=time_metric,
            rng=rng,
        )
        self.max_trials = max_trials
        self._points = grid_points(space)
        self._chosen: list[int] = []

    @property
    def points(self) -> list[HParams]:
        """Every point of the grid, whether or not max_trials lets it run."""
        return copy.deepcopy(self._points)

    def _start(self) -> list[Action]:
        everything = len(self._points)
        if self.max_trials is None or self.max_trials >= everything:
            self._chosen = list(range(everything))
        else:
            picked = self._rng.choice(everything, size=self.max_trials, replace=False)
            self._chosen = sorted(int(i) for i in picked)
        return super()._start()

    def _total(self) -> int:
        return len(self._chosen)

    def _next_hparams(self, index: int) -> HParams:
        return copy.deepcopy(self._points[self._chosen[index]])

    def _snapshot(self) -> dict[str, Any]:
        return {"chosen": list(self._chosen)}

    def _restore(self, state: Mapping[str, Any]) -> None:
        self._chosen = [int(i) for i in state["chosen"]]
