"""ExperimentConfig: every field's default and explicit value, the views built from it
(space, searcher settings, runtime_env, stored copies), and the bad-config corpus in
data/bad_configs/, where each file lists the exact problems it must produce."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from resolute.config import (
    AshaSearcherConfig,
    CategoricalSpec,
    CheckpointConfig,
    ConstSpec,
    DoubleSpec,
    EnvironmentConfig,
    ExperimentConfig,
    GridSearcherConfig,
    IntSpec,
    LogSpec,
    PbtSearcherConfig,
    RandomSearcherConfig,
    ResourcesConfig,
    SingleSearcherConfig,
    SlotRange,
    TrackingConfig,
    load_config,
    parse_config,
    parse_config_yaml,
)
from resolute.errors import ConfigError
from resolute.search import Create, SearcherSettings, make_searcher
from resolute.search.space import Categorical, Const, Double, Int, Log

CORPUS = Path(__file__).parent / "data" / "bad_configs"
REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

MINIMAL = """\
name: minimal
entrypoint: train:main
searcher: {name: single, metric: loss, max_time: 10}
"""

# Every setting away from its default.
FULL = """\
name: full
description: every setting set
labels: [nightly, digits]
entrypoint: pkg.train:main
context_dir: code
hyperparameters:
  lr: {type: log, minval: -4, maxval: -1, base: 2, count: 4}
  layers: {type: int, minval: 1, maxval: 8, count: 3}
  dropout: {type: double, minval: 0.0, maxval: 0.5, count: 2}
  act: {type: categorical, vals: [relu, gelu]}
  momentum: 0.9
  optimizer:
    name: {type: const, val: adamw}
    betas: {type: const, val: {b1: 0.9, b2: 0.999}}
searcher:
  name: asha
  metric: val_accuracy
  smaller_is_better: false
  max_trials: 64
  max_concurrent_trials: 8
  max_time: 81
  time_metric: epoch
  divisor: 3
  max_rungs: 4
  mode: aggressive
  promotion: pause
resources:
  slots_per_trial: {min: 2, max: 8}
  gpus_per_slot: 0.5
  cpus_per_slot: 2
  priority: 10
  weight: 2.5
  max_slots: 16
  backend: horovod
  reuse_workers: false
max_restarts: 0
checkpoint: {period: 9, keep: latest, keep_count: 3}
storage: runs/ckpt
seed: 7
tracking: {mlflow_uri: "http://mlflow:5000", tensorboard: false}
environment:
  pip: [scikit-learn>=1.3, tqdm]
  env_vars: {OMP_NUM_THREADS: 1, TOKENIZERS_PARALLELISM: "false"}
  excludes: [data/, "*.ckpt"]
"""


def write(folder: Path, text: str, name: str = "exp.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def full_config(tmp_path: Path) -> ExperimentConfig:
    (tmp_path / "code").mkdir(exist_ok=True)
    return load_config(write(tmp_path, FULL))


def problems_of(text: str, folder: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(folder, text))
    return info.value.problems


# ---------------------------------------------------------------------- bad-config corpus


def _expected_problems(path: Path) -> list[str]:
    corpus = str(CORPUS.resolve())
    return [
        line.removeprefix("# expect: ").replace("{corpus}", corpus)
        for line in path.read_text().splitlines()
        if line.startswith("# expect: ")
    ]


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.yaml")), ids=lambda p: p.stem)
def test_bad_config_lists_every_problem_with_path_line_and_hint(path: Path) -> None:
    expected = _expected_problems(path)
    assert expected, f"{path.name} states no '# expect:' lines"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == expected
    assert info.value.source == str(path)
    assert f"invalid experiment config in {path} ({len(expected)} problem(s)):" in str(info.value)


def test_corpus_is_large_enough_to_mean_something() -> None:
    files = list(CORPUS.glob("*.yaml"))
    assert len(files) >= 40
    assert sum(len(_expected_problems(f)) for f in files) >= 100


# ---------------------------------------------------------------------- defaults


def test_minimal_config_gets_every_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = load_config(write(tmp_path / "exp", MINIMAL))

    assert cfg.name == "minimal"
    assert cfg.description == ""
    assert cfg.labels == ()
    assert cfg.entrypoint == "train:main"
    assert cfg.context_dir == (tmp_path / "exp").resolve()
    assert cfg.hyperparameters == {}
    assert cfg.searcher == SingleSearcherConfig(name="single", metric="loss", max_time=10)
    assert (cfg.searcher.smaller_is_better, cfg.searcher.max_trials) == (True, 1)
    assert (cfg.searcher.max_concurrent_trials, cfg.searcher.time_metric) == (None, None)
    res = cfg.resources
    assert res.slots_per_trial == SlotRange(min=1, max=1)
    assert not res.slots_per_trial.elastic
    assert (res.gpus_per_slot, res.cpus_per_slot) == (0.0, 1.0)
    assert (res.priority, res.weight, res.max_slots) == (42, 1.0, None)
    assert (res.backend, res.reuse_workers) == ("torch", True)
    assert cfg.max_restarts == 5
    assert cfg.checkpoint == CheckpointConfig(period=None, keep="best", keep_count=1)
    assert cfg.storage == str(tmp_path / "home" / ".resolute" / "storage")
    assert cfg.seed is None
    assert cfg.tracking == TrackingConfig(mlflow_uri=None, tensorboard=True)
    assert cfg.tracking.gpu_stats_interval_s == 30.0
    assert cfg.environment == EnvironmentConfig(pip=(), env_vars={}, excludes=())


def test_searcher_specific_defaults(tmp_path: Path) -> None:
    base = "name: s\nentrypoint: a:b\nhyperparameters: {lr: {type: double, minval: 0, maxval: 1, count: 2}}\n"
    asha = load_config(
        write(tmp_path, base + "searcher: {name: asha, metric: m, max_trials: 16, max_time: 16}\n")
    ).searcher
    assert isinstance(asha, AshaSearcherConfig)
    assert (asha.divisor, asha.max_rungs, asha.mode, asha.promotion) == (4.0, 5, "standard", "stop")
    pbt = load_config(
        write(
            tmp_path,
            base + "searcher: {name: pbt, metric: m, max_trials: 8, max_time: 16, "
            "population_size: 4, perturb_every: 4}\n",
        )
    ).searcher
    assert isinstance(pbt, PbtSearcherConfig)
    assert (pbt.truncate_fraction, pbt.resample_probability) == (0.2, 0.25)
    assert pbt.perturb_factors == (0.8, 1.2)
    grid = load_config(write(tmp_path, base + "searcher: {name: grid, metric: m, max_time: 1}\n"))
    assert isinstance(grid.searcher, GridSearcherConfig)
    assert grid.searcher.max_trials is None
    random = load_config(
        write(tmp_path, base + "searcher: {name: random, metric: m, max_trials: 3, max_time: 1}\n")
    )
    assert isinstance(random.searcher, RandomSearcherConfig)
    assert random.searcher.max_trials == 3


def test_keep_all_accepts_the_default_keep_count_only(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL + "checkpoint: {keep: all}\n"))
    assert cfg.checkpoint == CheckpointConfig(keep="all", keep_count=1)
    assert ExperimentConfig.from_yaml(cfg.to_yaml()) == cfg  # the stored copy says keep_count: 1


# ---------------------------------------------------------------------- explicit values


def test_every_field_set_explicitly(tmp_path: Path) -> None:
    cfg = full_config(tmp_path)

    assert (cfg.name, cfg.description) == ("full", "every setting set")
    assert cfg.labels == ("nightly", "digits")
    assert cfg.entrypoint == "pkg.train:main"
    assert cfg.context_dir == (tmp_path / "code").resolve()
    assert cfg.hyperparameters == {
        "lr": LogSpec(type="log", minval=-4, maxval=-1, base=2, count=4),
        "layers": IntSpec(type="int", minval=1, maxval=8, count=3),
        "dropout": DoubleSpec(type="double", minval=0.0, maxval=0.5, count=2),
        "act": CategoricalSpec(type="categorical", vals=("relu", "gelu")),
        "momentum": ConstSpec(val=0.9),
        "optimizer": {
            "name": ConstSpec(val="adamw"),
            "betas": ConstSpec(val={"b1": 0.9, "b2": 0.999}),
        },
    }
    assert cfg.searcher == AshaSearcherConfig(
        name="asha",
        metric="val_accuracy",
        smaller_is_better=False,
        max_trials=64,
        max_concurrent_trials=8,
        max_time=81,
        time_metric="epoch",
        divisor=3,
        max_rungs=4,
        mode="aggressive",
        promotion="pause",
    )
    assert cfg.resources == ResourcesConfig(
        slots_per_trial=SlotRange(min=2, max=8),
        gpus_per_slot=0.5,
        cpus_per_slot=2,
        priority=10,
        weight=2.5,
        max_slots=16,
        backend="horovod",
        reuse_workers=False,
    )
    assert cfg.resources.slots_per_trial.elastic
    assert cfg.max_restarts == 0
    assert cfg.checkpoint == CheckpointConfig(period=9, keep="latest", keep_count=3)
    # Relative storage resolves against context_dir, not the current folder.
    assert cfg.storage == str((tmp_path / "code" / "runs" / "ckpt").resolve())
    assert cfg.seed == 7
    assert cfg.tracking == TrackingConfig(mlflow_uri="http://mlflow:5000", tensorboard=False)
    assert cfg.environment == EnvironmentConfig(
        pip=("scikit-learn>=1.3", "tqdm"),
        env_vars={"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"},
        excludes=("data/", "*.ckpt"),
    )


def test_pbt_and_single_explicit_values(tmp_path: Path) -> None:
    pbt = load_config(
        write(
            tmp_path,
            "name: p\nentrypoint: a:b\nhyperparameters: {lr: {type: log, minval: -4, maxval: -1}}\n"
            "searcher: {name: pbt, metric: m, max_trials: 20, max_time: 30, population_size: 5,\n"
            "  perturb_every: 7.5, truncate_fraction: 0.4, resample_probability: 0,\n"
            "  perturb_factors: [0.5, 1, 2]}\n",
        )
    ).searcher
    assert pbt == PbtSearcherConfig(
        name="pbt",
        metric="m",
        max_trials=20,
        max_time=30,
        population_size=5,
        perturb_every=7.5,
        truncate_fraction=0.4,
        resample_probability=0.0,
        perturb_factors=(0.5, 1.0, 2.0),
    )
    single = load_config(
        write(tmp_path, MINIMAL.replace("max_time: 10", "max_time: 10, max_trials: 1"))
    )
    assert single.searcher.max_trials == 1


def test_slots_shorthand_is_a_fixed_range(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL + "resources: {slots_per_trial: 4}\n"))
    assert cfg.resources.slots_per_trial == SlotRange(min=4, max=4)


def test_numeric_env_values_become_strings_and_bools_do_not(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, MINIMAL + "environment: {env_vars: {A: 1, B: 0.5, C: '1e-3'}}\n")
    )
    assert cfg.environment.env_vars == {"A": "1", "B": "0.5", "C": "1e-3"}


# ---------------------------------------------------------------------- paths


def test_context_dir_absolute_relative_and_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "home" / "proj").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    folder = tmp_path / "exp"
    assert (
        load_config(write(folder, MINIMAL + "context_dir: ../code\n")).context_dir
        == tmp_path / "code"
    )
    absolute = MINIMAL + f"context_dir: {tmp_path / 'code'}\n"
    assert load_config(write(folder, absolute)).context_dir == tmp_path / "code"
    home = MINIMAL + "context_dir: ~/proj\n"
    assert load_config(write(folder, home)).context_dir == tmp_path / "home" / "proj"


def test_storage_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with_mlflow = MINIMAL + "tracking: {mlflow_uri: 'http://mlflow:5000'}\n"

    def storage(value: str) -> str:
        return load_config(write(tmp_path, with_mlflow + f"storage: '{value}'\n")).storage

    assert storage("ckpt") == str(tmp_path / "ckpt")
    assert storage("~/runs") == str(tmp_path / "home" / "runs")
    assert storage("file:///data/runs") == "/data/runs"
    assert storage("s3://bucket/prefix/runs") == "s3://bucket/prefix/runs"
    assert storage("gs://bucket/runs") == "gs://bucket/runs"


def test_remote_storage_with_mlflow_uri_is_fine(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, MINIMAL + "storage: s3://b/p\ntracking: {mlflow_uri: 'http://m:5000'}\n")
    )
    assert (cfg.storage, cfg.tracking.mlflow_uri) == ("s3://b/p", "http://m:5000")


def test_parse_config_resolves_against_the_given_folder_or_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = yaml.safe_load(MINIMAL)
    assert parse_config(data, context_dir=tmp_path).context_dir == tmp_path.resolve()
    monkeypatch.chdir(tmp_path)
    assert parse_config(data).context_dir == tmp_path.resolve()


def test_missing_context_dir_is_checked_unless_asked_not_to(tmp_path: Path) -> None:
    data = {**yaml.safe_load(MINIMAL), "context_dir": str(tmp_path / "gone")}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.problems == [
        f"context_dir: {tmp_path / 'gone'} is not a folder. context_dir is resolved against the "
        "experiment file's folder; point it at the folder that holds your training code."
    ]
    assert parse_config(data, check_paths=False).context_dir == tmp_path / "gone"


# ---------------------------------------------------------------------- hyperparameters


def test_hyperparameter_shorthands_nesting_and_space(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            MINIMAL
            + """\
hyperparameters:
  lr: 1e-3
  name: resnet
  sizes: [1, 2]
  flag: true
  nothing: null
  model:
    depth: {type: int, minval: 2, maxval: 6}
    head:
      type: {type: const, val: linear}
      scale: {type: log, minval: -2, maxval: 0, base: 2}
""",
        )
    )
    assert cfg.space() == {
        "lr": Const(0.001),
        "name": Const("resnet"),
        "sizes": Const([1, 2]),
        "flag": Const(True),
        "nothing": Const(None),
        "model": {
            "depth": Int(2, 6, None),
            "head": {"type": Const("linear"), "scale": Log(-2.0, 0.0, 2.0, None)},
        },
    }
    assert isinstance(cfg.hyperparameters["lr"], ConstSpec)
    assert isinstance(cfg.hyperparameters["lr"].val, float)  # not the string "1e-3"
    assert cfg.hyperparameter_paths() == [
        "lr",
        "name",
        "sizes",
        "flag",
        "nothing",
        "model.depth",
        "model.head.type",
        "model.head.scale",
    ]


def test_full_space_conversion(tmp_path: Path) -> None:
    assert full_config(tmp_path).space() == {
        "lr": Log(-4.0, -1.0, 2.0, 4),
        "layers": Int(1, 8, 3),
        "dropout": Double(0.0, 0.5, 2),
        "act": Categorical(("relu", "gelu")),
        "momentum": Const(0.9),
        "optimizer": {"name": Const("adamw"), "betas": Const({"b1": 0.9, "b2": 0.999})},
    }


def test_merge_key_override_is_not_a_duplicate_and_errors_point_at_the_override(
    tmp_path: Path,
) -> None:
    anchors = """\
hyperparameters:
  base: &base {type: double, minval: 0.0, maxval: 1.0}
  other:
    <<: *base
    maxval: {0}
"""
    cfg = load_config(write(tmp_path, MINIMAL + anchors.replace("{0}", "0.5")))
    assert cfg.hyperparameters["other"] == DoubleSpec(type="double", minval=0.0, maxval=0.5)
    assert problems_of(MINIMAL + anchors.replace("{0}", "-1.0"), tmp_path) == [
        "hyperparameters.other.maxval (line 8): maxval (-1) must be greater than minval (0). "
        "Swap them, or use a const (a bare value) for a fixed value."
    ]


_names = st.text("abcdefgh_", min_size=1, max_size=6)
_leaf = st.one_of(
    st.integers(-5, 5),
    st.builds(
        lambda lo, span: {"type": "int", "minval": lo, "maxval": lo + span},
        st.integers(-9, 9),
        st.integers(1, 9),
    ),
    st.builds(
        lambda lo, span: {"type": "double", "minval": lo, "maxval": lo + span},
        st.floats(-9, 9),
        st.floats(0.5, 9),
    ),
    st.builds(lambda lo: {"type": "log", "minval": lo, "maxval": lo + 2}, st.integers(-6, 0)),
    st.builds(
        lambda vals: {"type": "categorical", "vals": vals},
        st.lists(st.integers(0, 99), min_size=1, max_size=4, unique=True),
    ),
)
_tree = st.recursive(
    st.dictionaries(_names, _leaf, min_size=1, max_size=4),
    lambda children: st.dictionaries(_names, st.one_of(_leaf, children), min_size=1, max_size=3),
    max_leaves=12,
)


def _leaves(tree: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for name, node in tree.items():
        if isinstance(node, dict) and "type" not in node:
            out += _leaves(node, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


@settings(max_examples=60, deadline=None)
@given(tree=_tree)
def test_any_valid_space_round_trips_and_keeps_its_leaves(tree: dict[str, Any]) -> None:
    data = {**yaml.safe_load(MINIMAL), "hyperparameters": tree}
    cfg = parse_config(data, context_dir="/")
    assert cfg.hyperparameter_paths() == _leaves(tree)
    assert parse_config(cfg.to_dict()) == cfg
    assert ExperimentConfig.from_yaml(cfg.to_yaml()) == cfg


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 100), st.floats(allow_nan=True), st.text(max_size=8)
)
_junk = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(0, 3)), children, max_size=3),
    ),
    max_leaves=8,
)
_searcher_names = st.sampled_from(["single", "random", "grid", "asha", "pbt", "nope"])
_searcher_keys = st.sampled_from(
    [
        "metric",
        "max_trials",
        "max_time",
        "divisor",
        "population_size",
        "perturb_every",
        "mode",
        "typo",
    ]
)


@settings(max_examples=100, deadline=None)
@given(
    top=st.dictionaries(
        st.sampled_from(
            [
                "name",
                "entrypoint",
                "labels",
                "resources",
                "checkpoint",
                "storage",
                "seed",
                "tracking",
                "environment",
                "hyperparameters",
                "junk",
            ]
        ),
        _junk,
        max_size=6,
    ),
    searcher_name=_searcher_names,
    searcher=st.dictionaries(_searcher_keys, st.one_of(_scalars, st.integers(1, 64)), max_size=6),
)
def test_any_input_gives_a_config_or_a_config_error(
    top: dict[str, Any], searcher_name: str, searcher: dict[str, Any]
) -> None:
    data = {**top, "searcher": {"name": searcher_name, **searcher}}
    try:
        parse_config(data, context_dir="/", check_paths=False)
    except ConfigError as exc:
        assert exc.problems
        for text in exc.problems:
            assert isinstance(text, str) and ": " in text


# ---------------------------------------------------------------------- views


def test_runtime_env(tmp_path: Path) -> None:
    minimal = load_config(write(tmp_path, MINIMAL))
    assert minimal.runtime_env() == {"working_dir": str(tmp_path.resolve()), "excludes": [".git"]}
    full = full_config(tmp_path)
    assert full.runtime_env() == {
        "working_dir": str((tmp_path / "code").resolve()),
        "excludes": [".git", "data/", "*.ckpt"],
        "pip": ["scikit-learn>=1.3", "tqdm"],
        "env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"},
    }
    json.dumps(full.runtime_env())  # Ray ships it as JSON


def test_searcher_settings_of_asha(tmp_path: Path) -> None:
    assert full_config(tmp_path).searcher_settings() == SearcherSettings(
        name="asha",
        metric="val_accuracy",
        smaller_is_better=False,
        max_trials=64,
        max_concurrent_trials=8,
        max_time=81.0,
        time_metric="epoch",
        divisor=3.0,
        max_rungs=4,
        mode="aggressive",
        promotion="pause",
    )


def test_searcher_settings_of_pbt_single_and_grid(tmp_path: Path) -> None:
    pbt = load_config(REPO / "configs" / "digits-pbt.yaml").searcher_settings()
    assert pbt == SearcherSettings(
        name="pbt",
        metric="val_loss",
        smaller_is_better=True,
        max_trials=7,
        max_time=32.0,
        population_size=4,
        perturb_every=8.0,
        truncate_fraction=0.25,
        resample_probability=0.25,
        perturb_factors=(0.8, 1.2),
    )
    single = load_config(write(tmp_path, MINIMAL)).searcher_settings()
    assert single == SearcherSettings(name="single", metric="loss", max_trials=1, max_time=10.0)
    grid = load_config(
        write(
            tmp_path, "name: g\nentrypoint: a:b\nsearcher: {name: grid, metric: m, max_time: 2}\n"
        )
    ).searcher_settings()
    assert grid == SearcherSettings(name="grid", metric="m", max_trials=None, max_time=2.0)


def test_every_searcher_setting_is_a_field_of_the_search_core_settings() -> None:
    core = {f.name for f in dataclasses.fields(SearcherSettings)}
    for model in (
        SingleSearcherConfig,
        RandomSearcherConfig,
        GridSearcherConfig,
        AshaSearcherConfig,
        PbtSearcherConfig,
    ):
        assert set(model.model_fields) <= core, model.__name__


@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=lambda p: p.stem)
def test_example_config_starts_a_real_search(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.context_dir == REPO
    module, _, function = cfg.entrypoint.partition(":")
    assert (REPO / Path(*module.split("."))).with_suffix(".py").is_file()
    searcher = make_searcher(cfg.searcher_settings(), cfg.space(), seed=cfg.seed or 0)
    creates = [a for a in searcher.initial() if isinstance(a, Create)]
    assert creates
    for action in creates:
        assert set(action.hparams) == set(cfg.hyperparameters)
        lr = action.hparams["lr"]
        spec = cfg.hyperparameters["lr"]
        assert isinstance(spec, LogSpec)
        assert 10**spec.minval <= lr <= 10**spec.maxval


# ---------------------------------------------------------------------- stored copies


@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=lambda p: p.stem)
def test_example_config_round_trips(path: Path) -> None:
    cfg = load_config(path)
    assert parse_config(cfg.to_dict()) == cfg
    assert ExperimentConfig.from_yaml(cfg.to_yaml()) == cfg
    assert parse_config_yaml(cfg.to_yaml()) == cfg


def test_full_config_round_trips_as_plain_data(tmp_path: Path) -> None:
    cfg = full_config(tmp_path)
    data = cfg.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["resources"]["slots_per_trial"] == {"min": 2, "max": 8}
    assert data["hyperparameters"]["momentum"] == {"type": "const", "val": 0.9}
    assert parse_config(data) == cfg
    assert ExperimentConfig.from_yaml(cfg.to_yaml()) == cfg


def test_config_pickles_for_shipping_to_actors(tmp_path: Path) -> None:
    cfg = full_config(tmp_path)
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_stored_copy_reads_where_its_context_dir_does_not_exist(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "gone", MINIMAL))
    text = cfg.to_yaml()
    (tmp_path / "gone" / "exp.yaml").unlink()
    (tmp_path / "gone").rmdir()
    assert ExperimentConfig.from_yaml(text) == cfg
    with pytest.raises(ConfigError):
        parse_config_yaml(text)


# ---------------------------------------------------------------------- model rules


def test_models_are_frozen(tmp_path: Path) -> None:
    cfg = full_config(tmp_path)
    with pytest.raises(ValidationError):
        cfg.name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        cfg.resources.priority = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        cfg.searcher.metric = "loss"  # type: ignore[misc]


def test_checks_also_bind_models_built_in_python(tmp_path: Path) -> None:
    data = yaml.safe_load(
        "name: g\nentrypoint: a:b\nhyperparameters: {lr: {type: double, minval: 0, maxval: 1}}\n"
        "searcher: {name: grid, metric: m, max_time: 2}\n"
    )
    with pytest.raises(ValidationError, match="searcher 'grid' needs 'count'"):
        ExperimentConfig.model_validate(data, context={"base_dir": tmp_path})
    with pytest.raises(ValidationError, match="min \\(3\\) is larger than max \\(2\\)"):
        SlotRange(min=3, max=2)
    with pytest.raises(ValidationError, match="max_time \\(2\\) is smaller than divisor"):
        AshaSearcherConfig(name="asha", metric="m", max_trials=16, max_time=2)


# ---------------------------------------------------------------------- reading files


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert info.value.problems == [f"no such file: {tmp_path / 'nope.yaml'}. Check the path."]
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.problems == [f"{tmp_path} is a folder. Pass the experiment's .yaml file."]


def test_problems_from_plain_data_have_no_line_numbers(tmp_path: Path) -> None:
    data = yaml.safe_load(MINIMAL.replace("single", "random"))
    with pytest.raises(ConfigError) as info:
        parse_config(data, context_dir=tmp_path, source="api")
    assert info.value.problems == [
        "searcher.max_trials: required for searcher 'random'. "
        "Add max_trials: the total number of trials the search starts."
    ]
    assert info.value.source == "api"


def test_yaml_floats_with_exponents_but_no_dot_are_numbers(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            MINIMAL.replace("max_time: 10", "max_time: 1e2")
            + "hyperparameters: {wd: {type: double, minval: 1e-5, maxval: 1E-2}}\n",
        )
    )
    assert cfg.searcher.max_time == 100.0
    assert cfg.hyperparameters["wd"] == DoubleSpec(type="double", minval=1e-5, maxval=1e-2)
    assert math.isclose(cfg.space()["wd"].maxval, 0.01)  # type: ignore[union-attr]


def test_perturb_false_reaches_the_space_and_rejects_non_booleans() -> None:
    data = {
        **yaml.safe_load(MINIMAL),
        "hyperparameters": {
            "width": {"type": "int", "minval": 16, "maxval": 512, "perturb": False},
            "lr": {"type": "log", "minval": -4, "maxval": -1},
            "act": {"type": "categorical", "vals": ["relu", "gelu"], "perturb": False},
        },
    }
    cfg = parse_config(data, context_dir="/")
    space = cfg.space()
    assert space["width"] == Int(16, 512, perturb=False)
    assert space["lr"] == Log(-4, -1)  # perturb defaults to true
    assert space["act"] == Categorical(("relu", "gelu"), perturb=False)
    assert ExperimentConfig.from_yaml(cfg.to_yaml()) == cfg
    data["hyperparameters"]["width"]["perturb"] = "no"
    with pytest.raises(ConfigError, match="perturb"):
        parse_config(data, context_dir="/")
