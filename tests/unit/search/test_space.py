"""Sampling, grid enumeration, PBT perturbation and flattening of hyperparameter spaces."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resolute.search.space import (
    Categorical,
    Const,
    Double,
    Int,
    Log,
    Space,
    check_space,
    flatten,
    grid_points,
    iter_params,
    perturb,
    sample,
)

SPACE: Space = {
    "lr": Log(-4, -1),
    "optimizer": {
        "momentum": Double(0.5, 0.99),
        "layers": Int(1, 3),
        "kind": Categorical(("sgd", "adam")),
    },
    "batch": Const(32),
}


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- sample ---------------------------------------------------------------------------


def test_sample_keeps_nesting_types_and_ranges() -> None:
    g = rng()
    for _ in range(200):
        h = sample(SPACE, g)
        assert set(h) == {"lr", "optimizer", "batch"}
        assert set(h["optimizer"]) == {"momentum", "layers", "kind"}
        assert isinstance(h["lr"], float) and 1e-4 <= h["lr"] <= 1e-1
        assert isinstance(h["optimizer"]["momentum"], float)
        assert 0.5 <= h["optimizer"]["momentum"] <= 0.99
        assert type(h["optimizer"]["layers"]) is int and 1 <= h["optimizer"]["layers"] <= 3
        assert h["optimizer"]["kind"] in ("sgd", "adam")
        assert h["batch"] == 32


def test_sample_int_is_inclusive_and_categorical_uniform() -> None:
    g = rng(1)
    draws = [sample({"n": Int(1, 3), "c": Categorical(("a", "b", "c"))}, g) for _ in range(3000)]
    ints = [d["n"] for d in draws]
    assert set(ints) == {1, 2, 3}
    cats = [d["c"] for d in draws]
    for value in ("a", "b", "c"):
        assert 800 < cats.count(value) < 1200  # ~1000 each


def test_sample_log_is_uniform_in_exponent() -> None:
    g = rng(2)
    exps = [math.log10(sample({"lr": Log(-6, -2)}, g)["lr"]) for _ in range(4000)]
    assert min(exps) >= -6 and max(exps) <= -2
    below = sum(e < -4 for e in exps) / len(exps)
    assert 0.45 < below < 0.55  # half the mass below the middle exponent


def test_sample_log_other_base() -> None:
    value = sample({"x": Log(1, 3, base=2)}, rng(3))["x"]
    assert 2.0 <= value <= 8.0


def test_sample_is_deterministic_given_generator_state() -> None:
    assert sample(SPACE, rng(7)) == sample(SPACE, rng(7))
    assert sample(SPACE, rng(7)) != sample(SPACE, rng(8))


# -- grid -----------------------------------------------------------------------------


def test_grid_points_full_product_first_parameter_slowest() -> None:
    space: Space = {
        "a": Categorical((1, 2)),
        "b": {"c": Double(0.0, 1.0, count=3)},
        "k": Const("x"),
    }
    points = grid_points(space)
    assert points == [
        {"a": 1, "b": {"c": 0.0}, "k": "x"},
        {"a": 1, "b": {"c": 0.5}, "k": "x"},
        {"a": 1, "b": {"c": 1.0}, "k": "x"},
        {"a": 2, "b": {"c": 0.0}, "k": "x"},
        {"a": 2, "b": {"c": 0.5}, "k": "x"},
        {"a": 2, "b": {"c": 1.0}, "k": "x"},
    ]


def test_grid_int_axis_rounds_half_up_and_deduplicates() -> None:
    # 0 + i*10/3 for i = 0..3: 0, 3.33, 6.67, 10 -> 0, 3, 7, 10
    assert [p["n"] for p in grid_points({"n": Int(0, 10, count=4)})] == [0, 3, 7, 10]
    # more points than integers: clamped to the 3 integers
    assert [p["n"] for p in grid_points({"n": Int(1, 3, count=5)})] == [1, 2, 3]
    # count 1 is the midpoint, 1.5 rounds up (Go's math.Round, not banker's rounding)
    assert [p["n"] for p in grid_points({"n": Int(1, 2, count=1)})] == [2]
    # 0, 0.5, 1.0, 1.5, 2 -> 0, 1, 1, 2, 2 -> deduplicated
    assert [p["n"] for p in grid_points({"n": Int(0, 2, count=5)})] == [0, 1, 2]


def test_grid_log_axis_evenly_spaced_in_exponent() -> None:
    values = [p["lr"] for p in grid_points({"lr": Log(-3, -1, count=3)})]
    assert values == pytest.approx([1e-3, 1e-2, 1e-1])
    assert [p["x"] for p in grid_points({"x": Log(0, 4, base=2, count=1)})] == [4.0]


def test_grid_double_count_one_is_midpoint() -> None:
    assert grid_points({"x": Double(1.0, 2.0, count=1)}) == [{"x": 1.5}]


def test_grid_numeric_without_count_names_the_parameter_path() -> None:
    with pytest.raises(ValueError, match=r"'optimizer\.momentum'.*count"):
        grid_points({"optimizer": {"momentum": Double(0.1, 0.9)}})


def test_grid_size_is_product_of_axes() -> None:
    space: Space = {
        "a": Int(1, 100, count=5),
        "b": Log(-5, 0, count=6),
        "c": Categorical(("x", "y", "z")),
    }
    assert len(grid_points(space)) == 5 * 6 * 3


# -- perturb --------------------------------------------------------------------------


def test_perturb_multiplies_by_a_factor_and_clips() -> None:
    space: Space = {"x": Double(0.0, 1.0)}
    up = perturb(space, {"x": 0.5}, rng(), factors=(1.2,), resample_probability=0.0)
    assert up["x"] == pytest.approx(0.6)
    clipped = perturb(space, {"x": 0.95}, rng(), factors=(1.2,), resample_probability=0.0)
    assert clipped["x"] == 1.0
    down = perturb(
        {"x": Double(0.5, 1.0)}, {"x": 0.55}, rng(), factors=(0.8,), resample_probability=0.0
    )
    assert down["x"] == 0.5


def test_perturb_int_moves_away_and_clips() -> None:
    space: Space = {"n": Int(1, 10)}
    # ceil(1 * 1.2) = 2: small ints still move up; floor(2 * 0.8) = 1
    assert perturb(space, {"n": 1}, rng(), factors=(1.2,), resample_probability=0.0)["n"] == 2
    assert perturb(space, {"n": 2}, rng(), factors=(0.8,), resample_probability=0.0)["n"] == 1
    assert perturb(space, {"n": 10}, rng(), factors=(1.2,), resample_probability=0.0)["n"] == 10
    assert perturb(space, {"n": 1}, rng(), factors=(0.8,), resample_probability=0.0)["n"] == 1


def test_perturb_log_moves_in_exponent_space_and_clips_there() -> None:
    space: Space = {"lr": Log(-4, -1)}
    out = perturb(space, {"lr": 1e-3}, rng(), factors=(2.0,), resample_probability=0.0)
    # multiplying by 2 shifts the exponent by log10(2)
    assert math.log10(out["lr"]) == pytest.approx(-3 + math.log10(2))
    top = perturb(space, {"lr": 0.09}, rng(), factors=(2.0,), resample_probability=0.0)
    assert top["lr"] == pytest.approx(0.1)
    bottom = perturb(space, {"lr": 1.1e-4}, rng(), factors=(0.5,), resample_probability=0.0)
    assert bottom["lr"] == pytest.approx(1e-4)


def test_perturb_categorical_moves_to_a_neighbour() -> None:
    space: Space = {"c": Categorical(("a", "b", "c", "d"))}
    g = rng(4)
    seen_from_b = {
        perturb(space, {"c": "b"}, g, factors=(1.2,), resample_probability=0.0)["c"]
        for _ in range(50)
    }
    assert seen_from_b == {"a", "c"}
    # at either end the only neighbour is inward
    for _ in range(20):
        assert perturb(space, {"c": "a"}, g, factors=(1.2,), resample_probability=0.0)["c"] == "b"
        assert perturb(space, {"c": "d"}, g, factors=(1.2,), resample_probability=0.0)["c"] == "c"
    one = {"c": Categorical(("only",))}
    assert perturb(one, {"c": "only"}, g, factors=(1.2,), resample_probability=0.0) == {"c": "only"}


def test_perturb_const_unchanged_and_nesting_kept() -> None:
    out = perturb(
        SPACE, sample(SPACE, rng(5)), rng(6), factors=(0.8, 1.2), resample_probability=0.0
    )
    assert out["batch"] == 32
    assert set(out["optimizer"]) == {"momentum", "layers", "kind"}


def test_perturb_with_resample_probability_one_draws_from_the_prior() -> None:
    space: Space = {"x": Double(0.0, 1.0)}
    g = rng(9)
    values = {
        perturb(space, {"x": 0.5}, g, factors=(1.0,), resample_probability=1.0)["x"]
        for _ in range(20)
    }
    # factor 1.0 would keep 0.5: every value differing proves a resample happened
    assert 0.5 not in values and len(values) == 20


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), prob=st.floats(0.0, 1.0))
def test_perturb_always_stays_in_range(seed: int, prob: float) -> None:
    g = rng(seed)
    point = sample(SPACE, g)
    for _ in range(10):
        point = perturb(SPACE, point, g, factors=(0.5, 0.8, 1.2, 3.0), resample_probability=prob)
        assert 1e-4 - 1e-12 <= point["lr"] <= 1e-1 + 1e-12
        assert 0.5 <= point["optimizer"]["momentum"] <= 0.99
        assert 1 <= point["optimizer"]["layers"] <= 3
        assert point["optimizer"]["kind"] in ("sgd", "adam")
        assert point["batch"] == 32


def test_perturb_rejects_bad_factors_and_probability() -> None:
    with pytest.raises(ValueError, match="factors"):
        perturb(SPACE, {}, rng(), factors=(), resample_probability=0.1)
    with pytest.raises(ValueError, match="factors"):
        perturb(SPACE, {}, rng(), factors=(-1.0,), resample_probability=0.1)
    with pytest.raises(ValueError, match="resample_probability"):
        perturb(SPACE, {}, rng(), factors=(1.2,), resample_probability=1.5)


# -- flatten, iteration, checks -------------------------------------------------------


def test_flatten_uses_dotted_keys() -> None:
    nested = {"lr": 0.1, "optimizer": {"momentum": 0.9, "inner": {"eps": 1e-8}}, "batch": 32}
    assert flatten(nested) == {
        "lr": 0.1,
        "optimizer.momentum": 0.9,
        "optimizer.inner.eps": 1e-8,
        "batch": 32,
    }


def test_iter_params_walks_depth_first() -> None:
    assert [path for path, _ in iter_params(SPACE)] == [
        "lr",
        "optimizer.momentum",
        "optimizer.layers",
        "optimizer.kind",
        "batch",
    ]


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"a": {"b": Int(5, 1)}}, r"'a\.b'.*swap"),
        ({"x": Double(0.0, math.inf)}, "finite"),
        ({"x": Log(-1, 1, base=1.0)}, "base"),
        ({"x": Categorical(())}, "at least one"),
        ({"x": Int(1, 5, count=0)}, "count"),
        ({"x": 3}, "not a parameter"),
    ],
)
def test_check_space_names_the_bad_parameter(space: Space, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_space(space)


def test_perturb_false_keeps_the_donors_value_even_when_resampling() -> None:
    space: Space = {
        "width": Int(16, 512, perturb=False),
        "act": Categorical(("relu", "gelu", "tanh"), perturb=False),
        "lr": Log(-4, -1, perturb=False),
        "drop": Double(0.0, 0.5, perturb=False),
        "momentum": Double(0.5, 0.99),
    }
    donor = {"width": 128, "act": "gelu", "lr": 0.01, "drop": 0.25, "momentum": 0.9}
    g = rng(11)
    for prob in (0.0, 1.0):
        outs = [
            perturb(space, donor, g, factors=(0.8, 1.2), resample_probability=prob)
            for _ in range(20)
        ]
        assert all(
            {k: o[k] for k in ("width", "act", "lr", "drop")}
            == {k: donor[k] for k in ("width", "act", "lr", "drop")}
            for o in outs
        )
        # ...while the perturbable parameter does move.
        assert any(o["momentum"] != 0.9 for o in outs)
    # A value the donor lacks is still drawn from the prior.
    assert 16 <= perturb(space, {}, g, factors=(1.2,), resample_probability=0.0)["width"] <= 512
