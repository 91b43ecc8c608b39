"""resolute as a long-lived service on a real Ray cluster (``ray start --head``, fake
autoscaler v1): the CLI exits while experiments run and another CLI process follows them; an
experiment that needs more slots than the head has makes the autoscaler add nodes, its
elastic trial grows onto them, and the nodes are released when it ends."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from resolute.runtime.journal import Journal
from resolute.runtime.storage import default_tracking_uri

from .cluster.fake_cluster import FakeAutoscalingCluster, WorkerType

USERFNS = Path(__file__).parent / "userfns"
RESOLUTE = [sys.executable, "-m", "resolute.cli"]

pytestmark = pytest.mark.integration


@pytest.fixture
def no_local_ray():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    yield


def write_config(tmp_path: Path, name: str, **overrides) -> Path:
    data = {
        "name": name,
        "entrypoint": "elastic_fn:fixed",
        "context_dir": str(USERFNS),
        "storage": str(tmp_path / "storage"),
        "seed": 5,
        "hyperparameters": {"delay": 0.05, "x": {"type": "double", "minval": 0, "maxval": 1}},
        "searcher": {"name": "random", "metric": "loss", "max_trials": 4, "max_time": 40},
        "max_restarts": 0,
    }
    data.update(overrides)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def cli(args: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        RESOLUTE + args, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_cli_exits_while_experiment_runs_and_another_cli_follows(tmp_path, no_local_ray):
    cluster = FakeAutoscalingCluster(head_resources={"CPU": 2}, worker_types={}, max_workers=0)
    cluster.start()
    try:
        env = {**os.environ, **cluster.driver_env(), "RESOLUTE_HOME": str(tmp_path / "home")}
        path = write_config(tmp_path, "detached")
        started = time.monotonic()
        created = cli(["experiment", "create", str(path), "--detach"], env)
        assert created.returncode == 0, created.stderr
        exp_id = int(re.search(r"experiment (\d+) submitted", created.stdout).group(1))
        journal = Journal(f"sqlite:///{tmp_path / 'home' / 'resolute.db'}")
        # The CLI is gone; the experiment is not finished (4 trials of >= 2 s on 2 slots).
        assert journal.get_experiment(exp_id).status == "ACTIVE"
        listed = cli(["experiment", "list"], env)
        assert listed.returncode == 0
        assert re.search(rf"^{exp_id}\s+detached\s+ACTIVE", listed.stdout, re.M), listed.stdout
        followed = cli(["experiment", "follow", str(exp_id)], env)
        assert followed.returncode == 0, followed.stderr
        assert f"experiment {exp_id} COMPLETED" in followed.stdout
        trials = journal.list_trials(exp_id)
        assert len(trials) == 4 and all(t.status == "COMPLETED" for t in trials)
        assert time.monotonic() - started < 240
        # a bad id is a clear error with exit code 2
        missing = cli(["experiment", "pause", "999"], env)
        assert missing.returncode == 2 and "999" in missing.stderr
    finally:
        cluster.stop()


def test_autoscaler_adds_nodes_elastic_trial_grows_and_nodes_are_released(tmp_path, no_local_ray):
    import ray

    cluster = FakeAutoscalingCluster(
        head_resources={"CPU": 1},
        worker_types={"cpu1": WorkerType({"CPU": 1})},
        max_workers=2,
        idle_timeout_s=5.0,
    )
    cluster.start()
    try:
        env = {**os.environ, **cluster.driver_env(), "RESOLUTE_HOME": str(tmp_path / "home")}
        path = write_config(
            tmp_path,
            "grow",
            entrypoint="elastic_fn:grow_until",
            hyperparameters={"delay": 0.05, "target": 3, "settle": 20},
            searcher={"name": "single", "metric": "loss", "max_time": 100000},
            resources={"slots_per_trial": {"min": 1, "max": 3}},
        )
        created = cli(["experiment", "create", str(path), "--follow"], env, timeout=420)
        assert created.returncode == 0, created.stdout + created.stderr
        journal = Journal(f"sqlite:///{tmp_path / 'home' / 'resolute.db'}")
        exp = journal.list_experiments()[0]
        (trial,) = journal.list_trials(exp.id)
        assert trial.status == "COMPLETED"
        mc = mlflow.MlflowClient(tracking_uri=default_tracking_uri(str(tmp_path / "storage")))
        sizes = [m.value for m in mc.get_metric_history(trial.mlflow_run_id, "world_size")]
        assert sizes[0] == 1.0 and max(sizes) == 3.0, sizes  # grew onto the new nodes
        steps = [m.step for m in mc.get_metric_history(trial.mlflow_run_id, "loss")]
        assert sorted(set(steps)) == list(range(1, max(steps) + 1))
        # after the experiment the autoscaler releases the nodes it added
        cluster.connect(namespace="resolute-test")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            alive = [n for n in ray.nodes() if n["Alive"]]
            if len(alive) == 1:
                break
            time.sleep(2)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 1
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.stop()
        shutil.rmtree(tmp_path / "home", ignore_errors=True)
