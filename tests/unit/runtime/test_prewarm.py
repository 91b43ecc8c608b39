"""How many workers the scheduler starts ahead of an experiment's first trials."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from resolute.config import parse_config
from resolute.runtime.prewarm import first_workers, slots_free


def config(tmp_path: Path, searcher: dict, resources: dict):
    data = {
        "name": "p",
        "entrypoint": "train:train",
        "hyperparameters": {"x": {"type": "double", "minval": 0, "maxval": 1}},
        "searcher": {"metric": "loss", "max_time": 10, **searcher},
        "resources": resources,
    }
    return parse_config(yaml.safe_load(yaml.safe_dump(data)), check_paths=False)


@pytest.mark.parametrize(
    ("searcher", "resources", "expected"),
    [
        ({"name": "random", "max_trials": 50, "max_concurrent_trials": 4}, {}, 4),
        ({"name": "random", "max_trials": 3}, {}, 3),  # no cap: every trial at once
        (
            {"name": "random", "max_trials": 50, "max_concurrent_trials": 4},
            {"slots_per_trial": {"min": 2, "max": 4}},
            8,  # each trial's minimum
        ),
        (
            {"name": "random", "max_trials": 50, "max_concurrent_trials": 4},
            {"slots_per_trial": 2, "max_slots": 5},
            5,  # the experiment's cap
        ),
        (
            {"name": "random", "max_trials": 50, "max_concurrent_trials": 4},
            {"reuse_workers": False},
            0,  # a fresh process per trial: nothing to warm
        ),
        ({"name": "single"}, {}, 1),
    ],
)
def test_first_workers(tmp_path: Path, searcher: dict, resources: dict, expected: int) -> None:
    assert first_workers(config(tmp_path, searcher, resources)) == expected


def test_slots_free_counts_whole_slots_of_every_resource() -> None:
    assert slots_free({"CPU": 4.0}, {"CPU": 1.0}) == 4
    assert slots_free({"CPU": 3.5}, {"CPU": 1.0}) == 3
    assert slots_free({"CPU": 8.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}) == 1
    assert slots_free({"CPU": 8.0}, {"CPU": 2.0, "GPU": 1.0}) == 0  # no GPU free
    assert slots_free({"CPU": 0.3}, {"CPU": 0.1}) == 3  # float error does not lose a slot
