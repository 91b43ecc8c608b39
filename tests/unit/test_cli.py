"""The `resolute` CLI verbs that need no cluster: --version, experiment validate,
preview-search; and that they stay light (no Ray, torch or MLflow import) and write nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import resolute
from resolute import cli
from resolute.config import load_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
BAD = Path(__file__).parent / "data" / "bad_configs"
HEAVY = ("ray", "torch", "mlflow")


def run(*args: str) -> click.testing.Result:
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout == f"resolute {resolute.__version__}\n"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_validate_accepts_the_example_configs(path: Path) -> None:
    config = load_config(path)
    result = run("experiment", "validate", str(path))
    assert result.exit_code == 0, result.stderr
    count = len(config.hyperparameter_paths())
    assert (
        result.stdout == f"valid: {config.name} ({config.searcher.name}, {count} hyperparameters)\n"
    )


def test_validate_names_the_asha_example_exactly() -> None:
    result = run("experiment", "validate", str(REPO / "configs" / "digits-asha.yaml"))
    assert result.stdout == "valid: digits-asha (asha, 5 hyperparameters)\n"


def test_validate_counts_nested_hyperparameters(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(
        "name: nested\nentrypoint: a:b\nsearcher: {name: single, metric: m, max_time: 1}\n"
        "hyperparameters: {lr: 0.1, opt: {beta1: 0.9, beta2: 0.99}}\n"
    )
    assert (
        run("experiment", "validate", str(path)).stdout
        == "valid: nested (single, 3 hyperparameters)\n"
    )


def test_validate_reports_every_problem_and_exits_2() -> None:
    path = BAD / "unknown_key_typo.yaml"
    result = run("experiment", "validate", str(path))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"invalid experiment config in {path} (3 problem(s)):",
        "  - searcher.max_trials (line 3): required for searcher 'random'. "
        "Add max_trials: the total number of trials the search starts.",
        "  - searcher.max_trails (line 6): unknown key 'max_trails'; did you mean 'max_trials'?",
        "  - searcher.smaller_is_beter (line 8): unknown key 'smaller_is_beter'; "
        "did you mean 'smaller_is_better'?",
    ]


def test_validate_missing_file_exits_2(tmp_path: Path) -> None:
    result = run("experiment", "validate", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert f"no such file: {tmp_path / 'nope.yaml'}" in result.stderr


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_preview_search_prints_the_plan(path: Path) -> None:
    config = load_config(path)
    result = run("preview-search", str(path))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"Searcher: {config.searcher.name}")
    assert "Simulated run" in result.stdout


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_preview_search_json(path: Path) -> None:
    config = load_config(path)
    result = run("preview-search", str(path), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["searcher"] == config.searcher.name
    assert data["metric"] == config.searcher.metric
    assert data["simulation"]["seed"] == config.seed
    assert data["simulation"]["trials"] == data["trials"] >= 1


def test_preview_of_the_asha_example_matches_its_comments() -> None:
    # configs/digits-asha.yaml promises rungs at 4, 16 and 64 epochs and about 250 epochs
    # of training in all: keep the file honest.
    data = json.loads(
        run("preview-search", str(REPO / "configs" / "digits-asha.yaml"), "--json").stdout
    )
    assert data["asha"]["effective_rungs"] == 3
    ends = {tuple(b["rung_ends"]) for b in data["asha"]["brackets"]}
    assert (4, 16, 64) in ends
    assert 200 <= data["simulation"]["units_trained"] <= 300
    assert data["trials"] == 16


def test_preview_of_the_pbt_example_creates_max_trials() -> None:
    data = json.loads(
        run("preview-search", str(REPO / "configs" / "digits-pbt.yaml"), "--json").stdout
    )
    assert data["pbt"]["trials"] == data["max_trials"] == 7


def test_preview_search_seed_option() -> None:
    path = str(REPO / "configs" / "digits-random.yaml")
    data = json.loads(run("preview-search", path, "--json", "--seed", "99").stdout)
    assert data["simulation"]["seed"] == 99


def test_preview_search_bad_config_exits_2() -> None:
    result = run("preview-search", str(BAD / "asha_short.yaml"))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "searcher.max_time (line 9): max_time (3) is smaller than divisor (4)" in result.stderr


def test_cluster_up_rejects_a_bad_cooldown_before_connecting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RESOLUTE_RESIZE_COOLDOWN_S", "soon")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")  # never reached: the check comes first
    result = run("cluster", "up")
    assert result.exit_code == 2
    assert "RESOLUTE_RESIZE_COOLDOWN_S='soon' is not a number of seconds >= 0" in result.stderr


def test_cluster_up_rejects_a_negative_cooldown_option() -> None:
    result = run("cluster", "up", "--resize-cooldown", "-1")
    assert result.exit_code == 2
    assert "--resize-cooldown" in result.stderr


def test_groups_are_open_for_more_verbs() -> None:
    assert "validate" in cli.experiment.commands
    assert isinstance(cli.trial, click.Group)
    assert {"experiment", "trial", "preview-search"} <= set(cli.main.commands)
    assert run("trial", "--help").exit_code == 0


def test_a_missing_runtime_module_leaves_the_cli_working(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "resolute.cli_runtime", None)  # import now fails
    cli._register_runtime_verbs()
    assert run("experiment", "validate", str(CONFIGS[0])).exit_code == 0


# ---------------------------------------------------------------------- a real process


def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def _resolute(args: list[str], *, cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home), "PYTHONPROFILEIMPORTTIME": "1"}
    env.pop("RAY_ADDRESS", None)
    executable = Path(sys.executable).parent / "resolute"  # the installed console script
    return subprocess.run(
        [str(executable), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def _imported_packages(importtime_stderr: str) -> set[str]:
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_console_script_bad_config_exits_2_writes_nothing_imports_nothing_heavy(
    tmp_path: Path,
) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    bad = work / "exp.yaml"
    bad.write_text((BAD / "pbt_too_small.yaml").read_text())
    before = _files_under(tmp_path)

    proc = _resolute(["experiment", "validate", str(bad)], cwd=work, home=home)

    assert proc.returncode == 2
    assert proc.stdout == ""
    assert (
        "searcher.population_size (line 10): population_size (8) is larger than max_trials (4)"
        in proc.stderr
    )
    assert _files_under(tmp_path) == before
    imported = _imported_packages(proc.stderr)
    assert "resolute" in imported and "pydantic" in imported  # the probe itself works
    assert not imported & set(HEAVY)


@pytest.mark.parametrize("verb", [["experiment", "validate"], ["preview-search"]])
def test_console_script_good_config_imports_nothing_heavy(tmp_path: Path, verb: list[str]) -> None:
    proc = _resolute(
        [*verb, str(REPO / "configs" / "digits-asha.yaml")], cwd=tmp_path, home=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(
        "valid: digits-asha" if verb[0] == "experiment" else "Searcher: asha"
    )
    assert not _imported_packages(proc.stderr) & set(HEAVY)
    assert list(tmp_path.iterdir()) == []  # no ~/.resolute, no journal, no mlruns
