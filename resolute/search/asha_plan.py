"""Adaptive ASHA's arithmetic: rungs, brackets, per-bracket trials and concurrency, budget.

Matches Determined's ``adaptive_asha`` (master/pkg/searcher/adaptive_asha.go and
asha_stopping.go), so an experiment config carries over with the same brackets:

- effective rungs R = min(max_rungs, floor(log_d(max_time)) + 1, floor(log_d(max_trials)) + 1),
  at least 1. The logarithms are computed exactly at powers of d (log_4(64) is 3, not
  2.9999...), which Determined's float ``int(math.Log(x)/math.Log(d))`` does not guarantee;
- mode ``aggressive``: one bracket of R rungs; ``standard``: R, R-1, ..., (R-1)//2 + 1;
  ``conservative``: R, R-1, ..., 1. Most rungs (most early stopping) first;
- a bracket of r rungs gets int(w_r / sum(w) * max_trials) trials, at least 1, with
  w_r = d**(r-1) / r; what truncation leaves goes to the first bracket. If "at least 1"
  would take more than max_trials in all (only when d is close to 1), the least aggressive
  brackets are dropped until it fits: resolute never creates more than max_trials trials;
- max_concurrent_trials is split evenly across brackets, the remainder to the first ones,
  each bracket at least 1 and at most its trials. The total stays capped at
  max_concurrent_trials: with fewer slots than brackets, freed slots go to the first bracket
  that can use one. Unset (None), each bracket gets Determined's default:
  min(max(trials of the last bracket, int(d)), its own trials);
- rung i (0-based) of an r-rung bracket ends at max_time / d**(r-i-1) time units, floored
  to an integer (at least 1) when max_time is integral, as Determined does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

Mode = Literal["aggressive", "standard", "conservative"]
MODES: tuple[Mode, ...] = ("aggressive", "standard", "conservative")

_REL_EPS = 1e-9


def floor_log(x: float, base: float) -> int:
    """floor(log_base(x)) for x > 0, base > 1, exact at powers of ``base``."""
    k = math.floor(math.log(x) / math.log(base))
    while base ** (k + 1) <= x * (1 + _REL_EPS):
        k += 1
    while base**k > x * (1 + _REL_EPS):
        k -= 1
    return k


def _is_integral(x: float) -> bool:
    return float(x).is_integer()


def effective_rungs(*, max_time: float, max_trials: int, divisor: float, max_rungs: int) -> int:
    by_time = floor_log(max_time, divisor) + 1
    by_trials = floor_log(max_trials, divisor) + 1
    return max(1, min(max_rungs, by_time, by_trials))


def bracket_rungs(rungs: int, mode: Mode) -> list[int]:
    """Rungs of each bracket, most rungs first."""
    if mode == "aggressive":
        return [rungs]
    if mode == "standard":
        return list(range(rungs, (rungs - 1) // 2, -1))
    if mode == "conservative":
        return list(range(rungs, 0, -1))
    raise ValueError(f"unknown ASHA mode {mode!r}: use one of {', '.join(MODES)}")


def bracket_trials(max_trials: int, divisor: float, brackets: list[int]) -> list[int]:
    """Trials per bracket (see module doc); may return fewer brackets than given."""
    while True:
        weights = [divisor ** (r - 1) / r for r in brackets]
        total = sum(weights)
        trials = [max(int(w / total * max_trials), 1) for w in weights]
        if sum(trials) <= max_trials or len(brackets) == 1:
            trials[0] += max_trials - sum(trials)
            return trials
        brackets = brackets[:-1]


def bracket_concurrency(
    max_concurrent_trials: int | None, divisor: float, trials: list[int]
) -> list[int]:
    n = len(trials)
    if max_concurrent_trials is None:
        default = max(trials[-1], int(divisor))
        return [min(default, t) for t in trials]
    split = max(max_concurrent_trials, n)
    each = [split // n + (1 if i < split % n else 0) for i in range(n)]
    return [max(1, min(c, t)) for c, t in zip(each, trials, strict=True)]


def rung_ends(max_time: float, divisor: float, rungs: int) -> tuple[float, ...]:
    ends: list[float] = []
    for i in range(rungs):
        end = max_time / divisor ** (rungs - i - 1)
        if _is_integral(max_time):
            end = float(max(math.floor(end * (1 + _REL_EPS)), 1))
        ends.append(end)
    return tuple(ends)


def expected_rung_trials(trials: int, divisor: float, rungs: int) -> tuple[int, ...]:
    """Trials reaching each rung if each rung promotes max(floor(n/d), 1) of its n."""
    counts = [trials]
    for _ in range(rungs - 1):
        counts.append(max(int(counts[-1] / divisor), 1))
    return tuple(counts)


@dataclass(frozen=True)
class BracketPlan:
    rungs: int
    rung_ends: tuple[float, ...]
    trials: int
    concurrency: int
    rung_trials: tuple[int, ...]  # expected trials reaching each rung
    budget: float  # expected time units, every promoted trial resuming where it stopped

    def to_json(self) -> dict[str, Any]:
        return {
            "rungs": self.rungs,
            "rung_ends": list(self.rung_ends),
            "trials": self.trials,
            "concurrency": self.concurrency,
            "rung_trials": list(self.rung_trials),
            "budget": self.budget,
        }


@dataclass(frozen=True)
class AshaPlan:
    max_time: float
    max_trials: int
    divisor: float
    mode: Mode
    effective_rungs: int
    max_concurrent_trials: int | None  # the global cap; None = only the per-bracket ones
    brackets: tuple[BracketPlan, ...]

    @property
    def budget(self) -> float:
        """Expected time units of the whole search."""
        return sum(b.budget for b in self.brackets)

    @property
    def full_budget(self) -> float:
        """Time units if every trial trained to max_time (what random search would spend)."""
        return self.max_trials * self.max_time

    @property
    def ratio(self) -> float:
        return self.budget / self.full_budget

    def to_json(self) -> dict[str, Any]:
        return {
            "max_time": self.max_time,
            "max_trials": self.max_trials,
            "divisor": self.divisor,
            "mode": self.mode,
            "effective_rungs": self.effective_rungs,
            "max_concurrent_trials": self.max_concurrent_trials,
            "brackets": [b.to_json() for b in self.brackets],
            "budget": self.budget,
            "full_budget": self.full_budget,
            "ratio": self.ratio,
        }


def check_asha(*, max_trials: int | None, divisor: float, max_rungs: int, mode: str) -> int:
    """Raise ValueError for settings adaptive ASHA cannot run with; return max_trials."""
    if max_trials is None:
        raise ValueError("ASHA needs max_trials: set how many trials to start in all")
    if not divisor > 1:
        raise ValueError(f"ASHA divisor must be greater than 1 (4 is usual), got {divisor}")
    if max_rungs < 1:
        raise ValueError(f"ASHA max_rungs must be at least 1, got {max_rungs}")
    if mode not in MODES:
        raise ValueError(f"unknown ASHA mode {mode!r}: use one of {', '.join(MODES)}")
    return max_trials


def asha_plan(
    *,
    max_time: float,
    max_trials: int,
    divisor: float,
    max_rungs: int,
    mode: Mode,
    max_concurrent_trials: int | None,
) -> AshaPlan:
    """The brackets adaptive ASHA runs for these settings (see the module doc)."""
    check_asha(max_trials=max_trials, divisor=divisor, max_rungs=max_rungs, mode=mode)
    rungs = effective_rungs(
        max_time=max_time, max_trials=max_trials, divisor=divisor, max_rungs=max_rungs
    )
    trials = bracket_trials(max_trials, divisor, bracket_rungs(rungs, mode))
    brackets_rungs = bracket_rungs(rungs, mode)[: len(trials)]
    concurrency = bracket_concurrency(max_concurrent_trials, divisor, trials)
    brackets = []
    for r, n, c in zip(brackets_rungs, trials, concurrency, strict=True):
        ends = rung_ends(max_time, divisor, r)
        reach = expected_rung_trials(n, divisor, r)
        budget = sum(
            count * (end - (ends[i - 1] if i else 0.0))
            for i, (count, end) in enumerate(zip(reach, ends, strict=True))
        )
        brackets.append(
            BracketPlan(
                rungs=r, rung_ends=ends, trials=n, concurrency=c, rung_trials=reach, budget=budget
            )
        )
    return AshaPlan(
        max_time=float(max_time),
        max_trials=max_trials,
        divisor=float(divisor),
        mode=mode,
        effective_rungs=rungs,
        max_concurrent_trials=max_concurrent_trials,
        brackets=tuple(brackets),
    )
