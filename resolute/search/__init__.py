"""Hyperparameter search: pure searchers (events in, actions out), plans and previews.

Nothing here touches Ray, files, clocks or the global RNG; ``runtime/searcher_actor.py``
wraps a searcher made by ``make_searcher``.
"""

from __future__ import annotations

from resolute.search.asha import AshaSearcher
from resolute.search.asha_plan import AshaPlan, BracketPlan, asha_plan
from resolute.search.base import (
    Action,
    Continue,
    Create,
    ExitReason,
    Pause,
    Searcher,
    Shutdown,
    Stop,
    StopReason,
)
from resolute.search.grid import GridSearcher
from resolute.search.pbt import LineageEntry, PbtPlan, PbtSearcher, pbt_plan
from resolute.search.random import RandomSearcher, SingleSearcher
from resolute.search.settings import SEARCHER_NAMES, SearcherSettings, make_searcher
from resolute.search.simulate import Simulation, SimulationResult, simulate
from resolute.search.space import (
    Categorical,
    Const,
    Double,
    HParams,
    Int,
    Log,
    Space,
    flatten,
    grid_points,
    perturb,
    sample,
)

__all__ = [
    "SEARCHER_NAMES",
    "Action",
    "AshaPlan",
    "AshaSearcher",
    "BracketPlan",
    "Categorical",
    "Const",
    "Continue",
    "Create",
    "Double",
    "ExitReason",
    "GridSearcher",
    "HParams",
    "Int",
    "LineageEntry",
    "Log",
    "Pause",
    "PbtPlan",
    "PbtSearcher",
    "RandomSearcher",
    "Searcher",
    "SearcherSettings",
    "Shutdown",
    "SimulationResult",
    "Simulation",
    "SingleSearcher",
    "Space",
    "Stop",
    "StopReason",
    "asha_plan",
    "flatten",
    "grid_points",
    "make_searcher",
    "pbt_plan",
    "perturb",
    "sample",
    "simulate",
]
