"""The simulator's runtime semantics (slots, waiting, pause/resume, clones) and its
detection of protocol violations, using deliberately misbehaving searchers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from resolute.errors import SearcherError
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
from resolute.search.random import RandomSearcher
from resolute.search.simulate import SimStatus, Simulation, simulate
from resolute.search.space import Double, HParams


def flat(h: HParams, t: float) -> float:
    return 1.0 / (1.0 + t)


class Scripted:
    """A searcher that replies from a script keyed by (trial, time) and counts on nothing."""

    def __init__(
        self,
        initial: list[Action],
        replies: dict[tuple[int, float], list[Action]] | None = None,
        progress: list[float] | None = None,
    ) -> None:
        self._initial = initial
        self._replies = replies or {}
        self._progress = progress or []
        self.results: list[tuple[int, int, dict[str, float]]] = []
        self._shut_down = False

    def _reply(self, actions: list[Action]) -> list[Action]:
        self._shut_down |= any(isinstance(a, Shutdown) for a in actions)
        return list(actions)

    def initial(self) -> list[Action]:
        return self._reply(self._initial)

    def on_result(self, trial_id: int, step: int, metrics: dict[str, float]) -> list[Action]:
        self.results.append((trial_id, step, metrics))
        return self._reply(self._replies.get((trial_id, float(step)), []))

    def on_trial_exited(self, trial_id: int, reason: ExitReason) -> list[Action]:
        return self._reply(self._replies.get((trial_id, -1.0), []))

    def progress(self) -> float:
        if self._progress:
            return self._progress.pop(0)
        return 1.0 if self._shut_down else 0.0

    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        pass


def create(trial_id: int, until: float, clone_from: int | None = None) -> Create:
    return Create(trial_id=trial_id, hparams={}, seed=0, until=until, clone_from=clone_from)


def run(searcher: Searcher, **kwargs: Any) -> Any:
    options: dict[str, Any] = {"metric": "loss", "curve": flat, "slots": 2}
    options.update(kwargs)
    return simulate(searcher, **options)


def test_scripted_searcher_satisfies_the_protocol() -> None:
    assert isinstance(Scripted([]), Searcher)


def test_waiting_trials_hold_slots_and_pause_resume_and_clone() -> None:
    searcher = Scripted(
        [create(1, 2), create(2, 2), create(3, 2)],
        {
            # trial 1 reaches 2 and waits; trial 2 reaches 2 and pauses: 3 gets its slot
            (2, 2): [Pause(2)],
            # trial 3 reaches 2: clone 4 from trial 1 at its time (2) to 4, stop 3
            (3, 2): [Stop(3, StopReason.EARLY_STOPPED), create(4, 4, clone_from=1)],
            # clone reaches 4: stop it and resume paused trial 2 to 3
            (4, 4): [Stop(4, StopReason.FINISHED), Continue(2, 3), Stop(1)],
            (2, 3): [Stop(2, StopReason.FINISHED), Shutdown()],
        },
    )
    result = run(searcher, slots=2)
    trials = result.trials
    assert trials[4].start_time == 2 and trials[4].time == 4
    assert trials[2].time == 3 and trials[2].end == "FINISHED"
    # reports: every unit, then at the target; the clone reports from its donor's time
    reported = [(t, s) for t, s, _ in searcher.results]
    assert reported.count((4, 3)) == 1 and (4, 1) not in reported
    # clock: 1 and 2 train 0..2; 3 gets 2's slot at 2 and trains to 4; the clone trains
    # 4..6 (trial 1 still waits on the other slot); 2 resumes at 6 once 1 is stopped, to 7
    assert result.makespan == 2 + 2 + 2 + 1
    assert result.max_active == 3
    assert all(t.status is SimStatus.CLOSED for t in trials.values())


@pytest.mark.parametrize(
    ("initial", "replies", "kwargs", "message"),
    [
        ([create(1, 1), create(2, 1)], {}, {"max_trials": 1}, "exceeds max_trials"),
        ([create(1, 1), create(2, 1)], {}, {"max_concurrent_trials": 1}, "2 active trials"),
        ([create(1, 1), create(1, 1)], {}, {}, "reuses trial id"),
        ([create(1, 1), Stop(7)], {}, {}, "unknown trial 7"),
        ([create(1, 1)], {(1, 1): [Stop(1), Stop(1)]}, {}, "closed trial 1"),
        ([create(1, 2)], {}, {}, "stalled"),  # trial 1 waits at 2 forever
        ([create(1, 1), Shutdown()], {}, {}, "still open"),
        ([create(1, 1)], {(1, 1): [Stop(1), Shutdown(), Shutdown()]}, {}, "after Shutdown"),
        ([create(1, 1)], {(1, 1): [Stop(1), Shutdown(), create(2, 1)]}, {}, "after Shutdown"),
        ([create(1, 2)], {(1, 2): [Continue(1, 2)]}, {}, "does not go beyond"),
        ([create(1, 1, clone_from=9)], {}, {}, "clones unknown trial 9"),
        ([create(1, 2)], {(1, 1): [Pause(1)], (1, 2): [Pause(1)]}, {}, "stalled"),
    ],
)
def test_protocol_violations_raise(
    initial: list[Action],
    replies: dict[tuple[int, float], list[Action]],
    kwargs: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(SearcherError, match=message):
        run(Scripted(initial, replies), **kwargs)


def test_progress_going_back_or_short_of_one_at_shutdown_is_a_violation() -> None:
    backwards = Scripted([create(1, 2)], {(1, 2): [Stop(1), Shutdown()]}, progress=[0.5, 0.4])
    with pytest.raises(SearcherError, match="went back"):
        run(backwards)
    short = Scripted([create(1, 1)], {(1, 1): [Stop(1), Shutdown()]}, progress=[0.1, 0.9])
    with pytest.raises(SearcherError, match="at Shutdown"):
        run(short)


def test_exits_are_delivered_at_their_time() -> None:
    searcher = Scripted([create(1, 4)], {(1, -1.0): [Shutdown()]})
    result = run(searcher, exits={1: (2.5, ExitReason.ERRORED)}, time_metric="epoch")
    assert result.trials[1].time == 2.5 and result.trials[1].end == "ERRORED"
    # reports at epochs 1 and 2 carried the time metric; steps count reports
    assert [(s, m["epoch"]) for _, s, m in searcher.results] == [(1, 1.0), (2, 2.0)]


def test_a_real_searcher_with_fewer_slots_than_concurrency_queues_trials() -> None:
    searcher = RandomSearcher(
        space={"x": Double(0.0, 1.0)},
        metric="loss",
        smaller_is_better=True,
        max_trials=6,
        max_concurrent_trials=4,
        max_time=3,
        time_metric=None,
        rng=np.random.default_rng(0),
    )
    result = run(searcher, slots=2, max_trials=6, max_concurrent_trials=4)
    # 6 trials x 3 units over 2 slots: 9 clock units
    assert result.makespan == 9 and result.units_trained == 18
    assert result.max_active == 4


def test_simulation_can_swap_searchers_between_steps() -> None:
    def make() -> RandomSearcher:
        return RandomSearcher(
            space={"x": Double(0.0, 1.0)},
            metric="loss",
            smaller_is_better=True,
            max_trials=3,
            max_concurrent_trials=1,
            max_time=2,
            time_metric=None,
            rng=np.random.default_rng(5),
        )

    whole = run(make(), slots=1)
    sim = Simulation(searcher=make(), metric="loss", curve=flat, slots=1)
    for _ in range(3):
        sim.step()
    replacement = RandomSearcher(
        space={"x": Double(0.0, 1.0)},
        metric="loss",
        smaller_is_better=True,
        max_trials=3,
        max_concurrent_trials=1,
        max_time=2,
        time_metric=None,
        rng=np.random.default_rng(99),
    )
    replacement.restore(sim.searcher.snapshot())
    sim.searcher = replacement
    assert sim.run().actions == whole.actions
