"""ExperimentConfig: the whole experiment file as one immutable, typed object."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import Field, ValidationInfo, field_validator, model_validator

from resolute.config._base import Section, StrictInt, StrictStr
from resolute.config._hyperparameters import (
    ConstSpec,
    Hyperparameter,
    HyperparameterName,
    iter_parameters,
    to_space,
)
from resolute.config._issues import Issue, raise_issues
from resolute.config._searcher import GridSearcherConfig, PbtSearcherConfig, SearcherConfig
from resolute.config._sections import (
    CheckpointConfig,
    EnvironmentConfig,
    ResourcesConfig,
    TrackingConfig,
)
from resolute.search.space import Space

if TYPE_CHECKING:
    from resolute.search import SearcherSettings

DEFAULT_STORAGE = "~/.resolute/storage"
REMOTE_SCHEMES = ("s3", "gs")
_ENTRYPOINT = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")


def storage_scheme(storage: str) -> str:
    """'s3', 'gs' or 'file' (a local path)."""
    match = _SCHEME.match(storage)
    return match.group(1).lower() if match else "file"


class ExperimentConfig(Section):
    """A validated experiment file. Build it with ``load_config`` / ``parse_config``."""

    name: StrictStr = Field(
        min_length=1, description="the experiment's name, shown in MLflow and the CLI"
    )
    description: StrictStr = Field(default="", description="a free-text note about the experiment")
    labels: tuple[StrictStr, ...] = Field(
        default=(), description="a list of tags to find the experiment by"
    )
    entrypoint: StrictStr = Field(
        description="the training function as 'package.module:function', importable from context_dir"
    )
    context_dir: Path = Field(
        description="the folder shipped to the workers and put on sys.path (default: the file's folder)"
    )
    hyperparameters: dict[HyperparameterName, Hyperparameter] = Field(
        default_factory=dict,
        description="the search space: a mapping of names to values or parameters",
    )
    searcher: SearcherConfig = Field(description="the search algorithm and its settings")
    resources: ResourcesConfig = Field(
        default_factory=ResourcesConfig, description="the resources each trial uses"
    )
    max_restarts: StrictInt = Field(
        default=5,
        ge=0,
        description="the number of times a failed trial restarts from its latest checkpoint",
    )
    checkpoint: CheckpointConfig = Field(
        default_factory=CheckpointConfig, description="the checkpoint policy"
    )
    storage: StrictStr = Field(
        default=DEFAULT_STORAGE,
        validate_default=True,
        description="where checkpoints and artifacts go: a local path, s3://bucket/prefix or gs://bucket/prefix",
    )
    seed: StrictInt | None = Field(
        default=None,
        ge=0,
        lt=2**32,
        description="the experiment seed (none: one is drawn at submit time)",
    )
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig, description="the MLflow and TensorBoard settings"
    )
    environment: EnvironmentConfig = Field(
        default_factory=EnvironmentConfig,
        description="the trials' pip packages, environment variables and upload excludes",
    )

    # ------------------------------------------------------------------ validation
    @model_validator(mode="before")
    @classmethod
    def _default_context_dir(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and data.get("context_dir") is None:
            return {**data, "context_dir": _base_dir(info)}
        return data

    @field_validator("context_dir", mode="before")
    @classmethod
    def _resolve_context_dir(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, (str, Path)):
            return value
        path = (_base_dir(info) / Path(value).expanduser()).resolve()
        if _check_paths(info) and not path.is_dir():
            raise_issues(
                [
                    Issue(
                        (),
                        f"{path} is not a folder",
                        "context_dir is resolved against the experiment file's folder; point it at the "
                        "folder that holds your training code.",
                    )
                ]
            )
        return path

    @field_validator("entrypoint")
    @classmethod
    def _check_entrypoint(cls, value: str) -> str:
        if _ENTRYPOINT.match(value):
            return value
        hint = "Write it as 'package.module:function', e.g. 'examples.digits.train:train'."
        if value.endswith(".py") or "/" in value or ".py:" in value:
            hint = "Use the module's import path with dots, without '.py' and without '/', then ':function'."
        elif ":" not in value:
            hint = f"Name the function after a colon, e.g. '{value}:train'."
        raise_issues([Issue((), f"'{value}' is not 'module:function'", hint)])
        return value

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not value.strip():
            raise_issues([Issue((), "the name is blank", "Give the experiment a name.")])
        return value

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        raise_issues(
            [
                Issue((index,), f"label '{label}' is listed twice", "Remove the repeated label.")
                for index, label in enumerate(value)
                if label in value[:index]
            ]
        )
        return value

    @field_validator("storage")
    @classmethod
    def _resolve_storage(cls, value: str, info: ValidationInfo) -> str:
        scheme = storage_scheme(value)
        if scheme in REMOTE_SCHEMES:
            bucket = value.split("://", 1)[1].split("/", 1)[0]
            if not bucket:
                raise_issues(
                    [Issue((), f"'{value}' names no bucket", f"Write {scheme}://BUCKET/PREFIX.")]
                )
            return value
        if scheme != "file":
            hint = "Use a local path, s3://bucket/prefix or gs://bucket/prefix."
            if scheme == "gcs":
                hint = "Google Cloud Storage URIs start with gs://. " + hint
            raise_issues([Issue((), f"storage scheme '{scheme}://' is not supported", hint)])
        path = value.split("://", 1)[1] if value.startswith("file://") else value
        base = info.data.get("context_dir") or _base_dir(info)
        return str((Path(base) / Path(path).expanduser()).resolve())

    @model_validator(mode="after")
    def _check_together(self) -> ExperimentConfig:
        raise_issues(
            cross_section_issues(
                searcher=self.searcher,
                hyperparameters=self.hyperparameters,
                checkpoint=self.checkpoint,
                storage=self.storage,
                tracking=self.tracking,
            )
        )
        return self

    # ------------------------------------------------------------------ views
    def space(self) -> Space:
        """The hyperparameter space as the searchers' parameter types."""
        return to_space(self.hyperparameters)

    def searcher_settings(self) -> SearcherSettings:
        """The searcher section as the search core's settings."""
        from resolute.search import SearcherSettings

        return SearcherSettings(**self.searcher.model_dump())

    def hyperparameter_paths(self) -> list[str]:
        """Dotted paths of every hyperparameter ('optimizer.lr' for a nested one), in file order."""
        return [path for path, _ in iter_parameters(self.hyperparameters)]

    def runtime_env(self) -> dict[str, Any]:
        """The Ray runtime_env of the trials: context_dir (or its uploaded package) as
        working_dir, plus environment."""
        return self.environment.runtime_env(self.context_dir)

    def trial_runtime_env(self) -> dict[str, Any] | None:
        """What trial workers are created with (see ``EnvironmentConfig.trial_runtime_env``)."""
        return self.environment.trial_runtime_env()

    def with_package(self, uri: str | None) -> ExperimentConfig:
        """This config with context_dir uploaded as ``uri`` (the workers' working_dir); None:
        not uploaded (``upload_context`` packs it again)."""
        environment = self.environment.model_copy(update={"package": uri})
        return self.model_copy(update={"environment": environment})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data; ``parse_config(cfg.to_dict())`` gives back an equal config."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """The config as YAML, the copy stored with the experiment (see ``from_yaml``)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    @classmethod
    def from_yaml(cls, text: str) -> ExperimentConfig:
        """Read a copy written by ``to_yaml``. Paths are not checked: the copy may be read on
        another machine than the one it was written on."""
        from resolute.config._load import parse_config_yaml

        return parse_config_yaml(text, check_paths=False)


def cross_section_issues(
    *,
    searcher: Any = None,
    hyperparameters: dict[str, Any] | None = None,
    checkpoint: CheckpointConfig | None = None,
    storage: str | None = None,
    tracking: TrackingConfig | None = None,
) -> list[Issue]:
    """Problems between sections. A section passed as None failed its own validation, and
    the checks that need it are skipped."""
    issues: list[Issue] = []
    if searcher is not None and hyperparameters is not None:
        leaves = iter_parameters(hyperparameters)
        if isinstance(searcher, GridSearcherConfig):
            for path, spec in leaves:
                if getattr(spec, "count", 0) is None:
                    issues.append(
                        Issue(
                            ("hyperparameters", *path.split(".")),
                            f"searcher 'grid' needs 'count' for the {spec.type} parameter '{path}'",
                            "Add count: N (the number of grid points), or make it categorical.",
                        )
                    )
        if isinstance(searcher, PbtSearcherConfig) and all(
            isinstance(s, ConstSpec) for _, s in leaves
        ):
            issues.append(
                Issue(
                    ("searcher", "name"),
                    "searcher 'pbt' has nothing to explore: every hyperparameter is a constant",
                    "Give at least one hyperparameter a range (int, double, log or categorical).",
                )
            )
    if (
        searcher is not None
        and checkpoint is not None
        and checkpoint.period is not None
        and checkpoint.period > searcher.max_time
    ):
        issues.append(
            Issue(
                ("checkpoint", "period"),
                f"period ({checkpoint.period:g}) is longer than searcher.max_time "
                f"({searcher.max_time:g}): no automatic checkpoint would ever be taken",
                f"Set period to a fraction of max_time (e.g. {searcher.max_time / 4:g}) or remove it.",
            )
        )
    if (
        storage is not None
        and tracking is not None
        and tracking.mlflow_uri is None
        and storage_scheme(storage) in REMOTE_SCHEMES
    ):
        issues.append(
            Issue(
                ("storage",),
                f"storage '{storage}' is remote, and the default MLflow store is a SQLite file "
                "under a local storage root",
                "Set tracking.mlflow_uri (an MLflow server, or sqlite:////abs/path/mlflow.db).",
            )
        )
    return issues


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context if isinstance(info.context, dict) else {}
    return Path(context.get("base_dir") or Path.cwd())


def _check_paths(info: ValidationInfo) -> bool:
    context = info.context if isinstance(info.context, dict) else {}
    return bool(context.get("check_paths", True))
