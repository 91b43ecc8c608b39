"""One contract, every searcher: driven by ``simulate()`` over hypothesis-generated settings,
slots, report cadences, failing trials and NaN metrics.

For every searcher: the simulator's protocol checks pass (no action for an unknown or
closed trial, never more active trials than max_concurrent_trials, never more creates
than max_trials, progress monotone in [0, 1] and 1.0 at Shutdown, no stall); Shutdown is
issued exactly once and last, with every trial closed; a FINISHED trial did reach
max_time; the same seed gives the same actions; and a snapshot taken at a random point,
passed through JSON and restored into a searcher built with another seed, continues with
exactly the same actions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resolute.errors import SearcherError
from resolute.search.base import Action, Create, ExitReason, Shutdown, Stop, StopReason
from resolute.search.settings import SearcherSettings, make_searcher
from resolute.search.simulate import SimStatus, Simulation, SimulationResult
from resolute.search.space import Categorical, Const, Double, HParams, Int, Log, Space

SPACE: Space = {
    "x": Double(0.0, 1.0, count=3),
    "lr": Log(-4, -1, count=2),
    "opt": {"n": Int(1, 8, count=2), "kind": Categorical(("a", "b"))},
    "k": Const(1),
}
GRID_SIZE = 3 * 2 * 2 * 2


@dataclass(frozen=True)
class Scenario:
    settings: SearcherSettings
    seed: int
    slots: int
    report_every: float
    exits: dict[int, tuple[float, ExitReason]]
    nan: bool


def curve_for(scenario: Scenario):  # type: ignore[no-untyped-def]
    def curve(h: HParams, t: float) -> float:
        if scenario.nan and h["x"] > 0.8:
            return math.nan
        base = abs(h["x"] - 0.3) + abs(math.log10(h["lr"]) + 2.5) / 3 + h["opt"]["n"] / 20
        return base + 1.0 / (1.0 + t)

    return curve


def simulation(scenario: Scenario, seed: int | None = None) -> Simulation:
    s = scenario.settings
    return Simulation(
        searcher=make_searcher(s, SPACE, scenario.seed if seed is None else seed),
        metric=s.metric,
        curve=curve_for(scenario),
        slots=scenario.slots,
        smaller_is_better=s.smaller_is_better,
        time_metric=s.time_metric,
        max_trials=s.max_trials,
        max_concurrent_trials=s.max_concurrent_trials,
        report_every=scenario.report_every,
        exits=scenario.exits,
        max_events=20_000,
    )


@st.composite
def scenarios(draw: st.DrawFn, family: str) -> Scenario:
    name = family.split("-")[0]
    time_metric = draw(st.sampled_from([None, "epoch"]))
    if time_metric is None:
        max_time: float = draw(st.integers(1, 16))
    else:
        max_time = draw(st.integers(1, 64)) / 4
    max_concurrent = draw(st.sampled_from([None, 1, 2, 3, 6]))
    extra: dict[str, object] = {}
    if name == "single":
        max_trials = draw(st.sampled_from([None, 1]))
    elif name == "random":
        max_trials = draw(st.integers(1, 12))
    elif name == "grid":
        max_trials = draw(st.one_of(st.none(), st.integers(1, 30)))
    elif name == "asha":
        _, promotion, mode = family.split("-")
        max_trials = draw(st.integers(1, 30))
        extra = {
            "promotion": promotion,
            "mode": mode,
            "divisor": draw(st.sampled_from([2.0, 3.0, 4.0])),
            "max_rungs": draw(st.integers(1, 5)),
        }
    else:
        population = draw(st.integers(1, 6))
        max_trials = draw(st.one_of(st.none(), st.integers(population, population + 10)))
        extra = {
            "population_size": population,
            "perturb_every": max_time * draw(st.sampled_from([0.2, 0.25, 0.4, 0.5, 1.0, 1.5])),
            "truncate_fraction": draw(st.sampled_from([0.2, 0.25, 0.5])),
            "resample_probability": draw(st.sampled_from([0.0, 0.25, 1.0])),
        }
    searcher_settings = SearcherSettings(
        name=name,  # type: ignore[arg-type]
        metric="loss",
        smaller_is_better=draw(st.booleans()),
        max_trials=max_trials,
        max_concurrent_trials=max_concurrent,
        max_time=max_time,
        time_metric=time_metric,
        **extra,  # type: ignore[arg-type]
    )
    exit_ids = draw(st.lists(st.integers(1, 20), max_size=3, unique=True))
    exits = {
        t: (
            max_time * draw(st.sampled_from([0.1, 0.3, 0.5, 0.9])),
            draw(st.sampled_from(list(ExitReason))),
        )
        for t in exit_ids
    }
    slots = draw(st.integers(1, 6))
    if name == "pbt":
        # PBT members that finish a generation wait on their slots (base.py) for the rest of
        # the generation: the runtime must be able to run every trial PBT keeps active.
        population = int(extra["population_size"])  # type: ignore[call-overload]
        slots = max(slots, min(population, max_concurrent or population))
    return Scenario(
        settings=searcher_settings,
        seed=draw(st.integers(0, 2**31 - 1)),
        slots=slots,
        report_every=draw(st.sampled_from([1.0, 2.5, max_time])),
        exits=exits,
        nan=draw(st.booleans()),
    )


def actions_of(result: SimulationResult) -> list[Action]:
    return [a for _, a in result.actions]


def check_contract(scenario: Scenario, result: SimulationResult) -> None:
    s = scenario.settings
    actions = actions_of(result)
    assert sum(isinstance(a, Shutdown) for a in actions) == 1
    assert isinstance(actions[-1], Shutdown)
    assert all(t.status is SimStatus.CLOSED for t in result.trials.values())
    if s.max_trials is not None:
        assert result.creates() <= s.max_trials
    if s.max_concurrent_trials is not None:
        assert result.max_active <= s.max_concurrent_trials
    target = s.max_time if s.time_metric else math.ceil(s.max_time)
    for action in actions:
        if isinstance(action, Stop) and action.reason is StopReason.FINISHED:
            assert result.trials[action.trial_id].time >= target - 1e-9
    exited = {t for t, (at, _) in scenario.exits.items() if t in result.trials}
    if s.name == "single":
        assert result.creates() == 1
    elif s.name == "random":
        assert result.creates() == s.max_trials
    elif s.name == "grid":
        assert result.creates() == min(GRID_SIZE, s.max_trials or GRID_SIZE)
        points = [a.hparams for a in actions if isinstance(a, Create)]
        assert len({json.dumps(p, sort_keys=True) for p in points}) == len(points)
    elif s.name == "asha":
        # every trial of every bracket's budget gets created, none more
        assert result.creates() == s.max_trials
    else:
        assert s.population_size is not None
        assert result.creates() >= s.population_size
        for action in actions:
            if isinstance(action, Create) and action.clone_from is not None:
                assert result.trials[action.trial_id].start_time > 0
    # a trial closed without reaching its target was stopped or exited: never left open
    for t in result.trials.values():
        assert t.end is not None, t
    del exited


FAMILIES = [
    "single",
    "random",
    "grid",
    "asha-stop-aggressive",
    "asha-stop-standard",
    "asha-stop-conservative",
    "asha-pause-aggressive",
    "asha-pause-standard",
    "asha-pause-conservative",
    "pbt",
]

HYPOTHESIS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("family", FAMILIES)
@HYPOTHESIS
@given(data=st.data())
def test_searcher_contract(family: str, data: st.DataObject) -> None:
    scenario = data.draw(scenarios(family), label="scenario")
    result = simulation(scenario).run()
    check_contract(scenario, result)

    # the same seed gives the same search
    again = simulation(scenario).run()
    assert actions_of(again) == actions_of(result)

    # a snapshot through JSON at a random point continues identically, even in a searcher
    # built with another seed (its generator state comes from the snapshot)
    cut = data.draw(st.integers(1, result.events), label="cut")
    sim = simulation(scenario)
    sim.start()
    while sim.events < cut and sim.step():
        pass
    state = json.loads(json.dumps(sim.searcher.snapshot(), allow_nan=False))
    fresh = make_searcher(scenario.settings, SPACE, scenario.seed + 1)
    fresh.restore(state)
    sim.searcher = fresh
    assert actions_of(sim.run()) == actions_of(result)


def test_pbt_with_more_members_active_than_slots_stalls_and_the_simulator_says_so() -> None:
    # max_concurrent_trials unset lets all 3 members be active, but there are 2 slots: the
    # first two wait at the generation's end holding both, and the third never starts.
    scenario = Scenario(
        settings=SearcherSettings(
            name="pbt",
            metric="loss",
            max_time=4,
            population_size=3,
            perturb_every=2,
        ),
        seed=0,
        slots=2,
        report_every=1.0,
        exits={},
        nan=False,
    )
    with pytest.raises(SearcherError, match=r"stalled.*1 queued, 2 waiting"):
        simulation(scenario).run()
    # with max_concurrent_trials at the slot count, the third member gets a paused one's slot
    fitted = Scenario(
        **{
            **scenario.__dict__,
            "settings": SearcherSettings(
                name="pbt",
                metric="loss",
                max_time=4,
                population_size=3,
                perturb_every=2,
                max_concurrent_trials=2,
            ),
        }
    )
    check_contract(fitted, simulation(fitted).run())
