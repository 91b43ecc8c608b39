"""Hyperparameter space: the parameter kinds, sampling, grid enumeration and PBT perturbation.

Pure: randomness comes only from the injected ``numpy.random.Generator``, and every function
walks the space in its insertion order, so the same space and generator state always give
the same draws.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

HParams = dict[str, Any]
"""A trial's hyperparameters: a (possibly nested) dict of plain values."""


@dataclass(frozen=True)
class Const:
    value: Any


@dataclass(frozen=True)
class Int:
    minval: int
    maxval: int
    count: int | None = None  # grid points
    perturb: bool = True  # False: PBT keeps the donor's value (e.g. an architecture size)


@dataclass(frozen=True)
class Double:
    minval: float
    maxval: float
    count: int | None = None
    perturb: bool = True


@dataclass(frozen=True)
class Log:
    """Values base**e for e uniform in [minval, maxval] (exponents)."""

    minval: float
    maxval: float
    base: float = 10.0
    count: int | None = None
    perturb: bool = True


@dataclass(frozen=True)
class Categorical:
    vals: tuple[Any, ...]
    perturb: bool = True


Param = Const | Int | Double | Log | Categorical
Space = dict[str, Union[Param, "Space"]]
"""A (possibly nested) mapping of names to parameters."""

_PARAM_TYPES = (Const, Int, Double, Log, Categorical)


def iter_params(space: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Param]]:
    """Every parameter of ``space`` with its dotted path, depth first in insertion order."""
    for name, node in space.items():
        path = f"{prefix}{name}"
        if isinstance(node, _PARAM_TYPES):
            yield path, node
        elif isinstance(node, Mapping):
            yield from iter_params(node, prefix=f"{path}.")
        else:
            raise ValueError(
                f"hyperparameter {path!r} is a {type(node).__name__}, not a parameter: "
                "declare it as const, int, double, log or categorical"
            )


def check_space(space: Space) -> None:
    """Raise ValueError naming the first parameter whose declaration cannot be sampled."""
    for path, param in iter_params(space):
        if isinstance(param, Int | Double | Log):
            if not (math.isfinite(param.minval) and math.isfinite(param.maxval)):
                raise ValueError(f"hyperparameter {path!r}: minval and maxval must be finite")
            if param.minval > param.maxval:
                raise ValueError(
                    f"hyperparameter {path!r}: minval {param.minval} > maxval {param.maxval}; "
                    "swap them"
                )
            if param.count is not None and param.count < 1:
                raise ValueError(f"hyperparameter {path!r}: count must be at least 1")
        if isinstance(param, Log) and (param.base <= 0 or param.base == 1):
            raise ValueError(f"hyperparameter {path!r}: log base must be positive and not 1")
        if isinstance(param, Categorical) and not param.vals:
            raise ValueError(f"hyperparameter {path!r}: categorical needs at least one value")


# ---------------------------------------------------------------------------------------
# sampling


def sample(space: Space, rng: np.random.Generator) -> HParams:
    """Draw one point from the prior, preserving the nesting of ``space``."""
    out: HParams = {}
    for name, node in space.items():
        if isinstance(node, _PARAM_TYPES):
            out[name] = _sample_one(node, rng)
        else:
            out[name] = sample(node, rng)
    return out


def _sample_one(param: Param, rng: np.random.Generator) -> Any:
    if isinstance(param, Const):
        return param.value
    if isinstance(param, Int):
        return int(rng.integers(param.minval, param.maxval, endpoint=True))
    if isinstance(param, Double):
        return float(rng.uniform(param.minval, param.maxval))
    if isinstance(param, Log):
        return float(param.base ** float(rng.uniform(param.minval, param.maxval)))
    return param.vals[int(rng.integers(len(param.vals)))]


# ---------------------------------------------------------------------------------------
# grid


def _round_half_up(x: float) -> int:
    # Determined rounds grid ints with Go's math.Round (half away from zero); Python's round()
    # rounds half to even, which would give different grids for the same config.
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


def _axis(path: str, param: Param) -> list[Any]:
    if isinstance(param, Const):
        return [param.value]
    if isinstance(param, Categorical):
        return list(param.vals)
    if param.count is None:
        raise ValueError(
            f"grid search needs a count for hyperparameter {path!r}: add `count: N` "
            "(the number of evenly spaced values to try) or make it const/categorical"
        )
    count = param.count
    if isinstance(param, Int):
        count = min(count, param.maxval - param.minval + 1)
        if count == 1:
            return [_round_half_up((param.minval + param.maxval) / 2.0)]
        ints = [
            _round_half_up(param.minval + i * (param.maxval - param.minval) / (count - 1))
            for i in range(count)
        ]
        return list(dict.fromkeys(ints))
    if count == 1:
        lin = [(param.minval + param.maxval) / 2.0]
    else:
        lin = [param.minval + i * (param.maxval - param.minval) / (count - 1) for i in range(count)]
    if isinstance(param, Log):
        return [float(param.base**e) for e in lin]
    return [float(v) for v in lin]


def grid_points(space: Space) -> list[HParams]:
    """The full cartesian product of every parameter's axis, first parameter slowest.

    Numeric parameters contribute ``count`` evenly spaced values (the midpoint when count is
    1; Int values rounded half up and deduplicated; Log values evenly spaced in exponent
    space); Categorical all its values; Const its one value. A numeric parameter without a
    count raises ValueError naming its path.
    """
    params = list(iter_params(space))
    axes = [_axis(path, param) for path, param in params]
    points: list[HParams] = []
    for combo in itertools.product(*axes):
        values = {path: value for (path, _), value in zip(params, combo, strict=True)}
        points.append(_rebuild(space, values, ""))
    return points


def _rebuild(space: Mapping[str, Any], values: Mapping[str, Any], prefix: str) -> HParams:
    out: HParams = {}
    for name, node in space.items():
        path = f"{prefix}{name}"
        if isinstance(node, _PARAM_TYPES):
            out[name] = values[path]
        else:
            out[name] = _rebuild(node, values, f"{path}.")
    return out


# ---------------------------------------------------------------------------------------
# PBT explore


def perturb(
    space: Space,
    hparams: HParams,
    rng: np.random.Generator,
    *,
    factors: Sequence[float],
    resample_probability: float,
) -> HParams:
    """A point near ``hparams`` (PBT explore), always inside the declared ranges.

    For every non-const parameter, one uniform draw decides: below ``resample_probability``
    the value is resampled from the prior; otherwise it moves:

    - Int / Double: multiplied by a factor drawn uniformly from ``factors``. Ints round away
      from the old value (floor for a factor below 1, ceil above 1), so small ints still move.
    - Log: also multiplied, which shifts the exponent by log_base(factor): the step is the
      same relative size wherever the value sits in its decades, and clipping the value to
      [base**minval, base**maxval] is exactly clipping the exponent to [minval, maxval].
    - Categorical: moves one place left or right in ``vals`` (a fair draw), turning back at
      either end; a value not in ``vals`` is resampled.
    - Const, and any parameter declared with ``perturb=False``: unchanged (a member keeps
      its donor's value; architecture sizes must, or the donor's weights do not load).

    Every result is clipped to its parameter's range.
    """
    if not factors or any(not (f > 0 and math.isfinite(f)) for f in factors):
        raise ValueError(f"perturb factors must be positive numbers, got {list(factors)!r}")
    if not 0.0 <= resample_probability <= 1.0:
        raise ValueError(f"resample_probability must be in [0, 1], got {resample_probability!r}")
    out: HParams = {}
    for name, node in space.items():
        old = hparams.get(name)
        if isinstance(node, _PARAM_TYPES):
            out[name] = _perturb_one(node, old, rng, factors, resample_probability)
        else:
            out[name] = perturb(
                node,
                old if isinstance(old, dict) else {},
                rng,
                factors=factors,
                resample_probability=resample_probability,
            )
    return out


def _perturb_one(
    param: Param,
    old: Any,
    rng: np.random.Generator,
    factors: Sequence[float],
    resample_probability: float,
) -> Any:
    if isinstance(param, Const):
        return param.value
    if not param.perturb and old is not None:
        return old
    if float(rng.random()) < resample_probability or old is None:
        return _sample_one(param, rng)
    if isinstance(param, Categorical):
        if old not in param.vals:
            return _sample_one(param, rng)
        index = param.vals.index(old)
        step = -1 if int(rng.integers(2)) == 0 else 1
        if not 0 <= index + step < len(param.vals):
            step = -step
        if not 0 <= index + step < len(param.vals):
            return old  # a one-value categorical has no neighbour
        return param.vals[index + step]
    factor = float(factors[int(rng.integers(len(factors)))])
    moved = float(old) * factor
    if isinstance(param, Int):
        rounded = math.floor(moved) if factor < 1 else math.ceil(moved)
        return int(min(max(rounded, param.minval), param.maxval))
    if isinstance(param, Log):
        low, high = param.base**param.minval, param.base**param.maxval
        return float(min(max(moved, min(low, high)), max(low, high)))
    return float(min(max(moved, param.minval), param.maxval))


# ---------------------------------------------------------------------------------------
# flatten


def flatten(hparams: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested hparams as one level with dotted keys (``{"opt": {"lr": 1}}`` -> ``opt.lr``)."""
    out: dict[str, Any] = {}
    for name, value in hparams.items():
        path = f"{prefix}{name}"
        if isinstance(value, Mapping):
            out.update(flatten(value, prefix=f"{path}."))
        else:
            out[path] = value
    return out
