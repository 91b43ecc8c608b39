"""Hyperparameters as written in the experiment file, and their conversion to a Space.

A mapping entry is one of:

- a bare value (``momentum: 0.9``): a constant;
- a mapping with a string ``type`` (``{type: log, minval: -4, maxval: -1}``): a parameter;
- any other mapping: a nested group of hyperparameters.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Discriminator, Field, Tag, model_validator
from typing_extensions import TypeAliasType

from resolute.config._base import Section, StrictBool, StrictFloat, StrictInt, StrictStr
from resolute.config._issues import Issue, raise_issues
from resolute.search.space import Categorical, Const, Double, Int, Log, Space

_COUNT = Field(
    default=None,
    ge=1,
    description="the number of grid points (needed by searcher 'grid' for numeric parameters)",
)
_PERTURB = Field(
    default=True,
    description=(
        "whether PBT may change this value when it explores (false: a member keeps its "
        "donor's value; use it for architecture sizes, whose weights a clone must load)"
    ),
)


class ConstSpec(Section):
    type: Literal["const"] = "const"
    val: Any = Field(description="the fixed value handed to every trial")


class IntSpec(Section):
    type: Literal["int"]
    minval: StrictInt = Field(description="the smallest value (inclusive)")
    maxval: StrictInt = Field(description="the largest value (inclusive)")
    count: StrictInt | None = _COUNT
    perturb: StrictBool = _PERTURB

    @model_validator(mode="after")
    def _check(self) -> IntSpec:
        issues = _range_issues(self.minval, self.maxval)
        distinct = self.maxval - self.minval + 1
        if self.count is not None and not issues and self.count > distinct:
            issues.append(
                Issue(
                    ("count",),
                    f"count {self.count} exceeds the {distinct} integers in "
                    f"[{self.minval}, {self.maxval}]",
                    f"Set count to {distinct} or less, or widen the range.",
                )
            )
        raise_issues(issues)
        return self


class DoubleSpec(Section):
    type: Literal["double"]
    minval: StrictFloat = Field(description="the lower bound")
    maxval: StrictFloat = Field(description="the upper bound")
    count: StrictInt | None = _COUNT
    perturb: StrictBool = _PERTURB

    @model_validator(mode="after")
    def _check(self) -> DoubleSpec:
        raise_issues(_range_issues(self.minval, self.maxval))
        return self


class LogSpec(Section):
    """Values ``base ** e`` with the exponent ``e`` uniform in [minval, maxval]."""

    type: Literal["log"]
    minval: StrictFloat = Field(description="the smallest exponent (1e-4 is minval: -4)")
    maxval: StrictFloat = Field(description="the largest exponent (1e-1 is maxval: -1)")
    base: StrictFloat = Field(default=10.0, gt=0, description="the base of the exponents")
    count: StrictInt | None = _COUNT
    perturb: StrictBool = _PERTURB

    @model_validator(mode="after")
    def _check(self) -> LogSpec:
        issues = _range_issues(self.minval, self.maxval)
        if self.base == 1:
            issues.append(
                Issue(
                    ("base",),
                    "base 1 gives the value 1 for every exponent",
                    "Use base 10 (the default), 2 or e.",
                )
            )
        if not issues and self.minval > 0 and self.maxval < 1 and self.maxval / self.minval >= 100:
            # Values spanning decades inside (0, 1) are learning rates written as values:
            # as exponents they would give base**1e-05 .. base**0.1, about 1.0 to 1.26.
            lo, hi = (math.log(v, self.base) for v in (self.minval, self.maxval))
            issues.append(
                Issue(
                    ("minval",),
                    f"log bounds are exponents: minval {self.minval:g} and maxval {self.maxval:g} "
                    f"give values from {self.base**self.minval:.3g} to {self.base**self.maxval:.3g}",
                    f"For values from {self.minval:g} to {self.maxval:g} write minval: {lo:.3g}, maxval: {hi:.3g}.",
                )
            )
        raise_issues(issues)
        return self


class CategoricalSpec(Section):
    type: Literal["categorical"]
    vals: tuple[Any, ...] = Field(min_length=1, description="the list of choices")
    perturb: StrictBool = _PERTURB

    @model_validator(mode="after")
    def _check(self) -> CategoricalSpec:
        issues = []
        for index, value in enumerate(self.vals):
            if value in self.vals[:index]:
                issues.append(
                    Issue(
                        ("vals", index),
                        f"{value!r} is listed twice, which doubles its sampling weight",
                        "Remove the repeated value.",
                    )
                )
        raise_issues(issues)
        return self


ParameterSpec = ConstSpec | IntSpec | DoubleSpec | LogSpec | CategoricalSpec

PARAMETER_TYPES: dict[str, type[Section]] = {
    "const": ConstSpec,
    "int": IntSpec,
    "double": DoubleSpec,
    "log": LogSpec,
    "categorical": CategoricalSpec,
}

GROUP_TAG = "group"

HyperparameterName = Annotated[StrictStr, Field(pattern=r"^[^.]+$")]
"""Dots are reserved: a dotted path ('optimizer.lr') names a parameter in a nested group."""


def _kind(value: Any) -> str:
    if isinstance(value, BaseModel):
        return str(getattr(value, "type", ""))
    if isinstance(value, dict):
        kind = value.get("type")
        return kind if isinstance(kind, str) else GROUP_TAG
    return "const"


def _const_shorthand(value: Any) -> Any:
    if isinstance(value, (dict, BaseModel)):
        return value
    return {"type": "const", "val": value}


if TYPE_CHECKING:
    # mypy cannot follow the recursive alias below; to it, a group is a plain dict.
    Hyperparameter = ParameterSpec | dict[str, Any]
else:
    Hyperparameter = TypeAliasType(
        "Hyperparameter",
        Annotated[
            Annotated[ConstSpec, Tag("const")]
            | Annotated[IntSpec, Tag("int")]
            | Annotated[DoubleSpec, Tag("double")]
            | Annotated[LogSpec, Tag("log")]
            | Annotated[CategoricalSpec, Tag("categorical")]
            | Annotated[dict[HyperparameterName, "Hyperparameter"], Tag(GROUP_TAG)],
            Discriminator(_kind),
            BeforeValidator(_const_shorthand),
        ],
    )
"""One entry of ``hyperparameters``: a parameter spec or a nested group of entries."""


def _range_issues(minval: float, maxval: float) -> list[Issue]:
    if minval < maxval:
        return []
    return [
        Issue(
            ("maxval",),
            f"maxval ({maxval:g}) must be greater than minval ({minval:g})",
            "Swap them, or use a const (a bare value) for a fixed value.",
        )
    ]


def to_space(hyperparameters: dict[str, Any]) -> Space:
    """Convert validated hyperparameter specs to the searchers' parameter types."""
    space: Space = {}
    for name, spec in hyperparameters.items():
        if isinstance(spec, dict):
            space[name] = to_space(spec)
        elif isinstance(spec, ConstSpec):
            space[name] = Const(spec.val)
        elif isinstance(spec, IntSpec):
            space[name] = Int(spec.minval, spec.maxval, spec.count, perturb=spec.perturb)
        elif isinstance(spec, DoubleSpec):
            space[name] = Double(spec.minval, spec.maxval, spec.count, perturb=spec.perturb)
        elif isinstance(spec, LogSpec):
            space[name] = Log(spec.minval, spec.maxval, spec.base, spec.count, perturb=spec.perturb)
        elif isinstance(spec, CategoricalSpec):
            space[name] = Categorical(tuple(spec.vals), perturb=spec.perturb)
        else:  # pragma: no cover - the model admits nothing else
            raise TypeError(f"unexpected hyperparameter spec {spec!r}")
    return space


def iter_parameters(
    hyperparameters: dict[str, Any], prefix: str = ""
) -> list[tuple[str, ParameterSpec]]:
    """Every leaf parameter with its dotted path, in file order."""
    leaves: list[tuple[str, ParameterSpec]] = []
    for name, spec in hyperparameters.items():
        path = f"{prefix}{name}"
        if isinstance(spec, dict):
            leaves += iter_parameters(spec, prefix=f"{path}.")
        else:
            leaves.append((path, spec))
    return leaves
