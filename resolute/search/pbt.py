"""Population-based training (Jaderberg et al. 2017), truncation selection.

Generations. Generation g (0-based) ends at min((g+1) * perturb_every, max_time); the last
ends at max_time. All ``population_size`` members' hyperparameters are sampled when the
search starts; members are created as ``max_concurrent_trials`` allows.

Within a generation. A member reaching the generation's end gets ``Pause`` when members of
this generation are still waiting for a slot (the slot goes to the next of them), and
otherwise no action: it waits, holding its slot. In the last generation it gets
``Stop(FINISHED)`` at once instead.

Between generations. When no member is still training, the generation is ranked (NaN ranks
worst; ties by trial id). With n = min(max(1, floor(truncate_fraction * N)), N // 2) for a
population of N >= 2 (n = 0 for a population of one), the bottom n, and every member that
exited on its own during the generation (ranked worst), are replaced, worst first: each by
``Create(clone_from=<a member drawn uniformly from the top n that are still alive>,
hparams=perturb(<that member's hparams>))``, which continues from the donor's checkpoint at
the generation's end, after a ``Stop(EARLY_STOPPED)`` of the replaced member if it is still
alive. Every other member gets ``Continue`` to the next generation's end. Clones beyond
``max_trials`` are not created: a bottom member that cannot be replaced simply continues,
and an exited member that cannot be replaced is dropped (the population shrinks).

Reports sparser than ``perturb_every`` can carry members past the next generation's end:
the next generation is then the first whose end lies beyond every live member's time (the
passed ends are skipped), and if a member already reached max_time, exploitation stops and
every member finishes (``Stop(FINISHED)`` at max_time, the others ``Continue`` to it).

Slots. Clones are created first, so that no donor trains past its checkpoint before its
clones exist: if there are fewer free slots than clones, the worst-ranked waiting members
get ``Pause`` to make room (they, then the members already paused, resume in rank order as
slots free up), and only the waiting members left keep their slots and continue at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from resolute.search.base import Action, ExitReason, StopReason
from resolute.search.core import SearcherCore
from resolute.search.ledger import Reached, TrialStatus, decode_float, encode_float
from resolute.search.space import HParams, Space, perturb, sample

_EPS = 1e-9


@dataclass(frozen=True)
class LineageEntry:
    """A clone: created from ``donor_id`` at ``donor_time`` to train in ``generation``."""

    trial_id: int
    donor_id: int
    generation: int  # 0-based generation the clone trains in (>= 1)
    donor_time: float
    hparams: HParams


@dataclass(frozen=True)
class PbtPlan:
    generation_ends: tuple[float, ...]
    population: int
    clones_per_generation: tuple[int, ...]  # clones created at the end of each generation
    trials: int  # created in all, if no member exits on its own
    budget: float  # time units: every member of the population trains to max_time

    def to_json(self) -> dict[str, Any]:
        return {
            "generation_ends": list(self.generation_ends),
            "population": self.population,
            "clones_per_generation": list(self.clones_per_generation),
            "trials": self.trials,
            "budget": self.budget,
        }


def generation_ends(max_time: float, perturb_every: float) -> tuple[float, ...]:
    count = max(1, math.ceil(max_time / perturb_every - _EPS))
    return tuple(min((g + 1) * perturb_every, max_time) for g in range(count - 1)) + (
        float(max_time),
    )


def truncate_count(population: int, truncate_fraction: float) -> int:
    if population < 2:
        return 0
    return min(max(1, math.floor(truncate_fraction * population + _EPS)), population // 2)


def check_pbt(
    *,
    max_trials: int | None,
    population_size: int,
    perturb_every: float,
    truncate_fraction: float,
) -> None:
    if population_size < 1:
        raise ValueError(f"PBT population_size must be at least 1, got {population_size}")
    if max_trials is not None and max_trials < population_size:
        raise ValueError(
            f"max_trials ({max_trials}) is smaller than population_size ({population_size}): "
            "raise max_trials (it counts clones too) or shrink the population"
        )
    if not (math.isfinite(perturb_every) and perturb_every > 0):
        raise ValueError(f"PBT perturb_every must be a positive time, got {perturb_every}")
    if not 0 < truncate_fraction <= 0.5:
        raise ValueError(f"PBT truncate_fraction must be in (0, 0.5], got {truncate_fraction}")


def pbt_plan(
    *,
    max_time: float,
    perturb_every: float,
    population_size: int,
    truncate_fraction: float,
    max_trials: int | None,
) -> PbtPlan:
    check_pbt(
        max_trials=max_trials,
        population_size=population_size,
        perturb_every=perturb_every,
        truncate_fraction=truncate_fraction,
    )
    ends = generation_ends(max_time, perturb_every)
    trials = population_size
    clones = []
    for _ in ends[:-1]:
        count = truncate_count(population_size, truncate_fraction)
        if max_trials is not None:
            count = min(count, max_trials - trials)
        clones.append(count)
        trials += count
    return PbtPlan(
        generation_ends=ends,
        population=population_size,
        clones_per_generation=tuple(clones) + (0,),
        trials=trials,
        budget=population_size * float(max_time),
    )


class PbtSearcher(SearcherCore):
    kind = "pbt"

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
        population_size: int,
        perturb_every: float,
        truncate_fraction: float = 0.2,
        resample_probability: float = 0.25,
        perturb_factors: Sequence[float] = (0.8, 1.2),
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
        check_pbt(
            max_trials=max_trials,
            population_size=population_size,
            perturb_every=perturb_every,
            truncate_fraction=truncate_fraction,
        )
        if not 0.0 <= resample_probability <= 1.0:
            raise ValueError(f"resample_probability must be in [0, 1], got {resample_probability}")
        if not perturb_factors or any(not f > 0 for f in perturb_factors):
            raise ValueError(f"perturb_factors must be positive, got {list(perturb_factors)}")
        self.max_trials = max_trials
        self.population_size = population_size
        self.truncate_fraction = truncate_fraction
        self.resample_probability = resample_probability
        self.perturb_factors = tuple(float(f) for f in perturb_factors)
        self.ends = generation_ends(self.max_time, perturb_every)
        self._generation = 0
        self._size = 0  # members at the start of this generation (for progress)
        self._members: list[int] = []  # live trials of the population
        self._queue: list[dict[str, Any]] = []  # members waiting for a slot, in order
        self._results: list[tuple[int, float]] = []  # (trial, rank) reached this generation
        self._exited: list[int] = []  # members that ended on their own this generation
        self._lineage: list[LineageEntry] = []

    @property
    def lineage(self) -> list[LineageEntry]:
        return list(self._lineage)

    @property
    def generation(self) -> int:
        return self._generation

    # -- events ----------------------------------------------------------------------

    def _start(self) -> list[Action]:
        for _ in range(self.population_size):
            self._queue.append({"hparams": sample(self.space, self._rng), "clone_from": None})
        self._size = self.population_size
        return self._fill()

    def _on_reached(self, reached: Reached) -> list[Action]:
        trial_id = reached.trial_id
        self._results.append((trial_id, self._rank(reached.value)))
        actions: list[Action] = []
        if self._final():
            self._members.remove(trial_id)
            actions.append(self._ledger.stop(trial_id, StopReason.FINISHED))
        elif self._queue:
            actions.append(self._ledger.pause(trial_id))
        return actions + self._fill() + self._maybe_advance()

    def _on_exited(self, trial_id: int, before: TrialStatus, reason: ExitReason) -> list[Action]:
        self._members.remove(trial_id)
        self._queue = [e for e in self._queue if e.get("resume") != trial_id]
        self._results = [r for r in self._results if r[0] != trial_id]
        self._exited.append(trial_id)
        return self._fill() + self._maybe_advance()

    # -- generations -----------------------------------------------------------------

    def _final(self) -> bool:
        return self._generation == len(self.ends) - 1

    def _maybe_advance(self) -> list[Action]:
        if self._final() or self._queue:
            return []
        if any(self._ledger.get(m).status is TrialStatus.RUNNING for m in self._members):
            return []
        return self._exploit_and_explore()

    def _exploit_and_explore(self) -> list[Action]:
        if not (self._members or self._exited):
            return []
        ranked = sorted(
            [(rank, 0, t) for t, rank in self._results] + [(math.inf, 1, t) for t in self._exited]
        )
        n = truncate_count(len(ranked), self.truncate_fraction)
        exited = set(self._exited)
        replace = [t for i, (_, _, t) in enumerate(ranked) if i >= len(ranked) - n or t in exited]
        replace.reverse()  # worst first
        donors = [t for _, _, t in ranked[:n] if t not in exited]
        budget = len(replace)
        if self.max_trials is not None:
            budget = min(budget, self.max_trials - self._ledger.created)
        if not donors:
            budget = 0
        # Reports sparser than perturb_every can carry a member past the next generation's
        # end: the generations it has passed are skipped, so every target lies ahead.
        ahead = max(self._ledger.get(t).time for t in self._members) if self._members else 0.0
        later = [g for g in range(self._generation + 1, len(self.ends)) if self.ends[g] > ahead]
        if not later:
            return self._skip_to_the_end()
        actions: list[Action] = []
        self._generation = later[0]
        until = self.ends[self._generation]
        clones: list[dict[str, Any]] = []
        for loser in replace[:budget]:
            if loser not in exited:
                actions.append(self._ledger.stop(loser, StopReason.EARLY_STOPPED))
                self._members.remove(loser)
            donor = donors[int(self._rng.integers(len(donors)))]
            hparams = perturb(
                self.space,
                self._ledger.get(donor).hparams,
                self._rng,
                factors=self.perturb_factors,
                resample_probability=self.resample_probability,
            )
            clones.append({"hparams": hparams, "clone_from": donor})
        keep = [t for _, _, t in ranked if t in self._members]  # best first
        waiting = [t for t in keep if self._ledger.get(t).status is TrialStatus.WAITING]
        yielded: list[int] = []
        while waiting and len(clones) > self._room() + len(yielded):
            yielded.append(waiting.pop())
        for t in yielded:
            actions.append(self._ledger.pause(t))
        for t in waiting:
            actions.append(self._ledger.continue_(t, until))
        self._queue = clones + [
            {"resume": t}
            for t in keep
            if t not in waiting and self._ledger.get(t).status is TrialStatus.PAUSED
        ]
        self._results, self._exited = [], []
        self._size = len(self._members) + len(clones)
        return actions + self._fill()

    def _skip_to_the_end(self) -> list[Action]:
        """A member already reached max_time: no more exploitation, everyone finishes."""
        self._generation = len(self.ends) - 1
        ranks = dict(self._results)
        self._results, self._exited = [], []
        self._size = len(self._members)
        actions: list[Action] = []
        for t in list(self._members):
            trial = self._ledger.get(t)
            if trial.time >= self.max_time:
                self._results.append((t, ranks.get(t, math.inf)))
                self._members.remove(t)
                actions.append(self._ledger.stop(t, StopReason.FINISHED))
            elif trial.status is TrialStatus.WAITING:
                actions.append(self._ledger.continue_(t, self.max_time))
            else:
                self._queue.append({"resume": t})
        return actions + self._fill()

    def _fill(self) -> list[Action]:
        actions: list[Action] = []
        until = self.ends[self._generation]
        while self._queue and self._room() > 0:
            entry = self._queue.pop(0)
            if "resume" in entry:
                actions.append(self._ledger.continue_(int(entry["resume"]), until))
                continue
            donor = entry["clone_from"]
            create = self._ledger.create(self._rng, entry["hparams"], until=until, clone_from=donor)
            self._members.append(create.trial_id)
            if donor is not None:
                self._lineage.append(
                    LineageEntry(
                        trial_id=create.trial_id,
                        donor_id=donor,
                        generation=self._generation,
                        donor_time=self._ledger.get(donor).time,
                        hparams=entry["hparams"],
                    )
                )
            actions.append(create)
        return actions

    # -- progress and state ----------------------------------------------------------

    def _done(self) -> bool:
        return not self._members and not self._queue

    def _progress(self) -> float:
        done = min((len(self._results) + len(self._exited)) / max(self._size, 1), 1.0)
        return (self._generation + done) / len(self.ends)

    def _snapshot(self) -> dict[str, Any]:
        return {
            "generation": self._generation,
            "size": self._size,
            "members": list(self._members),
            "queue": [dict(e) for e in self._queue],
            "results": [[t, encode_float(r)] for t, r in self._results],
            "exited": list(self._exited),
            "lineage": [
                {
                    "trial_id": e.trial_id,
                    "donor_id": e.donor_id,
                    "generation": e.generation,
                    "donor_time": e.donor_time,
                    "hparams": e.hparams,
                }
                for e in self._lineage
            ],
        }

    def _restore(self, state: Mapping[str, Any]) -> None:
        self._generation = int(state["generation"])
        self._size = int(state["size"])
        self._members = [int(t) for t in state["members"]]
        self._queue = [dict(e) for e in state["queue"]]
        self._results = [(int(t), decode_float(r)) for t, r in state["results"]]
        self._exited = [int(t) for t in state["exited"]]
        self._lineage = [
            LineageEntry(
                trial_id=int(e["trial_id"]),
                donor_id=int(e["donor_id"]),
                generation=int(e["generation"]),
                donor_time=float(e["donor_time"]),
                hparams=dict(e["hparams"]),
            )
            for e in state["lineage"]
        ]
