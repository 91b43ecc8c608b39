"""The ``resolute`` command line.

This module defines the command groups and the verbs that need no cluster
(``experiment validate``, ``preview-search``). The verbs that run or inspect experiments
live in ``resolute/cli_runtime.py``, whose ``register(experiment, trial)`` attaches them to
the groups defined here. Heavy modules (Ray, torch, MLflow) are imported inside commands
only, so that ``resolute --help`` and ``resolute experiment validate`` stay instant.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from resolute import __version__

if TYPE_CHECKING:
    from resolute.config import ExperimentConfig

EXIT_CONFIG_ERROR = 2  # the same code click uses for usage errors

_CONFIG_ARG = click.argument("config_path", metavar="EXP.yaml", type=click.Path(dir_okay=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    __version__, "--version", "-V", prog_name="resolute", message="%(prog)s %(version)s"
)
def main() -> None:
    """resolute: elastic data-parallel training and hyperparameter search on Ray."""


@main.group()
def experiment() -> None:
    """Validate, run and inspect experiments."""


@main.group()
def trial() -> None:
    """Inspect the trials of an experiment."""


def _load(config_path: str) -> ExperimentConfig:
    from resolute.config import load_config
    from resolute.errors import ConfigError

    try:
        return load_config(config_path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG_ERROR)


@experiment.command("validate")
@_CONFIG_ARG
def validate(config_path: str) -> None:
    """Check EXP.yaml and list every problem in it, with its line. Exits 2 when invalid."""
    config = _load(config_path)
    count = len(config.hyperparameter_paths())
    click.echo(f"valid: {config.name} ({config.searcher.name}, {count} hyperparameters)")


@main.command("preview-search")
@_CONFIG_ARG
@click.option("--json", "as_json", is_flag=True, help="Print the preview as JSON.")
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Seed of the simulated run (default: the config's, else 0).",
)
def preview_search(config_path: str, as_json: bool, seed: int | None) -> None:
    """Show what the search in EXP.yaml will do, without a cluster: its plan (ASHA brackets,
    PBT generations, grid size) and a simulated run on synthetic learning curves."""
    config = _load(config_path)
    from resolute.search.preview import format_preview, preview

    if seed is None:
        seed = config.seed if config.seed is not None else 0
    try:
        result = preview(config.searcher_settings(), config.space(), seed=seed)
    except ValueError as exc:  # settings the search core rejects that config.py let through
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CONFIG_ERROR)
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
    else:
        click.echo(format_preview(result))


def _register_runtime_verbs() -> None:
    try:
        from resolute.cli_runtime import register
    except ModuleNotFoundError as exc:
        if exc.name != "resolute.cli_runtime":
            raise
        return  # a build without the runtime verbs: validate and preview still work
    register(experiment, trial)
    from resolute.cli_cluster import register as register_cluster

    register_cluster(main)


_register_runtime_verbs()


if __name__ == "__main__":
    main()
