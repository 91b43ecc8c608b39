"""PBT: exploit (bottom replaced by clones of the top) and explore (perturbed hparams),
slots, exits, the max_trials cap, lineage and the plan."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from resolute.search.base import Action, Continue, Create, ExitReason, Shutdown, Stop
from resolute.search.base import StopReason as R
from resolute.search.pbt import LineageEntry, PbtSearcher, pbt_plan, truncate_count
from resolute.search.space import Categorical, Double, Int, Log, Space

SPACE: Space = {"x": Double(0.0, 1.0), "n": Int(1, 100), "lr": Log(-4, -1)}


def make(
    *,
    population: int = 4,
    max_trials: int | None = None,
    max_concurrent_trials: int | None = None,
    truncate_fraction: float = 0.25,
    space: Space = SPACE,
    factors: tuple[float, ...] = (2.0,),
    resample_probability: float = 0.0,
    max_time: float = 4,
    perturb_every: float = 2,
) -> PbtSearcher:
    return PbtSearcher(
        space=space,
        metric="loss",
        smaller_is_better=True,
        max_trials=max_trials,
        max_concurrent_trials=max_concurrent_trials,
        max_time=max_time,
        time_metric=None,
        rng=np.random.default_rng(0),
        population_size=population,
        perturb_every=perturb_every,
        truncate_fraction=truncate_fraction,
        resample_probability=resample_probability,
        perturb_factors=factors,
    )


def ids(actions: list[Action]) -> list[tuple[str, int]]:
    return [(type(a).__name__, getattr(a, "trial_id", 0)) for a in actions]


def doubled(space_hparams: dict[str, float]) -> dict[str, float]:
    """What factor 2.0 with no resampling makes of SPACE's hparams (clipped)."""
    return {
        "x": min(space_hparams["x"] * 2, 1.0),
        "n": min(math.ceil(space_hparams["n"] * 2), 100),
        "lr": min(space_hparams["lr"] * 2, 0.1),
    }


def test_bottom_is_replaced_by_a_perturbed_clone_of_the_top() -> None:
    s = make()
    first = s.initial()
    assert [(a.trial_id, a.until, a.clone_from) for a in first if isinstance(a, Create)] == [
        (1, 2, None),
        (2, 2, None),
        (3, 2, None),
        (4, 2, None),
    ]
    donor_hparams = first[0].hparams  # type: ignore[union-attr]
    # members reaching the end of generation 0 wait while others still train
    assert s.on_result(1, 2, {"loss": 0.1}) == []
    assert s.on_result(2, 2, {"loss": 0.2}) == []
    assert s.on_result(3, 2, {"loss": 0.3}) == []
    # the last one completes the generation: n = max(1, floor(0.25*4)) = 1; trial 4 is
    # the worst and is replaced by a clone of the best (trial 1), whose hparams are
    # perturbed (factor 2, clipped); everyone else continues to the next generation's end
    out = s.on_result(4, 2, {"loss": 0.9})
    assert out[:4] == [Stop(4, R.EARLY_STOPPED), Continue(1, 4), Continue(2, 4), Continue(3, 4)]
    clone = out[4]
    assert isinstance(clone, Create) and len(out) == 5
    assert (clone.trial_id, clone.clone_from, clone.until) == (5, 1, 4)
    assert clone.hparams == pytest.approx(doubled(donor_hparams))
    assert s.lineage == [
        LineageEntry(trial_id=5, donor_id=1, generation=1, donor_time=2.0, hparams=clone.hparams)
    ]
    # the last generation: each member is FINISHED as it reaches max_time
    assert s.on_result(2, 4, {"loss": 0.1}) == [Stop(2, R.FINISHED)]
    assert s.on_result(5, 4, {"loss": 0.1}) == [Stop(5, R.FINISHED)]
    assert s.on_result(1, 4, {"loss": 0.1}) == [Stop(1, R.FINISHED)]
    assert s.progress() < 1.0
    assert s.on_result(3, 4, {"loss": 0.1}) == [Stop(3, R.FINISHED), Shutdown()]
    assert s.progress() == 1.0


def test_members_waiting_for_a_slot_take_the_slot_of_members_that_finished_the_generation() -> None:
    s = make(max_concurrent_trials=2)
    assert ids(s.initial()) == [("Create", 1), ("Create", 2)]
    # members 3 and 4 still wait for a slot: those reaching the end pause and hand it over
    assert ids(s.on_result(1, 2, {"loss": 0.1})) == [("Pause", 1), ("Create", 3)]
    assert ids(s.on_result(2, 2, {"loss": 0.2})) == [("Pause", 2), ("Create", 4)]
    # nobody is left waiting: trial 3 just waits on its slot
    assert s.on_result(3, 2, {"loss": 0.3}) == []
    out = s.on_result(4, 2, {"loss": 0.9})
    # 4 is replaced (its slot goes to the clone); 3 keeps its slot and continues; the
    # paused 1 and 2 queue behind the clone
    assert ids(out) == [("Stop", 4), ("Continue", 3), ("Create", 5)]
    assert out[2].clone_from == 1  # type: ignore[union-attr]
    # 3 finishes: its slot resumes the best paused member
    assert s.on_result(3, 4, {"loss": 0.1}) == [Stop(3, R.FINISHED), Continue(1, 4)]


def test_waiting_members_pause_so_that_clones_are_created_before_donors_move_on() -> None:
    s = make(max_concurrent_trials=2)
    s.initial()
    s.on_result(1, 2, {"loss": 0.9})  # Pause(1), Create(3)
    s.on_result(2, 2, {"loss": 0.8})  # Pause(2), Create(4)
    s.on_result(3, 2, {"loss": 0.1})
    out = s.on_result(4, 2, {"loss": 0.2})
    # ranking 3, 4, 2, 1: the worst (1, paused) is replaced by a clone of 3. There is no
    # free slot, so the worst waiting member (4) pauses for the clone; 3 keeps its slot
    assert ids(out) == [("Stop", 1), ("Pause", 4), ("Continue", 3), ("Create", 5)]
    assert out[3].clone_from == 3  # type: ignore[union-attr]
    # the clone was created from 3 at the generation's end
    assert s.lineage[0].donor_time == 2.0
    # paused members resume in rank order as slots free up
    assert s.on_result(3, 4, {"loss": 0.1}) == [Stop(3, R.FINISHED), Continue(4, 4)]
    assert s.on_result(5, 4, {"loss": 0.1}) == [Stop(5, R.FINISHED), Continue(2, 4)]


def test_no_clones_beyond_max_trials_then_the_bottom_simply_continues() -> None:
    s = make(max_trials=4)
    s.initial()
    for t, loss in [(1, 0.1), (2, 0.2), (3, 0.3)]:
        s.on_result(t, 2, {"loss": loss})
    assert s.on_result(4, 2, {"loss": 0.9}) == [
        Continue(1, 4),
        Continue(2, 4),
        Continue(3, 4),
        Continue(4, 4),
    ]
    assert s.lineage == []


def test_exited_members_rank_worst_and_are_replaced() -> None:
    s = make(population=4, truncate_fraction=0.25)
    s.initial()
    assert s.on_trial_exited(2, ExitReason.ERRORED) == []
    s.on_result(1, 2, {"loss": 0.5})
    s.on_result(3, 2, {"loss": math.nan})  # NaN ranks worst among the live
    out = s.on_result(4, 2, {"loss": 0.4})
    # ranking 4, 1, 3 (NaN), 2 (exited); n = 1: the bottom is the exited 2, replaced by a
    # clone of the best (4); 3 is not in the bottom 1 and continues
    assert ids(out) == [("Continue", 4), ("Continue", 1), ("Continue", 3), ("Create", 5)]
    assert out[3].clone_from == 4  # type: ignore[union-attr]


def test_exited_members_beyond_the_budget_are_dropped() -> None:
    s = make(population=4, max_trials=4)
    s.initial()
    s.on_trial_exited(2, ExitReason.ERRORED)
    s.on_trial_exited(3, ExitReason.KILLED)
    s.on_result(1, 2, {"loss": 0.5})
    out = s.on_result(4, 2, {"loss": 0.4})
    assert out == [Continue(4, 4), Continue(1, 4)]
    s.on_result(4, 4, {"loss": 0.1})
    assert s.on_result(1, 4, {"loss": 0.1}) == [Stop(1, R.FINISHED), Shutdown()]


def test_a_population_that_dies_out_shuts_down() -> None:
    s = make(population=2)
    s.initial()
    assert s.on_trial_exited(1, ExitReason.ERRORED) == []
    assert s.on_trial_exited(2, ExitReason.ERRORED) == [Shutdown()]


def test_clone_hparams_clip_at_bounds_move_log_params_and_categorical_neighbours() -> None:
    space: Space = {
        "x": Double(0.0, 1.0),
        "lr": Log(-4, -1),
        "c": Categorical(("a", "b", "c")),
    }
    s = make(space=space, factors=(10.0,), population=2, truncate_fraction=0.5, max_time=6)
    first = s.initial()
    donor = first[0].hparams  # type: ignore[union-attr]
    s.on_result(1, 2, {"loss": 0.1})
    clone = s.on_result(2, 2, {"loss": 0.2})[-1]
    assert isinstance(clone, Create) and clone.clone_from == 1
    assert clone.hparams["x"] == pytest.approx(min(donor["x"] * 10, 1.0))
    # a factor of 10 is one decade up in the exponent, clipped at 10^-1
    assert math.log10(clone.hparams["lr"]) == pytest.approx(min(math.log10(donor["lr"]) + 1, -1))
    index = ("a", "b", "c").index(donor["c"])
    assert abs(("a", "b", "c").index(clone.hparams["c"]) - index) == 1


def test_lineage_tracks_clones_of_clones_and_survives_snapshot() -> None:
    s = make(population=2, truncate_fraction=0.5, max_time=6)
    s.initial()
    s.on_result(1, 2, {"loss": 0.1})
    s.on_result(2, 2, {"loss": 0.2})  # 2 replaced by clone 3 of 1
    s.on_result(1, 4, {"loss": 0.3})
    s.on_result(3, 4, {"loss": 0.2})  # 1 replaced by clone 4 of 3
    assert [(e.trial_id, e.donor_id, e.generation, e.donor_time) for e in s.lineage] == [
        (3, 1, 1, 2.0),
        (4, 3, 2, 4.0),
    ]
    restored = make(population=2, truncate_fraction=0.5, max_time=6)
    restored.restore(json.loads(json.dumps(s.snapshot(), allow_nan=False)))
    assert restored.lineage == s.lineage
    assert restored.generation == s.generation == 2


def test_truncate_count() -> None:
    assert truncate_count(1, 0.2) == 0  # a population of one has nobody to copy
    assert truncate_count(2, 0.2) == 1  # at least one once there are two
    assert truncate_count(10, 0.2) == 2
    assert truncate_count(5, 0.5) == 2  # never more than half


def test_pbt_plan() -> None:
    plan = pbt_plan(
        max_time=20, perturb_every=5, population_size=8, truncate_fraction=0.2, max_trials=40
    )
    assert plan.generation_ends == (5, 10, 15, 20)
    assert plan.clones_per_generation == (1, 1, 1, 0)
    assert (plan.trials, plan.budget) == (11, 160)
    capped = pbt_plan(
        max_time=20, perturb_every=5, population_size=8, truncate_fraction=0.2, max_trials=9
    )
    assert capped.clones_per_generation == (1, 0, 0, 0) and capped.trials == 9
    # the last generation is shorter when perturb_every does not divide max_time
    uneven = pbt_plan(
        max_time=10, perturb_every=4, population_size=2, truncate_fraction=0.5, max_trials=None
    )
    assert uneven.generation_ends == (4, 8, 10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"population": 0}, "population_size"),
        ({"population": 5, "max_trials": 4}, "max_trials"),
        ({"perturb_every": 0}, "perturb_every"),
        ({"truncate_fraction": 0.6}, "truncate_fraction"),
        ({"resample_probability": 2.0}, "resample_probability"),
        ({"factors": ()}, "perturb_factors"),
    ],
)
def test_bad_settings_are_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(**kwargs)  # type: ignore[arg-type]


def test_reports_before_the_generation_end_decide_nothing() -> None:
    s = make()
    s.initial()
    assert s.on_result(1, 1, {"loss": 0.1}) == []
    assert s.progress() == 0.0
    assert s.on_result(1, 2, {"loss": 0.1}) == []
    assert 0.0 < s.progress() < 0.5
    assert s.on_result(1, 3, {"loss": 0.1}) == []  # a waiting member's report is ignored
    assert s.on_result(2, 2, {"loss": 0.1}) == []


def test_a_report_past_the_next_generation_end_skips_the_ends_already_passed() -> None:
    s = make(population=2, truncate_fraction=0.5, max_time=6)  # ends 2, 4, 6
    s.initial()
    # member 1's first report is at step 5: past the ends at 2 and 4
    assert s.on_result(1, 5, {"loss": 0.1}) == []
    out = s.on_result(2, 2, {"loss": 0.2})
    # the next generation is the first ending beyond 5: the last one (6)
    assert ids(out) == [("Stop", 2), ("Continue", 1), ("Create", 3)]
    assert out[1] == Continue(1, 6)
    assert (out[2].until, out[2].clone_from) == (6, 1)  # type: ignore[union-attr]
    assert s.generation == 2 and s.lineage[0].donor_time == 5


def test_a_member_already_at_max_time_ends_exploitation() -> None:
    s = make(population=2, truncate_fraction=0.5, max_time=6)
    s.initial()
    assert s.on_result(1, 7, {"loss": 0.1}) == []
    # member 1 is past max_time: it finishes, member 2 trains on to max_time, no clones
    assert s.on_result(2, 2, {"loss": 0.2}) == [Stop(1, R.FINISHED), Continue(2, 6)]
    assert s.on_result(2, 6, {"loss": 0.2}) == [Stop(2, R.FINISHED), Shutdown()]
    assert s.lineage == []
