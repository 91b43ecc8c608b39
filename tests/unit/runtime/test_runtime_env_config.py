"""What the trials' workers are created with: the runtime_env from ``environment`` and the
uploaded package, and the pool key that keeps workers of different environments apart.
Pure: no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from resolute.config import ConfigError, ExperimentConfig, parse_config
from resolute.elastic.placement import Shape
from resolute.elastic.spec import TrialSpec

URI = "gcs://_ray_pkg_0123456789abcdef.zip"


def config(tmp_path: Path, **environment: object) -> ExperimentConfig:
    return parse_config(
        {
            "name": "env",
            "entrypoint": "train:main",
            "hyperparameters": {"x": 1},
            "searcher": {"name": "single", "metric": "loss", "max_time": 1},
            "environment": environment,
        },
        context_dir=tmp_path,
    )


def spec(runtime_env: dict[str, object] | None) -> TrialSpec:
    return TrialSpec(
        experiment_id=1,
        experiment_name="e",
        trial_id=1,
        searcher_trial_id=1,
        hparams={},
        seed=0,
        entrypoint="train:main",
        context_dir="",
        storage_root="/tmp/s",
        metric="loss",
        time_metric=None,
        until=1.0,
        runtime_env=runtime_env,
    )


def test_local_code_needs_no_runtime_env_unless_environment_sets_something(tmp_path):
    assert config(tmp_path).trial_runtime_env() is None
    cfg = config(tmp_path, pip=["einops==0.8.0"], env_vars={"A": "1"})
    assert cfg.trial_runtime_env() == {"pip": ["einops==0.8.0"], "env_vars": {"A": "1"}}


def test_an_uploaded_package_is_the_workers_working_dir(tmp_path):
    cfg = config(tmp_path, env_vars={"A": "1"}, excludes=["data/"]).with_package(URI)
    assert cfg.trial_runtime_env() == {"working_dir": URI, "env_vars": {"A": "1"}}
    # The whole runtime_env names the package too (excludes only matter when packing).
    assert cfg.runtime_env() == {"working_dir": URI, "env_vars": {"A": "1"}}
    # The stored copy keeps it: the scheduler reads the config back from the journal.
    again = ExperimentConfig.from_yaml(cfg.to_yaml())
    assert again.environment.package == URI and again == cfg


def test_package_must_be_a_uri(tmp_path):
    assert config(tmp_path, package="s3://bucket/code.zip").environment.package
    with pytest.raises(ConfigError, match="package"):
        config(tmp_path, package="./code.zip")


def test_workers_of_different_runtime_envs_are_different_shapes():
    plain = Shape.for_spec(spec(None))
    assert plain == Shape(cpus=1.0, gpus=0.0) and plain.actor_runtime_env() is None
    a = Shape.for_spec(spec({"working_dir": URI, "env_vars": {"A": "1", "B": "2"}}))
    same = Shape.for_spec(spec({"env_vars": {"B": "2", "A": "1"}, "working_dir": URI}))
    other = Shape.for_spec(spec({"working_dir": URI.replace("0123", "3210")}))
    assert a == same and hash(a) == hash(same)  # key order does not matter
    assert len({plain, a, other}) == 3
    assert a.actor_runtime_env() == {"working_dir": URI, "env_vars": {"A": "1", "B": "2"}}
    assert a.bundle() == plain.bundle() == {"CPU": 1.0}
