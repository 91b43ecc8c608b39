"""Hyperparameter space: the parameter kinds, and (filled in by the search core) sampling,
grid enumeration and PBT perturbation. Pure: randomness is an injected Generator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

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


@dataclass(frozen=True)
class Double:
    minval: float
    maxval: float
    count: int | None = None


@dataclass(frozen=True)
class Log:
    """Values base**e for e uniform in [minval, maxval] (exponents)."""

    minval: float
    maxval: float
    base: float = 10.0
    count: int | None = None


@dataclass(frozen=True)
class Categorical:
    vals: tuple[Any, ...]


Param = Union[Const, Int, Double, Log, Categorical]
Space = dict[str, Union[Param, "Space"]]
"""A (possibly nested) mapping of names to parameters."""
