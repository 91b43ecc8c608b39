"""The small sections: resources, checkpoint policy, tracking and environment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from resolute.config._base import Section, StrictBool, StrictFloat, StrictInt, StrictStr
from resolute.config._issues import Issue, raise_issues


class SlotRange(Section):
    """How many slots (data-parallel ranks) a trial uses; min < max makes it elastic."""

    min: StrictInt = Field(ge=1, description="the fewest slots a trial trains with")
    max: StrictInt = Field(ge=1, description="the most slots a trial grows to")

    @model_validator(mode="after")
    def _check(self) -> SlotRange:
        if self.min > self.max:
            raise_issues(
                [
                    Issue(
                        ("min",),
                        f"min ({self.min}) is larger than max ({self.max})",
                        "Swap them, or write a single number for a fixed size.",
                    )
                ]
            )
        return self

    @property
    def elastic(self) -> bool:
        return self.min < self.max


def _slots_shorthand(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise_issues(
                [Issue((), f"must be at least 1, got {value}", "A trial needs at least one slot.")]
            )
        return {"min": value, "max": value}
    return value


_RESERVED_ENV = frozenset(
    {
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "CUDA_VISIBLE_DEVICES",
    }
)


class ResourcesConfig(Section):
    slots_per_trial: Annotated[SlotRange, BeforeValidator(_slots_shorthand)] = Field(
        default=SlotRange(min=1, max=1),
        description="a number of slots, or {min, max} for an elastic trial",
    )
    gpus_per_slot: StrictFloat = Field(
        default=0.0, ge=0, description="the GPUs each slot reserves (0: train on CPUs)"
    )
    cpus_per_slot: StrictFloat = Field(default=1.0, ge=0, description="the CPUs each slot reserves")
    priority: StrictInt = Field(
        default=42,
        ge=1,
        le=99,
        description="the scheduling priority, 1 to 99; the lower number wins",
    )
    weight: StrictFloat = Field(
        default=1.0, gt=0, description="the fair-share weight among experiments of equal priority"
    )
    max_slots: StrictInt | None = Field(
        default=None, ge=1, description="the most slots all trials of the experiment use together"
    )
    backend: Literal["torch", "horovod"] = Field(
        default="torch", description="the data-parallel backend"
    )
    reuse_workers: StrictBool = Field(
        default=True,
        description="whether warm worker actors are reused across trials (false for code that leaks global state)",
    )

    @model_validator(mode="after")
    def _check(self) -> ResourcesConfig:
        issues: list[Issue] = []
        if self.max_slots is not None and self.max_slots < self.slots_per_trial.min:
            issues.append(
                Issue(
                    ("max_slots",),
                    f"max_slots ({self.max_slots}) is smaller than slots_per_trial "
                    f"({self.slots_per_trial.min}): no trial could ever start",
                    f"Raise max_slots to {self.slots_per_trial.min} or more, or lower slots_per_trial.",
                )
            )
        if self.gpus_per_slot > 1 and not self.gpus_per_slot.is_integer():
            issues.append(
                Issue(
                    ("gpus_per_slot",),
                    f"gpus_per_slot {self.gpus_per_slot:g}: Ray shares a GPU only in fractions below 1",
                    f"Use a whole number ({int(self.gpus_per_slot)} or {int(self.gpus_per_slot) + 1}) or a fraction below 1.",
                )
            )
        if self.gpus_per_slot == 0 and self.cpus_per_slot == 0:
            issues.append(
                Issue(
                    ("cpus_per_slot",),
                    "a slot with 0 CPUs and 0 GPUs reserves nothing, so trials would pile up on one node",
                    "Give each slot at least one CPU (cpus_per_slot: 1) or a GPU.",
                )
            )
        raise_issues(issues)
        return self


class CheckpointConfig(Section):
    period: StrictFloat | None = Field(
        default=None,
        gt=0,
        description="the time units between automatic durable checkpoints (none: only those the code saves)",
    )
    keep: Literal["best", "latest", "all"] = Field(
        default="best", description="which checkpoints of a trial to keep"
    )
    keep_count: StrictInt = Field(
        default=1,
        ge=1,
        description="the number of checkpoints per trial that 'best' or 'latest' keeps",
    )

    @model_validator(mode="after")
    def _check(self) -> CheckpointConfig:
        # keep_count: 1 (the default, also in stored copies) is harmless with keep: all.
        if self.keep == "all" and self.keep_count != 1:
            raise_issues(
                [
                    Issue(
                        ("keep_count",),
                        "keep_count applies only when keep is 'best' or 'latest'",
                        "Remove keep_count, or choose keep: best or keep: latest.",
                    )
                ]
            )
        return self


class TrackingConfig(Section):
    mlflow_uri: StrictStr | None = Field(
        default=None,
        min_length=1,
        description="the MLflow tracking URI (none: SQLite under the storage root)",
    )
    tensorboard: StrictBool = Field(
        default=True, description="whether to also write TensorBoard event files"
    )
    gpu_stats_interval_s: StrictFloat = Field(
        default=30.0,
        ge=0,
        description="the seconds between each GPU rank's statistics (utilisation, memory, "
        "temperature, power), logged as system/rank<r>/gpu<i>/...; 0 turns them off",
    )


def _numbers_to_str(value: Any) -> Any:
    # OMP_NUM_THREADS: 1 is a common way to write it; true/false stay errors (which spelling?).
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


EnvVarName = Annotated[StrictStr, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
EnvVarValue = Annotated[StrictStr, BeforeValidator(_numbers_to_str)]


class EnvironmentConfig(Section):
    pip: tuple[Annotated[StrictStr, Field(min_length=1)], ...] = Field(
        default=(),
        description="a list of pip requirements installed for the trials (Ray runtime_env)",
    )
    env_vars: dict[EnvVarName, EnvVarValue] = Field(
        default_factory=dict,
        description="a mapping of environment variables for the trial processes",
    )
    excludes: tuple[Annotated[StrictStr, Field(min_length=1)], ...] = Field(
        default=(),
        description="a list of gitignore-style patterns of context_dir files not to upload",
    )
    package: Annotated[StrictStr, Field(pattern=r"^[A-Za-z][A-Za-z0-9+.-]*://\S+$")] | None = Field(
        default=None,
        description="context_dir as a Ray package URI, the trials' working_dir: set by "
        "`resolute experiment create` when it uploads context_dir to a cluster "
        "(gcs://_ray_pkg_<hash>.zip); a zip you host (s3://, gs://, https://) is used as is",
    )

    @model_validator(mode="after")
    def _check(self) -> EnvironmentConfig:
        raise_issues(
            [
                Issue(
                    ("env_vars", name),
                    f"{name} is set by resolute for each worker",
                    "Remove it; resolute and Ray assign ranks, rendezvous addresses and devices.",
                )
                for name in self.env_vars
                if name in _RESERVED_ENV
            ]
        )
        return self

    def runtime_env(self, working_dir: Path) -> dict[str, Any]:
        """A Ray ``runtime_env`` that ships ``working_dir`` (or ``package``, once uploaded)
        with these settings."""
        if self.package is not None:
            return {"working_dir": self.package, **self._process_env()}
        # .git is excluded always: Ray uploads it otherwise (it respects .gitignore, and
        # .git is not in it), and it is often the largest thing in a repository.
        return {
            "working_dir": str(working_dir),
            "excludes": [".git", *self.excludes],
            **self._process_env(),
        }

    def trial_runtime_env(self) -> dict[str, Any] | None:
        """The ``runtime_env`` trial workers are created with: ``package`` as working_dir
        (when uploaded), pip and env_vars; None when there is nothing to set (the workers
        then import the entrypoint from context_dir on their own disk)."""
        env = self._process_env()
        if self.package is not None:
            env = {"working_dir": self.package, **env}
        return env or None

    def _process_env(self) -> dict[str, Any]:
        env: dict[str, Any] = {}
        if self.pip:
            env["pip"] = list(self.pip)
        if self.env_vars:
            env["env_vars"] = dict(self.env_vars)
        return env
