"""A thin Ray shell around a pure ``search.Searcher``: it forwards events, returns actions.

One per experiment, named ``searcher/<experiment id>`` in the ``resolute`` namespace so that
the Ray dashboard shows it. No search logic lives here (rules of the house, 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray

from resolute.search.base import Action, ExitReason, Searcher


@dataclass(frozen=True)
class ResultEvent:
    trial_id: int
    step: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class ExitEvent:
    trial_id: int
    reason: ExitReason


Event = ResultEvent | ExitEvent


@dataclass(frozen=True)
class Decision:
    """What the searcher answered to a batch of events, and its state afterwards."""

    actions: list[Action]
    progress: float
    snapshot: dict[str, Any]


class SearcherShell:
    """The searcher driven through events; kept separate from the actor class so that the
    scheduler can also run it in-process (tests, and the single-process fallback)."""

    def __init__(self, searcher: Searcher, snapshot: dict[str, Any] | None = None) -> None:
        self._searcher = searcher
        if snapshot is not None:
            searcher.restore(snapshot)

    def initial(self) -> list[Action]:
        return self._searcher.initial()

    def handle(self, events: list[Event]) -> list[Action]:
        actions: list[Action] = []
        for event in events:
            if isinstance(event, ResultEvent):
                actions += self._searcher.on_result(event.trial_id, event.step, event.metrics)
            else:
                actions += self._searcher.on_trial_exited(event.trial_id, event.reason)
        return actions

    def decide(self, events: list[Event]) -> Decision:
        """``handle`` plus the progress and snapshot after it: one round trip per decision."""
        return Decision(self.handle(events), self.progress(), self.snapshot())

    def begin(self) -> Decision:
        """``initial`` plus the progress and snapshot after it."""
        return Decision(self.initial(), self.progress(), self.snapshot())

    def progress(self) -> float:
        return self._searcher.progress()

    def snapshot(self) -> dict[str, Any]:
        return self._searcher.snapshot()

    def __repr__(self) -> str:
        return f"Searcher({type(self._searcher).__name__})"


@ray.remote(num_cpus=0, max_restarts=0)
class SearcherActor(SearcherShell):
    """The Ray actor form of SearcherShell (one per experiment)."""
