"""Reading an experiment file: YAML with line numbers, validation, one ConfigError."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from resolute.config._experiment import ExperimentConfig, cross_section_issues
from resolute.config._issues import SEMANTIC_ERROR
from resolute.config._problems import problem, problems_from, sort_by_line
from resolute.config._yaml import LoadedYaml, load_yaml
from resolute.errors import ConfigError

_EXAMPLE = "Start from one of the files in configs/ (e.g. configs/digits-random.yaml)."


def load_config(path: str | os.PathLike[str]) -> ExperimentConfig:
    """Read and validate an experiment file.

    Relative paths in it (``context_dir``, ``storage``) are resolved against the file's
    folder. Raises ``ConfigError`` listing every problem, each with its YAML line."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"no such file: {file}. Check the path."], source=str(file)) from None
    except IsADirectoryError:
        raise ConfigError(
            [f"{file} is a folder. Pass the experiment's .yaml file."], source=str(file)
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            [f"cannot read {file}: {exc}. Check its permissions and encoding (UTF-8)."],
            source=str(file),
        ) from None
    return _validate(
        load_yaml(text), source=str(file), base_dir=file.resolve().parent, check_paths=True
    )


def parse_config_yaml(
    text: str,
    *,
    source: str | None = None,
    context_dir: str | os.PathLike[str] | None = None,
    check_paths: bool = True,
) -> ExperimentConfig:
    """Validate an experiment given as YAML text; relative paths resolve against ``context_dir``
    (default: the current folder)."""
    return _validate(
        load_yaml(text), source=source, base_dir=_base(context_dir), check_paths=check_paths
    )


def parse_config(
    data: dict[str, Any],
    *,
    source: str | None = None,
    context_dir: str | os.PathLike[str] | None = None,
    check_paths: bool = True,
) -> ExperimentConfig:
    """Validate an experiment given as plain data (no line numbers in the problems).

    ``context_dir``: the folder relative paths resolve against, as the YAML file's folder
    does in ``load_config`` (default: the current folder). ``check_paths=False`` skips the
    check that context_dir exists (for stored copies read on another machine)."""
    return _validate(
        LoadedYaml(data=data), source=source, base_dir=_base(context_dir), check_paths=check_paths
    )


def _base(context_dir: str | os.PathLike[str] | None) -> Path:
    return Path(context_dir).expanduser().resolve() if context_dir is not None else Path.cwd()


def _validate(
    loaded: LoadedYaml, *, source: str | None, base_dir: Path, check_paths: bool
) -> ExperimentConfig:
    data = loaded.data
    if data is None:
        raise ConfigError(
            loaded.problems or [f"(top level): the experiment is empty. {_EXAMPLE}"], source=source
        )
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"{type(data).__name__} {data!r}"
        line = loaded.line_of(())
        where = f" (line {line})" if line else ""
        raise ConfigError(
            [
                *loaded.problems,
                f"(top level){where}: expected a mapping of settings, got {kind}. {_EXAMPLE}",
            ],
            source=source,
        )
    context = {"base_dir": base_dir, "check_paths": check_paths}
    try:
        config = ExperimentConfig.model_validate(data, context=context)
    except ValidationError as exc:
        problems = problems_from(exc, loaded)
        if not any(e["type"] == SEMANTIC_ERROR and e["loc"] == () for e in exc.errors()):
            # The model's own cross-section checks did not run: run them on the sections
            # that are valid on their own, so that this report lists every problem.
            problems += [
                problem(loaded, i) for i in cross_section_issues(**_valid_sections(data, context))
            ]
        raise ConfigError(sort_by_line([*loaded.problems, *problems]), source=source) from None
    if loaded.problems:
        raise ConfigError(loaded.problems, source=source)
    return config


_SECTIONS = ("searcher", "hyperparameters", "checkpoint", "tracking")
_ADAPTERS: dict[str, TypeAdapter[Any]] = {}


def _valid_sections(data: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    sections: dict[str, Any] = {}
    for name in _SECTIONS:
        info = ExperimentConfig.model_fields[name]
        if name not in data:
            sections[name] = (
                info.get_default(call_default_factory=True) if not info.is_required() else None
            )
            continue
        adapter = _ADAPTERS.get(name)
        if adapter is None:
            adapter = _ADAPTERS[name] = TypeAdapter(info.rebuild_annotation())
        try:
            sections[name] = adapter.validate_python(data[name], context=context)
        except ValidationError:
            sections[name] = None
    storage = data.get("storage", "")
    sections["storage"] = storage if isinstance(storage, str) else None
    return sections
