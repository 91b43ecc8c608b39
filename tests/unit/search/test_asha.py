"""Adaptive ASHA: bracket and rung arithmetic worked by hand, and both promotion rules on
scripted result sequences with the exact actions expected."""

from __future__ import annotations

import math

import numpy as np
import pytest

from resolute.errors import SearcherError
from resolute.search.asha import AshaSearcher, Promotion
from resolute.search.asha_plan import (
    Mode,
    asha_plan,
    bracket_concurrency,
    bracket_rungs,
    bracket_trials,
    effective_rungs,
    floor_log,
    rung_ends,
)
from resolute.search.base import Continue, Create, ExitReason, Pause, Shutdown, Stop, StopReason
from resolute.search.space import Double, Space

SPACE: Space = {"x": Double(0.0, 1.0)}
EARLY = StopReason.EARLY_STOPPED
FINISHED = StopReason.FINISHED


# -- arithmetic ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "base", "expected"),
    [(64, 4, 3), (63, 4, 2), (1000, 10, 3), (243, 3, 5), (1, 4, 0), (0.5, 2, -1), (100, 1.1, 48)],
)
def test_floor_log_is_exact_at_powers(x: float, base: float, expected: int) -> None:
    # math.log(1000)/math.log(10) is 2.9999999999999996: a naive floor would give 2
    assert floor_log(x, base) == expected


@pytest.mark.parametrize(
    ("max_time", "max_trials", "divisor", "max_rungs", "expected"),
    [
        # min(5, floor(log4 64)+1 = 4, floor(log4 64)+1 = 4) = 4
        (64, 64, 4, 5, 4),
        # min(5, floor(log4 100)+1 = 4, floor(log4 16)+1 = 3) = 3
        (100, 16, 4, 5, 3),
        # min(5, floor(log3 1000)+1 = 7, 7) = 5: max_rungs binds
        (1000, 1000, 3, 5, 5),
        # min(5, floor(log10 1000)+1 = 4, floor(log10 10)+1 = 2) = 2
        (1000, 10, 10, 5, 2),
        # max_time 1: one rung whatever else
        (1, 100, 4, 5, 1),
    ],
)
def test_effective_rungs(
    max_time: float, max_trials: int, divisor: float, max_rungs: int, expected: int
) -> None:
    got = effective_rungs(
        max_time=max_time, max_trials=max_trials, divisor=divisor, max_rungs=max_rungs
    )
    assert got == expected


@pytest.mark.parametrize(
    ("rungs", "mode", "expected"),
    [
        (4, "aggressive", [4]),
        (4, "standard", [4, 3, 2]),  # down to (4-1)//2 + 1 = 2
        (5, "standard", [5, 4, 3]),  # down to (5-1)//2 + 1 = 3
        (3, "standard", [3, 2]),
        (1, "standard", [1]),
        (3, "conservative", [3, 2, 1]),
    ],
)
def test_bracket_rungs(rungs: int, mode: Mode, expected: list[int]) -> None:
    assert bracket_rungs(rungs, mode) == expected


def test_bracket_trials_worked_examples() -> None:
    # weights d^(r-1)/r for d=4, rungs 4,3,2: 16, 5.333, 2 (total 23.333)
    # 64 * 16/23.333 = 43.9 -> 43; 64 * 5.333/23.333 = 14.6 -> 14; 64 * 2/23.333 = 5.5 -> 5
    # 43 + 14 + 5 = 62: the 2 left over go to the first bracket
    assert bracket_trials(64, 4, [4, 3, 2]) == [45, 14, 5]
    # rungs 4,3,2,1: weights 16, 5.333, 2, 1 (total 24.333) -> 65.75, 21.9, 8.2, 4.1
    # -> 65, 21, 8, 4 = 98, the 2 left over to the first
    assert bracket_trials(100, 4, [4, 3, 2, 1]) == [67, 21, 8, 4]


def test_bracket_trials_never_exceed_max_trials() -> None:
    # d = 1.1 and 3 trials over 5 brackets: "at least one each" would make 5; the least
    # aggressive brackets are dropped until the minimum fits: [5, 4, 3] one trial each
    assert bracket_trials(3, 1.1, [5, 4, 3, 2, 1]) == [1, 1, 1]
    plan = asha_plan(
        max_time=100,
        max_trials=3,
        divisor=1.1,
        max_rungs=5,
        mode="conservative",
        max_concurrent_trials=None,
    )
    assert [b.rungs for b in plan.brackets] == [5, 4, 3]
    assert sum(b.trials for b in plan.brackets) == 3


def test_bracket_concurrency() -> None:
    # 8 slots over 3 brackets: 2 each, the 2 left over to the first two
    assert bracket_concurrency(8, 4, [45, 14, 5]) == [3, 3, 2]
    # fewer slots than brackets: at least 1 each (the global cap of 2 still holds)
    assert bracket_concurrency(2, 4, [45, 14, 5]) == [1, 1, 1]
    # capped by a bracket's own trials
    assert bracket_concurrency(30, 4, [20, 4]) == [15, 4]
    # unset: Determined's default, max(trials of the last bracket, int(d)), capped by trials
    assert bracket_concurrency(None, 4, [45, 14, 5]) == [5, 5, 5]
    assert bracket_concurrency(None, 4, [22, 3]) == [4, 3]


def test_rung_ends() -> None:
    assert rung_ends(64, 4, 4) == (1, 4, 16, 64)
    # 100/16 = 6.25 -> 6, 100/4 = 25, 100
    assert rung_ends(100, 4, 3) == (6, 25, 100)
    # 10/16 = 0.625 -> floored to 0 -> at least 1; 10/4 = 2.5 -> 2
    assert rung_ends(10, 4, 3) == (1, 2, 10)
    # 1000/10^2 = 10 exactly (no float error floors it to 9)
    assert rung_ends(1000, 10, 3) == (10, 100, 1000)
    # a non-integral max_time (a float time metric) is not floored
    assert rung_ends(2.5, 2, 2) == (1.25, 2.5)


def test_plan_budget_worked_example() -> None:
    plan = asha_plan(
        max_time=64,
        max_trials=64,
        divisor=4,
        max_rungs=5,
        mode="standard",
        max_concurrent_trials=8,
    )
    assert plan.effective_rungs == 4
    b1, b2, b3 = plan.brackets
    assert (b1.rungs, b1.rung_ends, b1.trials, b1.concurrency) == (4, (1, 4, 16, 64), 45, 3)
    assert (b2.rungs, b2.rung_ends, b2.trials, b2.concurrency) == (3, (4, 16, 64), 14, 3)
    assert (b3.rungs, b3.rung_ends, b3.trials, b3.concurrency) == (2, (16, 64), 5, 2)
    # bracket 1: 45 trials to 1, 11 on to 4, 2 on to 16, 1 on to 64:
    # 45*1 + 11*3 + 2*12 + 1*48 = 150
    assert b1.rung_trials == (45, 11, 2, 1) and b1.budget == 150
    # bracket 2: 14*4 + 3*12 + 1*48 = 140; bracket 3: 5*16 + 1*48 = 128
    assert b2.budget == 140 and b3.budget == 128
    assert plan.budget == 418 and plan.full_budget == 64 * 64
    assert plan.ratio == pytest.approx(418 / 4096)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_trials": None}, "max_trials"),
        ({"divisor": 1.0}, "divisor"),
        ({"max_rungs": 0}, "max_rungs"),
        ({"mode": "wild"}, "mode"),
        ({"promotion": "promote"}, "promotion"),
        ({"max_time": 0}, "max_time"),
        ({"max_concurrent_trials": 0}, "max_concurrent_trials"),
    ],
)
def test_bad_settings_are_rejected(settings: dict[str, object], message: str) -> None:
    kwargs: dict[str, object] = {
        "space": SPACE,
        "metric": "loss",
        "smaller_is_better": True,
        "max_trials": 16,
        "max_concurrent_trials": 4,
        "max_time": 16,
        "time_metric": None,
        "rng": np.random.default_rng(0),
    }
    kwargs.update(settings)
    with pytest.raises(ValueError, match=message):
        AshaSearcher(**kwargs)  # type: ignore[arg-type]


# -- scripted runs -----------------------------------------------------------------------


def make(
    *,
    promotion: Promotion,
    max_trials: int,
    max_time: float,
    divisor: float,
    max_concurrent_trials: int | None,
    smaller_is_better: bool = True,
    mode: Mode = "aggressive",
) -> AshaSearcher:
    return AshaSearcher(
        space=SPACE,
        metric="loss",
        smaller_is_better=smaller_is_better,
        max_trials=max_trials,
        max_concurrent_trials=max_concurrent_trials,
        max_time=max_time,
        time_metric=None,
        rng=np.random.default_rng(0),
        divisor=divisor,
        max_rungs=5,
        mode=mode,
        promotion=promotion,
    )


def creates(actions: list[object]) -> list[tuple[int, float]]:
    return [(a.trial_id, a.until) for a in actions if isinstance(a, Create)]


def report(s: AshaSearcher, trial: int, step: int, loss: float) -> list[object]:
    return list(s.on_result(trial, step, {"loss": loss}))


def test_stop_rule_scripted() -> None:
    # aggressive, 16 trials, max_time 16, d 4: R = min(5, 3, 3) = 3 rungs ending 1, 4, 16
    s = make(promotion="stop", max_trials=16, max_time=16, divisor=4, max_concurrent_trials=4)
    assert creates(s.initial()) == [(1, 1), (2, 1), (3, 1), (4, 1)]
    # rung 0, n=1: top max(floor(1/4), 1) = 1, trial 1 is first -> on to rung 1 (ends at 4)
    assert report(s, 1, 1, 0.5) == [Continue(1, 4)]
    # n=2: top 1, trial 2 ranks 2nd -> stopped, and its slot starts trial 5
    out = report(s, 2, 1, 0.7)
    assert out[0] == Stop(2, EARLY) and creates(out) == [(5, 1)] and len(out) == 2
    # n=3: 0.4 is the best -> continues
    assert report(s, 3, 1, 0.4) == [Continue(3, 4)]
    # n=4: top 1; 0.6 ranks 3rd -> stopped, trial 6 created
    out = report(s, 4, 1, 0.6)
    assert out[0] == Stop(4, EARLY) and creates(out) == [(6, 1)]
    # a tie with the best ranks ahead of it (Determined's insertion): 0.4 continues
    assert report(s, 5, 1, 0.4) == [Continue(5, 4)]
    # reports short of the target decide nothing
    assert report(s, 1, 2, 0.1) == []
    assert report(s, 1, 3, 0.1) == []
    # rung 1, n=1 -> on to the last rung
    assert report(s, 1, 4, 0.2) == [Continue(1, 16)]
    # rung 1, n=2, top 1: 0.25 is 2nd -> stopped
    out = report(s, 3, 4, 0.25)
    assert out[0] == Stop(3, EARLY) and creates(out) == [(7, 1)]
    # the last rung: FINISHED, and a new trial in its slot
    out = report(s, 1, 16, 0.1)
    assert out[0] == Stop(1, FINISHED) and creates(out) == [(8, 1)]
    assert s.rung_results(0)[0][:2] == [(5, 0.4), (3, 0.4)]


def test_stop_rule_records_a_report_past_several_rungs_in_each() -> None:
    s = make(promotion="stop", max_trials=16, max_time=16, divisor=4, max_concurrent_trials=1)
    assert creates(s.initial()) == [(1, 1)]
    # trial 1's first report is at step 5: past rung 0 (1) and rung 1 (4); best in both
    assert report(s, 1, 5, 0.3) == [Continue(1, 16)]
    assert s.rung_results(0) == [[(1, 0.3)], [(1, 0.3)], []]


def test_stop_rule_larger_is_better() -> None:
    s = make(
        promotion="stop",
        max_trials=16,
        max_time=16,
        divisor=4,
        max_concurrent_trials=2,
        smaller_is_better=False,
    )
    s.initial()
    assert report(s, 1, 1, 0.9) == [Continue(1, 4)]
    out = report(s, 2, 1, 0.95)  # larger is better: 0.95 beats 0.9 -> continues
    assert out == [Continue(2, 4)]
    assert s.rung_results(0)[0] == [(2, -0.95), (1, -0.9)]


def test_stop_rule_nan_and_exits_rank_worst() -> None:
    s = make(promotion="stop", max_trials=16, max_time=16, divisor=4, max_concurrent_trials=3)
    s.initial()
    assert report(s, 1, 1, 0.5) == [Continue(1, 4)]
    # NaN ranks worst: 2nd of 2 -> stopped
    out = report(s, 2, 1, math.nan)
    assert out[0] == Stop(2, EARLY)
    # trial 3 errors before rung 0: +inf recorded there, its slot starts a new trial
    out = s.on_trial_exited(3, ExitReason.ERRORED)
    assert creates(out) == [(5, 1)]
    assert s.rung_results(0)[0] == [(1, 0.5), (3, math.inf), (2, math.inf)]
    # trial 1 exits heading for rung 1: recorded there as the worst
    s.on_trial_exited(1, ExitReason.KILLED)
    assert s.rung_results(0)[1] == [(1, math.inf)]
    # a late exit of an already stopped trial is ignored
    assert s.on_trial_exited(2, ExitReason.COMPLETED) == []


def _pause_searcher() -> AshaSearcher:
    # aggressive, 4 trials, max_time 4, d 2: R = min(5, 3, 3) = 3 rungs ending 1, 2, 4;
    # one bracket of 4 trials, 2 at a time
    s = make(promotion="pause", max_trials=4, max_time=4, divisor=2, max_concurrent_trials=2)
    assert creates(s.initial()) == [(1, 1), (2, 1)]
    # rung 0 n=1: top floor(1/2) = 0, nothing promotable; the slot goes to a new trial
    out = report(s, 1, 1, 0.5)
    assert out[0] == Pause(1) and creates(out) == [(3, 1)] and len(out) == 2
    # n=2, top 1 = trial 2 itself -> it simply continues
    assert report(s, 2, 1, 0.3) == [Continue(2, 2)]
    # n=3, top 1 = trial 2 (promoted); nothing else promotable: new trial 4
    out = report(s, 3, 1, 0.4)
    assert out[0] == Pause(3) and creates(out) == [(4, 1)]
    return s


def test_pause_rule_scripted_to_shutdown() -> None:
    s = _pause_searcher()
    # n=4, top 2 = [4 (0.1), 2 (promoted)]: trial 4 is the job -> continues
    assert report(s, 4, 1, 0.1) == [Continue(4, 2)]
    # rung 1 n=1: top 0; rung 0's top 2 both promoted; no budget left -> paused, no job
    assert report(s, 2, 2, 0.2) == [Pause(2)]
    # rung 1 n=2: top 1 = trial 4 -> continues to the last rung
    assert report(s, 4, 2, 0.15) == [Continue(4, 4)]
    # the last rung finishes trial 4; nothing active and no job left: every paused trial
    # is stopped, then Shutdown
    assert report(s, 4, 4, 0.05) == [
        Stop(4, FINISHED),
        Stop(1, EARLY),
        Stop(2, EARLY),
        Stop(3, EARLY),
        Shutdown(),
    ]
    assert s.progress() == 1.0
    with pytest.raises(SearcherError, match="after Shutdown"):
        report(s, 4, 5, 0.01)


def test_pause_rule_promotes_a_paused_trial_into_the_freed_slot() -> None:
    s = _pause_searcher()
    # n=4, rung 0 = [2 (0.3, promoted), 3 (0.4), 4 (0.45), 1 (0.5)]: top 2 -> paused
    # trial 3 is the job, not trial 4: trial 4 pauses and trial 3 resumes to rung 1
    assert report(s, 4, 1, 0.45) == [Pause(4), Continue(3, 2)]


def test_pause_rule_prefers_the_highest_rung_and_ends_by_promoting_paused_trials() -> None:
    s = _pause_searcher()
    assert report(s, 4, 1, 0.45) == [Pause(4), Continue(3, 2)]
    # rung 1: [2 (0.2)], top 0; rung 0 top 2 both promoted; no budget -> paused
    assert report(s, 2, 2, 0.2) == [Pause(2)]
    # rung 1: [3 (0.1), 2 (0.2)], top 1 = trial 3 itself -> continues
    assert report(s, 3, 2, 0.1) == [Continue(3, 4)]
    out = report(s, 3, 4, 0.05)
    assert out == [Stop(3, FINISHED), Stop(1, EARLY), Stop(2, EARLY), Stop(4, EARLY), Shutdown()]


def test_pause_rule_exit_of_a_paused_trial_is_never_promoted() -> None:
    s = _pause_searcher()
    # trial 1 (paused at rung 0 with 0.5) is killed: it keeps its result, no new record
    assert s.on_trial_exited(1, ExitReason.KILLED) == []
    assert s.rung_results(0)[0] == [(2, 0.3), (3, 0.4), (1, 0.5)]
    # a running trial that errors records +inf where it was heading
    s.on_trial_exited(4, ExitReason.ERRORED)
    assert s.rung_results(0)[0][-1] == (4, math.inf)


def test_pause_rule_with_unlimited_concurrency_uses_determined_default() -> None:
    s = make(promotion="pause", max_trials=16, max_time=16, divisor=4, max_concurrent_trials=None)
    # one bracket of 16: concurrency min(max(16, 4), 16) = 16, all created at once
    assert len(creates(s.initial())) == 16


def test_global_cap_holds_with_fewer_slots_than_brackets() -> None:
    s = make(
        promotion="stop",
        max_trials=64,
        max_time=64,
        divisor=4,
        max_concurrent_trials=2,
        mode="standard",
    )
    # 3 brackets of concurrency 1 each, but only 2 slots: the first two brackets start
    assert [(a.trial_id, a.until) for a in s.initial() if isinstance(a, Create)] == [
        (1, 1),
        (2, 4),
    ]
    # trial 2 (bracket 2, rungs ending 4, 16, 64) is alone in its rung: top 1 -> continues
    assert report(s, 2, 4, 0.5) == [Continue(2, 16)]


def test_unknown_trial_and_missing_time_metric_are_protocol_errors() -> None:
    s = AshaSearcher(
        space=SPACE,
        metric="loss",
        smaller_is_better=True,
        max_trials=16,
        max_concurrent_trials=2,
        max_time=16,
        time_metric="epoch",
        rng=np.random.default_rng(0),
        promotion="stop",
    )
    s.initial()
    with pytest.raises(SearcherError, match="never created"):
        s.on_result(99, 1, {"loss": 0.1, "epoch": 1})
    with pytest.raises(SearcherError, match="time metric 'epoch'"):
        s.on_result(1, 1, {"loss": 0.1})
    # a report without the searcher metric is ignored
    assert s.on_result(1, 1, {"accuracy": 0.1, "epoch": 1}) == []
    # the time metric, not the step, is the trial's time
    assert s.on_result(1, 50, {"loss": 0.1, "epoch": 0.5}) == []
    assert s.on_result(1, 51, {"loss": 0.1, "epoch": 1.0}) == [Continue(1, 4)]


def test_a_non_finite_time_metric_is_a_protocol_error() -> None:
    s = AshaSearcher(
        space=SPACE,
        metric="loss",
        smaller_is_better=True,
        max_trials=16,
        max_concurrent_trials=2,
        max_time=16,
        time_metric="epoch",
        rng=np.random.default_rng(0),
    )
    s.initial()
    with pytest.raises(SearcherError, match="finite"):
        s.on_result(1, 1, {"loss": 0.1, "epoch": math.nan})
