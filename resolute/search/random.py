"""Random search (``max_trials`` points drawn from the prior) and single-trial search."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from resolute.search.independent import IndependentSearcher
from resolute.search.space import HParams, Space, sample


class RandomSearcher(IndependentSearcher):
    """``max_trials`` trials, each with hyperparameters sampled when it is created."""

    kind = "random"

    def __init__(
        self,
        *,
        space: Space,
        metric: str,
        smaller_is_better: bool,
        max_trials: int,
        max_concurrent_trials: int | None,
        max_time: float,
        time_metric: str | None,
        rng: np.random.Generator,
    ) -> None:
        if max_trials is None:
            raise ValueError("random search needs max_trials: set how many trials to sample")
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

    def _total(self) -> int:
        return self.max_trials

    def _next_hparams(self, index: int) -> HParams:
        return sample(self.space, self._rng)

    def _snapshot(self) -> dict[str, Any]:
        return {}

    def _restore(self, state: Mapping[str, Any]) -> None:
        pass


class SingleSearcher(RandomSearcher):
    """One trial trained to ``max_time`` (its hyperparameters sampled, usually all const)."""

    kind = "single"

    def __init__(
        self,
        *,
        space: Space,
        metric: str,
        smaller_is_better: bool,
        max_time: float,
        time_metric: str | None,
        rng: np.random.Generator,
        max_trials: int | None = 1,
        max_concurrent_trials: int | None = None,
    ) -> None:
        if max_trials not in (None, 1):
            raise ValueError(
                f"single search runs exactly one trial, but max_trials is {max_trials}; "
                "remove max_trials or use random search"
            )
        super().__init__(
            space=space,
            metric=metric,
            smaller_is_better=smaller_is_better,
            max_trials=1,
            max_concurrent_trials=max_concurrent_trials,
            max_time=max_time,
            time_metric=time_metric,
            rng=rng,
        )
