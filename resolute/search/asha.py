"""Adaptive ASHA: asynchronous successive halving over several brackets.

The brackets, their trials, concurrency and rung ends come from ``asha_plan`` (see
``asha_plan.py``; they match Determined's ``adaptive_asha``). Trials of a bracket start
at rung 0 with ``Create(until=<rung 0 end>)``. A trial *records* its result in a rung when
it reports the searcher metric at time >= the rung's end; results are ranked with
``base.rank_value`` (NaN ranks worst).

``promotion="stop"`` (Determined >= 0.38, Ray Tune's ASHA). A trial recording a result
continues (``Continue(until=<next rung end>)``) only if it ranks within the top
max(floor(n/d), 1) of the n results of that rung, itself included, a new result ranking
ahead of equal ones; otherwise ``Stop(EARLY_STOPPED)``. At the last rung it gets
``Stop(FINISHED)``. A report past several rung ends is recorded in each in turn, as in
Determined. Every freed slot starts a new trial in the bracket while its budget lasts.

``promotion="pause"`` (Li et al., MLSys 2020, Algorithm 2). Every free slot of a bracket
goes to its *job*: the best not-yet-promoted, paused (or just-reported) trial within the
top floor(n/d) of a rung, searching from the second-highest rung down; failing that a new
trial while the bracket's budget lasts. A result ranks behind equal earlier ones. A trial
recording a result at the last rung gets ``Stop(FINISHED)``; otherwise its slot is freed: if
the job is the trial itself it simply continues (``Continue``, no pause), else it gets
``Pause`` and the job runs (``Continue`` of the promoted paused trial, or ``Create``). A
bracket is done when it has no active trial and no job: this happens only after all its
trials are created, and every promotable paused trial has been promoted (finishing a rung
can make more promotable, so promotion repeats while slots free up). Its remaining paused
trials then get ``Stop(EARLY_STOPPED)``.

In both modes a trial that exits on its own (error, kill, or an early return) while
running records the worst result (+inf) in the rung it was heading for, so it still counts
in that rung's n; a paused trial that is killed keeps its recorded result but is never
promoted. Either way its slot is freed. Slots are handed out bracket by bracket, most
aggressive first, within each bracket's concurrency and the global max_concurrent_trials.
``Shutdown`` follows when every bracket is done.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from resolute.search.asha_plan import AshaPlan, BracketPlan, Mode, asha_plan, check_asha
from resolute.search.base import Action, ExitReason, StopReason
from resolute.search.core import SearcherCore
from resolute.search.ledger import ACTIVE, Reached, TrialStatus, decode_float, encode_float
from resolute.search.space import Space, sample

Promotion = Literal["stop", "pause"]
PROMOTIONS: tuple[Promotion, ...] = ("stop", "pause")

__all__ = ["AshaPlan", "AshaSearcher", "Promotion", "asha_plan"]


@dataclass
class _Result:
    trial_id: int
    rank: float  # smaller is better
    promoted: bool = False


@dataclass
class _Bracket:
    plan: BracketPlan
    created: int = 0
    finished: bool = False
    rungs: list[list[_Result]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.rungs:
            self.rungs = [[] for _ in range(self.plan.rungs)]

    def to_json(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "finished": self.finished,
            "rungs": [
                [[r.trial_id, encode_float(r.rank), r.promoted] for r in rung]
                for rung in self.rungs
            ],
        }

    def load(self, data: Mapping[str, Any]) -> None:
        self.created = int(data["created"])
        self.finished = bool(data["finished"])
        self.rungs = [
            [_Result(int(t), decode_float(rank), bool(p)) for t, rank, p in rung]
            for rung in data["rungs"]
        ]


@dataclass(frozen=True)
class _Promote:
    trial_id: int
    rung: int  # the rung it leaves


class AshaSearcher(SearcherCore):
    kind = "asha"

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
        divisor: float = 4.0,
        max_rungs: int = 5,
        mode: Mode = "standard",
        promotion: Promotion = "stop",
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
        check_asha(max_trials=max_trials, divisor=divisor, max_rungs=max_rungs, mode=mode)
        if promotion not in PROMOTIONS:
            raise ValueError(f"unknown ASHA promotion {promotion!r}: use 'stop' or 'pause'")
        self.divisor = float(divisor)
        self.promotion: Promotion = promotion
        self.plan = asha_plan(
            max_time=max_time,
            max_trials=max_trials,
            divisor=divisor,
            max_rungs=max_rungs,
            mode=mode,
            max_concurrent_trials=max_concurrent_trials,
        )
        self._brackets = [_Bracket(plan=b) for b in self.plan.brackets]
        self._rung_of: dict[int, int] = {}  # the rung a trial is heading for, or paused at

    def rung_results(self, bracket: int) -> list[list[tuple[int, float]]]:
        """Each rung's recorded (trial id, rank value) pairs, best first (for inspection)."""
        return [[(r.trial_id, r.rank) for r in rung] for rung in self._brackets[bracket].rungs]

    # -- events ----------------------------------------------------------------------

    def _start(self) -> list[Action]:
        return self._fill()

    def _on_reached(self, reached: Reached) -> list[Action]:
        if self.promotion == "stop":
            actions = self._stop_rule(reached)
        else:
            actions = self._pause_rule(reached)
        return actions + self._fill() + self._close_finished()

    def _on_exited(self, trial_id: int, before: TrialStatus, reason: ExitReason) -> list[Action]:
        if before in ACTIVE:
            bracket = self._brackets[self._ledger.get(trial_id).group]
            self._record(bracket.rungs[self._rung_of[trial_id]], trial_id, math.inf)
        return self._fill() + self._close_finished()

    # -- the two promotion rules -----------------------------------------------------

    def _stop_rule(self, reached: Reached) -> list[Action]:
        trial_id = reached.trial_id
        bracket = self._brackets[self._ledger.get(trial_id).group]
        ends = bracket.plan.rung_ends
        rank = self._rank(reached.value)
        rung = self._rung_of[trial_id]
        while True:
            results = bracket.rungs[rung]
            index = self._record(results, trial_id, rank)
            if rung == len(ends) - 1:
                return [self._ledger.stop(trial_id, StopReason.FINISHED)]
            if index >= max(int(len(results) / self.divisor), 1):
                return [self._ledger.stop(trial_id, StopReason.EARLY_STOPPED)]
            results[index].promoted = True
            rung += 1
            self._rung_of[trial_id] = rung
            if reached.time < ends[rung]:
                return [self._ledger.continue_(trial_id, ends[rung])]

    def _pause_rule(self, reached: Reached) -> list[Action]:
        trial_id = reached.trial_id
        group = self._ledger.get(trial_id).group
        bracket = self._brackets[group]
        ends = bracket.plan.rung_ends
        rank = self._rank(reached.value)
        actions: list[Action] = []
        while True:
            rung = self._rung_of[trial_id]
            self._record(bracket.rungs[rung], trial_id, rank)
            if rung == len(ends) - 1:
                return [*actions, self._ledger.stop(trial_id, StopReason.FINISHED)]
            # Jobs ahead of the reporter take the bracket's idle slots (if it has any); the
            # reporter keeps its own slot only if it is the next job, so it never gets a
            # Pause and a Continue in the same reply.
            while True:
                job = self._job(group)
                if isinstance(job, _Promote) and job.trial_id == trial_id:
                    break
                if job is None or not self._has_slot(group):
                    return [*actions, self._ledger.pause(trial_id)]
                actions.append(self._run(group, job))
            self._mark_promoted(bracket, job)
            if reached.time < ends[rung + 1]:
                return [*actions, self._ledger.continue_(trial_id, ends[rung + 1])]

    def _record(self, results: list[_Result], trial_id: int, rank: float) -> int:
        """Insert a result in rank order; return its index."""
        if self.promotion == "stop":
            index = bisect.bisect_left(results, rank, key=lambda r: r.rank)
        else:
            index = bisect.bisect_right(results, rank, key=lambda r: r.rank)
        results.insert(index, _Result(trial_id=trial_id, rank=rank))
        return index

    # -- slots -----------------------------------------------------------------------

    def _job(self, group: int) -> _Promote | Literal["create"] | None:
        """What a free slot of this bracket should run next, if anything."""
        bracket = self._brackets[group]
        if self.promotion == "pause":
            for rung in range(len(bracket.rungs) - 2, -1, -1):
                results = bracket.rungs[rung]
                for result in results[: int(len(results) / self.divisor)]:
                    status = self._ledger.get(result.trial_id).status
                    if not result.promoted and status is not TrialStatus.CLOSED:
                        return _Promote(trial_id=result.trial_id, rung=rung)
        if bracket.created < bracket.plan.trials:
            return "create"
        return None

    def _mark_promoted(self, bracket: _Bracket, job: _Promote) -> None:
        for result in bracket.rungs[job.rung]:
            if result.trial_id == job.trial_id:
                result.promoted = True
        self._rung_of[job.trial_id] = job.rung + 1

    def _has_slot(self, group: int) -> bool:
        concurrency = self._brackets[group].plan.concurrency
        return self._room() > 0 and self._ledger.active(group) < concurrency

    def _run(self, group: int, job: _Promote | Literal["create"]) -> Action:
        bracket = self._brackets[group]
        if job == "create":
            hparams = sample(self.space, self._rng)
            create = self._ledger.create(
                self._rng, hparams, until=bracket.plan.rung_ends[0], group=group
            )
            bracket.created += 1
            self._rung_of[create.trial_id] = 0
            return create
        self._mark_promoted(bracket, job)
        return self._ledger.continue_(job.trial_id, bracket.plan.rung_ends[job.rung + 1])

    def _fill(self) -> list[Action]:
        actions: list[Action] = []
        for group in range(len(self._brackets)):
            while self._has_slot(group):
                job = self._job(group)
                if job is None:
                    break
                actions.append(self._run(group, job))
        return actions

    def _close_finished(self) -> list[Action]:
        actions: list[Action] = []
        for group, bracket in enumerate(self._brackets):
            if bracket.finished or self._ledger.active(group) or self._job(group) is not None:
                continue
            bracket.finished = True
            for trial in self._ledger.records():
                if trial.group == group and trial.status is TrialStatus.PAUSED:
                    actions.append(self._ledger.stop(trial.trial_id, StopReason.EARLY_STOPPED))
        return actions

    # -- progress and state ----------------------------------------------------------

    def _done(self) -> bool:
        return all(b.finished for b in self._brackets)

    def _progress(self) -> float:
        return self._ledger.total_time() / max(self.plan.budget, 1e-12)

    def _snapshot(self) -> dict[str, Any]:
        return {
            "brackets": [b.to_json() for b in self._brackets],
            "rung_of": [[t, r] for t, r in self._rung_of.items()],
        }

    def _restore(self, state: Mapping[str, Any]) -> None:
        for bracket, data in zip(self._brackets, state["brackets"], strict=True):
            bracket.load(data)
        self._rung_of = {int(t): int(r) for t, r in state["rung_of"]}
