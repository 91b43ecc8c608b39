"""The ``searcher`` section: one flat mapping, as in Determined, whose ``name`` picks the
algorithm. Each algorithm is its own model, so a setting that belongs to another one is
an error that names the searcher it belongs to."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from resolute.config._base import Section, StrictBool, StrictFloat, StrictInt, StrictStr
from resolute.config._issues import Issue, raise_issues

_MAX_TRIALS = "the total number of trials the search starts"


class _SearcherBase(Section):
    name: StrictStr = Field(description="the search algorithm: single, random, grid, asha or pbt")
    metric: StrictStr = Field(
        min_length=1, description="the metric the search optimises, a key of ctx.report(...)"
    )
    smaller_is_better: StrictBool = Field(
        default=True, description="true when a lower metric is better (a loss)"
    )
    max_concurrent_trials: StrictInt | None = Field(
        default=None,
        ge=1,
        description="the most trials that train at once (none: as resources allow)",
    )
    max_time: StrictFloat = Field(
        gt=0,
        description="the length of a full trial in time units (values of time_metric, else report steps)",
    )
    time_metric: StrictStr | None = Field(
        default=None,
        min_length=1,
        description="a reported, increasing counter that measures training time (e.g. 'epoch'); none: the report's step",
    )

    def _common_issues(self) -> list[Issue]:
        if self.time_metric is not None and self.time_metric == self.metric:
            return [
                Issue(
                    ("time_metric",),
                    f"time_metric is the searcher metric '{self.metric}'",
                    "time_metric must be a counter that grows as training goes on (e.g. 'epoch' "
                    "or 'samples'); remove it to measure time in reported steps.",
                )
            ]
        return []

    @model_validator(mode="after")
    def _check(self) -> _SearcherBase:
        raise_issues(self._common_issues() + self._own_issues())
        return self

    def _own_issues(self) -> list[Issue]:
        return []


class SingleSearcherConfig(_SearcherBase):
    """One trial, trained for max_time."""

    name: Literal["single"]
    max_trials: StrictInt = Field(default=1, description="always 1 for searcher 'single'")

    def _own_issues(self) -> list[Issue]:
        if self.max_trials == 1:
            return []
        return [
            Issue(
                ("max_trials",),
                f"searcher 'single' runs exactly one trial, got max_trials {self.max_trials}",
                "Remove max_trials, or use searcher 'random' to run several.",
            )
        ]


class RandomSearcherConfig(_SearcherBase):
    """max_trials trials with hyperparameters sampled at random, each trained for max_time."""

    name: Literal["random"]
    max_trials: StrictInt = Field(ge=1, description=_MAX_TRIALS)


class GridSearcherConfig(_SearcherBase):
    """One trial per point of the grid (numeric parameters need ``count``)."""

    name: Literal["grid"]
    max_trials: StrictInt | None = Field(
        default=None, ge=1, description="the number of grid points to run (none: the whole grid)"
    )


class AshaSearcherConfig(_SearcherBase):
    """Asynchronous successive halving: trials train in rungs of growing length, the best
    1/divisor of each rung go on."""

    name: Literal["asha"]
    max_trials: StrictInt = Field(ge=1, description=_MAX_TRIALS)
    divisor: StrictFloat = Field(
        default=4.0, gt=1, description="the rung-to-rung reduction factor (4 is usual)"
    )
    max_rungs: StrictInt = Field(default=5, ge=1, description="the most rungs a trial passes")
    mode: Literal["aggressive", "standard", "conservative"] = Field(
        default="standard", description="how much ASHA favours early stopping over long trials"
    )
    promotion: Literal["stop", "pause"] = Field(
        default="stop",
        description="what happens to a trial that is not promoted yet: 'stop' ends it, 'pause' checkpoints it so it can be promoted later",
    )

    def _own_issues(self) -> list[Issue]:
        issues: list[Issue] = []
        if self.max_rungs == 1:
            return issues  # a single rung never promotes: divisor plays no part
        if self.max_time < self.divisor:
            full = self.divisor ** (self.max_rungs - 1)
            issues.append(
                Issue(
                    ("max_time",),
                    f"max_time ({self.max_time:g}) is smaller than divisor ({self.divisor:g}): "
                    "the first rung would be shorter than one time unit",
                    f"Raise max_time to at least {self.divisor:g} (two rungs; {full:g} for all "
                    f"{self.max_rungs}), lower divisor, or count time in smaller units "
                    "(batches instead of epochs).",
                )
            )
        if self.max_trials < self.divisor:
            issues.append(
                Issue(
                    ("max_trials",),
                    f"max_trials ({self.max_trials}) is smaller than divisor ({self.divisor:g}): "
                    "ASHA promotes the best 1/divisor of a rung, so no trial would ever be promoted",
                    f"Set max_trials to {self.divisor**2:g} or more, or use searcher 'random'.",
                )
            )
        return issues


class PbtSearcherConfig(_SearcherBase):
    """Population-based training: a population trains in rounds of perturb_every; the worst
    truncate_fraction restart from the best's checkpoints with perturbed hyperparameters."""

    name: Literal["pbt"]
    max_trials: StrictInt = Field(ge=1, description=_MAX_TRIALS + " (population plus replacements)")
    population_size: StrictInt = Field(
        ge=2, description="the number of trials that train side by side"
    )
    perturb_every: StrictFloat = Field(
        gt=0, description="the time units between exploit/explore rounds"
    )
    truncate_fraction: StrictFloat = Field(
        default=0.2, gt=0, le=0.5, description="the fraction of the population replaced each round"
    )
    resample_probability: StrictFloat = Field(
        default=0.25,
        ge=0,
        le=1,
        description="the chance that a perturbed value is resampled instead",
    )
    perturb_factors: tuple[Annotated[StrictFloat, Field(gt=0)], ...] = Field(
        default=(0.8, 1.2), min_length=1, description="the factors a numeric value is multiplied by"
    )

    def _own_issues(self) -> list[Issue]:
        issues: list[Issue] = []
        if self.population_size > self.max_trials:
            issues.append(
                Issue(
                    ("population_size",),
                    f"population_size ({self.population_size}) is larger than max_trials "
                    f"({self.max_trials})",
                    "max_trials counts the whole population plus every replacement: raise it "
                    "or shrink the population.",
                )
            )
        if self.perturb_every > self.max_time:
            issues.append(
                Issue(
                    ("perturb_every",),
                    f"perturb_every ({self.perturb_every:g}) is longer than max_time "
                    f"({self.max_time:g}): trials would end before the first round",
                    f"Set perturb_every to a fraction of max_time, e.g. {self.max_time / 4:g}.",
                )
            )
        return issues


SearcherConfig = Annotated[
    SingleSearcherConfig
    | RandomSearcherConfig
    | GridSearcherConfig
    | AshaSearcherConfig
    | PbtSearcherConfig,
    Field(discriminator="name"),
]

SEARCHER_TYPES: dict[str, type[_SearcherBase]] = {
    "single": SingleSearcherConfig,
    "random": RandomSearcherConfig,
    "grid": GridSearcherConfig,
    "asha": AshaSearcherConfig,
    "pbt": PbtSearcherConfig,
}
