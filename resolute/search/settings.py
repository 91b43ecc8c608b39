"""Typed searcher settings (built by the config layer from the YAML) and the factory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from resolute.search.asha import AshaSearcher, Promotion
from resolute.search.asha_plan import Mode
from resolute.search.base import Searcher
from resolute.search.grid import GridSearcher
from resolute.search.pbt import PbtSearcher
from resolute.search.random import RandomSearcher, SingleSearcher
from resolute.search.space import Space

SearcherName = Literal["single", "random", "grid", "asha", "pbt"]
SEARCHER_NAMES: tuple[SearcherName, ...] = ("single", "random", "grid", "asha", "pbt")


@dataclass(frozen=True, kw_only=True)
class SearcherSettings:
    """Every searcher setting; each searcher reads the ones it uses.

    ``max_time`` and rung/generation lengths are in time units: values of ``time_metric``
    when it is set, report steps otherwise. ``max_trials=None`` is only valid for grid
    (every point) and single; ``max_concurrent_trials=None`` means no limit (ASHA then
    applies Determined's per-bracket default, see ``asha_plan.py``).
    """

    name: SearcherName
    metric: str
    smaller_is_better: bool = True
    max_trials: int | None = None
    max_concurrent_trials: int | None = None
    max_time: float
    time_metric: str | None = None
    # asha
    divisor: float = 4.0
    max_rungs: int = 5
    mode: Mode = "standard"
    promotion: Promotion = "stop"
    # pbt
    population_size: int | None = None
    perturb_every: float | None = None
    truncate_fraction: float = 0.2
    resample_probability: float = 0.25
    perturb_factors: tuple[float, ...] = (0.8, 1.2)


def _required(value: int | float | None, what: str) -> int | float:
    if value is None:
        raise ValueError(f"searcher setting {what} is required")
    return value


def make_searcher(settings: SearcherSettings, space: Space, seed: int) -> Searcher:
    """A fresh searcher for ``settings`` whose every random draw comes from ``seed``.

    Raises ValueError, saying which setting to change, for settings it cannot run with.
    """
    s = settings
    common: dict[str, Any] = {
        "space": space,
        "metric": s.metric,
        "smaller_is_better": s.smaller_is_better,
        "max_time": s.max_time,
        "time_metric": s.time_metric,
        "rng": np.random.default_rng(seed),
        "max_concurrent_trials": s.max_concurrent_trials,
    }
    if s.name == "single":
        return SingleSearcher(**common, max_trials=s.max_trials)
    if s.name == "grid":
        return GridSearcher(**common, max_trials=s.max_trials)
    if s.name == "pbt":
        return PbtSearcher(
            **common,
            max_trials=s.max_trials,
            population_size=int(_required(s.population_size, "population_size (PBT)")),
            perturb_every=float(_required(s.perturb_every, "perturb_every (PBT)")),
            truncate_fraction=s.truncate_fraction,
            resample_probability=s.resample_probability,
            perturb_factors=s.perturb_factors,
        )
    max_trials = int(_required(s.max_trials, f"max_trials (how many trials {s.name} starts)"))
    if s.name == "random":
        return RandomSearcher(**common, max_trials=max_trials)
    if s.name == "asha":
        return AshaSearcher(
            **common,
            max_trials=max_trials,
            divisor=s.divisor,
            max_rungs=s.max_rungs,
            mode=s.mode,
            promotion=s.promotion,
        )
    raise ValueError(f"unknown searcher {s.name!r}: use one of {', '.join(SEARCHER_NAMES)}")
