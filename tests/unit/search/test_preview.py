"""preview(): plan data and a simulated run per searcher, JSON-able; format_preview()."""

from __future__ import annotations

import json

import pytest

from resolute.search.asha_plan import asha_plan
from resolute.search.preview import format_preview, preview
from resolute.search.settings import SearcherSettings, make_searcher
from resolute.search.space import Categorical, Double, Int, Log, Space

SPACE: Space = {
    "lr": Log(-4, -1, count=3),
    "model": {"width": Int(16, 64, count=2), "act": Categorical(("relu", "gelu"))},
    "dropout": Double(0.0, 0.5, count=2),
}


def strict_json(data: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = json.loads(json.dumps(data, allow_nan=False))
    return out


def test_asha_preview_shows_brackets_and_budget() -> None:
    settings = SearcherSettings(
        name="asha", metric="loss", max_trials=64, max_time=64, max_concurrent_trials=8
    )
    data = strict_json(preview(settings, SPACE))
    plan = asha_plan(
        max_time=64,
        max_trials=64,
        divisor=4,
        max_rungs=5,
        mode="standard",
        max_concurrent_trials=8,
    )
    assert data["asha"] == strict_json(plan.to_json())
    assert data["trials"] == 64 and data["full_budget"] == 64 * 64
    sim = data["simulation"]
    assert isinstance(sim, dict)
    assert sim["trials"] == 64 and sim["max_active"] <= 8
    by_units = {row["units"]: row["trials"] for row in sim["trials_by_units"]}
    # a trial trains to a rung end of its bracket: 1, 4, 16 or 64
    assert set(by_units) <= {1, 4, 16, 64} and sum(by_units.values()) == 64
    assert sim["units_trained"] == sum(u * n for u, n in by_units.items())

    text = format_preview(data)
    assert "asha (promotion: stop, mode: standard)" in text
    assert "Rung ends (steps)" in text
    # the bracket rows as worked in test_asha: rung ends, trials, concurrency, budget
    assert "1, 4, 16, 64" in text and "45, 11, 2, 1" in text
    assert "Expected budget 418 steps vs 4096 to train every trial to max_time (10.2%)" in text


def test_pbt_preview_shows_generations() -> None:
    settings = SearcherSettings(
        name="pbt",
        metric="accuracy",
        smaller_is_better=False,
        max_trials=40,
        max_time=20,
        time_metric="epoch",
        population_size=8,
        perturb_every=5,
    )
    data = strict_json(preview(settings, SPACE, seed=3))
    assert data["pbt"] == {
        "generation_ends": [5, 10, 15, 20],
        "population": 8,
        "clones_per_generation": [1, 1, 1, 0],
        "trials": 11,
        "budget": 160,
    }
    sim = data["simulation"]
    assert isinstance(sim, dict) and sim["trials"] == 11 and sim["units_trained"] == 160
    text = format_preview(data)
    assert "Generations (population 8)" in text and "Ends at (epoch)" in text
    assert "larger is better" in text


@pytest.mark.parametrize(
    ("settings", "trials"),
    [
        (SearcherSettings(name="grid", metric="loss", max_time=10), 3 * 2 * 2 * 2),
        (SearcherSettings(name="grid", metric="loss", max_time=10, max_trials=5), 5),
        (SearcherSettings(name="random", metric="loss", max_time=10, max_trials=7), 7),
        (SearcherSettings(name="single", metric="loss", max_time=10), 1),
    ],
)
def test_trial_counts(settings: SearcherSettings, trials: int) -> None:
    data = strict_json(preview(settings, SPACE))
    assert data["trials"] == trials
    assert data["full_budget"] == trials * 10
    sim = data["simulation"]
    assert isinstance(sim, dict)
    assert sim["trials_by_units"] == [{"units": 10, "trials": trials}]
    if settings.name == "grid":
        assert data["grid_points"] == 24
        assert "Grid points: 24" in format_preview(data)


def test_preview_is_deterministic_per_seed() -> None:
    settings = SearcherSettings(
        name="asha", metric="loss", max_trials=32, max_time=16, promotion="pause"
    )
    assert preview(settings, SPACE, seed=1) == preview(settings, SPACE, seed=1)


def test_preview_rejects_settings_a_searcher_cannot_run() -> None:
    with pytest.raises(ValueError, match="max_trials"):
        preview(SearcherSettings(name="asha", metric="loss", max_time=16), SPACE)
    with pytest.raises(ValueError, match="population_size"):
        preview(SearcherSettings(name="pbt", metric="loss", max_time=16, max_trials=4), SPACE)
    with pytest.raises(ValueError, match="count"):
        preview(SearcherSettings(name="grid", metric="loss", max_time=16), {"x": Double(0, 1)})


def test_make_searcher_builds_each_kind() -> None:
    for name in ("single", "random", "grid", "asha", "pbt"):
        settings = SearcherSettings(
            name=name,  # type: ignore[arg-type]
            metric="loss",
            max_time=8,
            max_trials=None if name in ("single", "grid") else 8,
            population_size=4 if name == "pbt" else None,
            perturb_every=2 if name == "pbt" else None,
        )
        searcher = make_searcher(settings, SPACE, 0)
        assert searcher.snapshot()["kind"] == name
