"""The experiment file: parsed once, at the edge, into immutable typed objects.

``load_config(path)`` reads a YAML experiment file and returns an ``ExperimentConfig``, or
raises one ``resolute.errors.ConfigError`` that lists every problem with its field path,
YAML line and what to do. Nothing below this package sees raw dicts.
"""

from __future__ import annotations

from resolute.config._experiment import DEFAULT_STORAGE, ExperimentConfig
from resolute.config._hyperparameters import (
    CategoricalSpec,
    ConstSpec,
    DoubleSpec,
    Hyperparameter,
    IntSpec,
    LogSpec,
    ParameterSpec,
)
from resolute.config._load import load_config, parse_config, parse_config_yaml
from resolute.config._searcher import (
    AshaSearcherConfig,
    GridSearcherConfig,
    PbtSearcherConfig,
    RandomSearcherConfig,
    SearcherConfig,
    SingleSearcherConfig,
)
from resolute.config._sections import (
    CheckpointConfig,
    EnvironmentConfig,
    ResourcesConfig,
    SlotRange,
    TrackingConfig,
)
from resolute.errors import ConfigError

__all__ = [
    "DEFAULT_STORAGE",
    "AshaSearcherConfig",
    "CategoricalSpec",
    "CheckpointConfig",
    "ConfigError",
    "ConstSpec",
    "DoubleSpec",
    "EnvironmentConfig",
    "ExperimentConfig",
    "GridSearcherConfig",
    "Hyperparameter",
    "IntSpec",
    "LogSpec",
    "ParameterSpec",
    "PbtSearcherConfig",
    "RandomSearcherConfig",
    "ResourcesConfig",
    "SearcherConfig",
    "SingleSearcherConfig",
    "SlotRange",
    "TrackingConfig",
    "load_config",
    "parse_config",
    "parse_config_yaml",
]
