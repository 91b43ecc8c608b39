"""Several experiments on one multi-node cluster (``ray.cluster_utils.Cluster``): priority
takes slots back (shrinking elastic trials first, preempting whole trials second), the
preempted resume from their checkpoints, and equal priorities share by weight."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import pytest
import ray
import yaml

from resolute.config import parse_config
from resolute.runtime import client
from resolute.runtime.journal import Journal
from resolute.runtime.scheduler import NAMESPACE
from resolute.runtime.storage import default_tracking_uri

from .helpers import start_scheduler, wait_until

USERFNS = Path(__file__).parent / "userfns"


pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path):
    """Head without CPUs (only the control plane lives there) + worker nodes of 2 CPUs."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    yield c
    ray.shutdown()
    c.shutdown()


def connect(cluster, tmp_path: Path, **options) -> client.Connection:
    ray.init(address=cluster.address, namespace=NAMESPACE)
    return start_scheduler(tmp_path, address=cluster.address, name="scheduler", **options)


def config(tmp_path: Path, name: str, *, searcher: dict, resources: dict, fn: str = "train"):
    data = {
        "name": name,
        "entrypoint": f"elastic_fn:{fn}",
        "context_dir": str(USERFNS),
        "storage": str(tmp_path / "storage"),
        "seed": 3,
        "hyperparameters": {"delay": 0.05, "x": {"type": "double", "minval": 0, "maxval": 1}},
        "searcher": {"metric": "loss", **searcher},
        "resources": resources,
        "max_restarts": 0,
    }
    return parse_config(yaml.safe_load(yaml.safe_dump(data)), context_dir=tmp_path)


def test_priority_shrinks_first_then_preempts_and_low_resumes(cluster, tmp_path):
    cluster.add_node(num_cpus=2)
    cluster.add_node(num_cpus=2)
    conn = connect(cluster, tmp_path, cooldown_s=1.0)
    low_cfg = config(
        tmp_path,
        "low",
        searcher={"name": "random", "max_trials": 2, "max_concurrent_trials": 2, "max_time": 200},
        resources={"slots_per_trial": {"min": 1, "max": 2}, "priority": 50},
    )
    low = client.submit(conn, low_cfg)
    # Both low trials run, lent the idle slots (2 ranks each), inside their training loop.
    journal = Journal(conn.journal_url)
    wait_until(
        lambda: (
            client.call(conn, "status", low)["used_slots"] == 4
            and len([t for t in journal.list_trials(low) if (t.last_step or 0) >= 5]) == 2
        ),
        120,
        "low to fill 4 slots and train",
    )
    high_cfg = config(
        tmp_path,
        "high",
        searcher={"name": "single", "max_time": 60},
        resources={"slots_per_trial": 3, "priority": 10},
        fn="fixed",
    )
    high = client.submit(conn, high_cfg)
    high_summary = client.follow(conn, high, poll_s=0.5)
    assert high_summary["status"] == "COMPLETED", high_summary
    low_summary = client.follow(conn, low, poll_s=0.5)
    assert low_summary["status"] == "COMPLETED", low_summary

    mc = mlflow.MlflowClient(tracking_uri=default_tracking_uri(str(tmp_path / "storage")))
    decisions = {}
    for t in journal.list_trials(low):
        run = mc.get_run(t.mlflow_run_id)
        decisions[t.id] = [v for k, v in sorted(run.data.tags.items()) if k.startswith("decision.")]
        history = mc.get_metric_history(t.mlflow_run_id, "loss")
        steps = sorted({m.step for m in history})
        # every step of the trial's run is in MLflow, nothing missing after preemption
        assert steps == list(range(1, 201)), (t.id, steps[:5], len(steps))
        assert t.status == "COMPLETED"
    flat = [d for ds in decisions.values() for d in ds]
    assert any("resized 2 -> 1" in d for d in flat), decisions  # shrunk first
    preempted = [tid for tid, ds in decisions.items() if any("preempted" in d for d in ds)]
    assert len(preempted) == 1, decisions  # and one whole trial preempted
    # the preempted trial resumed from its checkpoint: its step count went on
    sizes = mc.get_metric_history(journal.get_trial(preempted[0]).mlflow_run_id, "world_size")
    assert len(sizes) >= 200
    ray.get(conn.scheduler.shutdown.remote())


def test_equal_priority_shares_slots_by_weight(cluster, tmp_path):
    cluster.add_node(num_cpus=3)
    conn = connect(cluster, tmp_path, cooldown_s=0.0)
    common = {"name": "random", "max_trials": 24, "max_time": 60}
    a = client.submit(
        conn,
        config(tmp_path, "w1", searcher=common, resources={"weight": 1.0}, fn="fixed"),
    )
    b = client.submit(
        conn,
        config(tmp_path, "w2", searcher=common, resources={"weight": 2.0}, fn="fixed"),
    )
    # Measure while both have queued work: from when B runs until either is nearly done.
    wait_until(lambda: client.call(conn, "status", b)["used_slots"] > 0, 120, "b to start")
    time.sleep(3.0)  # past the first reallocation
    s0 = {e: client.call(conn, "status", e)["slot_seconds"] for e in (a, b)}

    def both_busy() -> bool:
        counts = [client.call(conn, "status", e)["counts"] for e in (a, b)]
        return all(c.get("QUEUED", 0) + c.get("PENDING", 0) >= 1 for c in counts)

    deadline = time.monotonic() + 40.0
    while time.monotonic() < deadline and both_busy():
        time.sleep(0.5)
    s1 = {e: client.call(conn, "status", e)["slot_seconds"] for e in (a, b)}
    got_a, got_b = s1[a] - s0[a], s1[b] - s0[b]
    assert got_a + got_b > 30, (got_a, got_b)  # a real window, 3 slots busy
    ratio = got_b / got_a
    print(f"weighted fair share: B/A slot-seconds = {ratio:.3f} (target 2, within 10%)")
    assert 1.8 <= ratio <= 2.2, (ratio, got_a, got_b)
    for e in (a, b):
        assert client.follow(conn, e, poll_s=0.5)["status"] == "COMPLETED"
    ray.get(conn.scheduler.shutdown.remote())
