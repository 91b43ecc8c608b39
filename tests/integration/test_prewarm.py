"""Workers started at submit, while the searcher actor starts, are the ones the first
trials run on (no second set of processes beside them)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from resolute.config import parse_config
from resolute.runtime import client

from .helpers import start_scheduler, stop_scheduler

USERFNS = Path(__file__).parent / "userfns"


pytestmark = pytest.mark.integration


@pytest.fixture
def conn(ray_local, tmp_path):
    # Embedded: the workers share this disk, so no package is uploaded; workers started with
    # an uploaded package are not started ahead (see resolute/runtime/prewarm.py).
    connection = start_scheduler(tmp_path, embedded=True)
    yield connection
    stop_scheduler(connection)


def experiment(tmp_path: Path, *, reuse: bool):
    data = {
        "name": f"prewarm-{reuse}",
        "entrypoint": "elastic_fn:fixed",
        "context_dir": str(USERFNS),
        "storage": str(tmp_path / "storage"),
        "seed": 2,
        "hyperparameters": {"delay": 0.05, "x": {"type": "double", "minval": 0, "maxval": 1}},
        "searcher": {
            "name": "random",
            "metric": "loss",
            "max_trials": 2,
            "max_concurrent_trials": 2,
            "max_time": 3,
        },
        "resources": {"slots_per_trial": 1, "reuse_workers": reuse},
        "max_restarts": 0,
    }
    return parse_config(yaml.safe_load(yaml.safe_dump(data)), context_dir=tmp_path)


def test_first_trials_run_on_the_workers_started_at_submit(conn, tmp_path):
    exp = client.submit(conn, experiment(tmp_path, reuse=True))
    summary = client.follow(conn, exp, poll_s=0.5)
    assert summary["status"] == "COMPLETED", summary
    workers = client.call(conn, "cluster_status")["workers"]
    # Two started ahead, both taken by the two trials; none created beside them.
    assert workers["created"] == 2, workers
    assert workers["reused"] == 2, workers


def test_no_workers_ahead_when_trials_do_not_reuse_them(conn, tmp_path):
    exp = client.submit(conn, experiment(tmp_path, reuse=False))
    summary = client.follow(conn, exp, poll_s=0.5)
    assert summary["status"] == "COMPLETED", summary
    workers = client.call(conn, "cluster_status")["workers"]
    assert workers == {"created": 2, "reused": 0, "idle": 0}, workers
