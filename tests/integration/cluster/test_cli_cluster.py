"""``resolute cluster up | status | down``: rendering of a cluster_status() dict (no Ray),
the error for an unreachable cluster (no Ray), and the whole lifecycle as subprocesses
against a real autoscaling head, the way a user runs it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from resolute.cli_cluster import EXIT_NO_CLUSTER, register, render_status, short_ids, slot_kind
from resolute.runtime.journal import Journal

from .fake_cluster import FakeAutoscalingCluster

HEAD = "a1" * 28
WORKER_A = "fffffffffffffffffffffffffffffffffffffffffffffffffff00001"
WORKER_B = "fffffffffffffffffffffffffffffffffffffffffffffffffff00002"

STATUS: dict[str, Any] = {
    "address": "10.0.0.5:6379",
    "scheduler": "running",
    "nodes": [
        {"node_id": WORKER_A, "resources": {"CPU": 8.0, "GPU": 2.0}, "alive": True},
        {"node_id": HEAD, "resources": {"CPU": 4.0}, "alive": True, "head": True},
        {"node_id": WORKER_B, "resources": {"CPU": 8.0, "GPU": 2.0}, "alive": False},
    ],
    "experiments": [
        {
            "id": 7,
            "name": "bert-asha",
            "priority": 50,
            "weight": 1.0,
            "used_slots": 1,
            "queued_trials": 12,
            "running_trials": 1,
        },
        {
            "id": 3,
            "name": "resnet-pbt",
            "priority": 10,
            "weight": 2.0,
            "used_slots": 1,
            "queued_trials": 0,
            "running_trials": 1,
        },
    ],
    "pending_requests": [{"CPU": 1.0, "GPU": 1.0}] * 2,
    "autoscaler": {"pending_launches": {"gpu-worker": 1}, "failed_nodes": [], "requested": []},
}


def test_render_status_shows_slots_experiments_and_requests() -> None:
    text = render_status(STATUS)
    lines = text.splitlines()
    # GPU slots on the alive nodes only: the dead worker's 2 do not count.
    assert lines[0] == "cluster at 10.0.0.5:6379: 2 node(s) alive, 2 GPU slot(s), 2 in use (100%)"
    assert "scheduler: running" in text
    node_rows = [line for line in lines if line.startswith("...")]
    assert len(node_rows) == 3
    assert node_rows[0].startswith("..." + HEAD[-8:]) and " head " in node_rows[0]
    assert sum(" dead " in row for row in node_rows) == 1
    # experiments by priority: 3 (priority 10) before 7 (priority 50)
    resnet = next(i for i, line in enumerate(lines) if "resnet-pbt" in line)
    bert = next(i for i, line in enumerate(lines) if "bert-asha" in line)
    assert resnet < bert
    assert lines[bert].split() == ["7", "bert-asha", "50", "1", "1", "1", "12"]
    assert "pending autoscaler requests: 2 x {CPU: 1, GPU: 1}" in text
    assert "autoscaler launching: 1 x gpu-worker" in text


def test_render_status_cpu_cluster_without_experiments() -> None:
    snapshot = {
        "nodes": [{"node_id": HEAD, "resources": {"CPU": 4.0}, "alive": True, "head": True}],
        "experiments": [],
        "pending_requests": [],
    }
    assert slot_kind(snapshot["nodes"]) == "CPU"
    text = render_status(snapshot)
    assert text.splitlines()[0] == "cluster: 1 node(s) alive, 4 CPU slot(s), 0 in use (0%)"
    assert "experiments: none" in text
    assert "pending autoscaler requests: none" in text


def test_short_ids_tell_nodes_apart() -> None:
    names = short_ids([HEAD, WORKER_A, WORKER_B])
    assert len(set(names.values())) == 3
    assert names[HEAD] == "..." + HEAD[-8:]  # prefixes never differ: suffixes do
    assert short_ids(["0123456789ab", "0123456799ab"]) == {
        "0123456789ab": "012345678",
        "0123456799ab": "012345679",
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("verb", ["up", "status", "down"])
def test_no_cluster_is_a_clear_error_with_exit_2(verb: str) -> None:
    main = click.Group("resolute")
    register(main)
    address = f"127.0.0.1:{_free_port()}"
    result = CliRunner().invoke(main, ["cluster", verb, "--address", address])
    assert result.exit_code == EXIT_NO_CLUSTER, result.output
    assert f"no Ray cluster at {address}" in result.output
    assert "ray start --head" in result.output and "RAY_ADDRESS" in result.output


# ------------------------------------------------------------------ lifecycle
def run_cli(cluster: FakeAutoscalingCluster, *args: str, env: dict[str, str]) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "resolute.cli", "cluster", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.integration
def test_up_status_down_on_a_real_head(
    fake_cluster_factory: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    cluster = fake_cluster_factory()
    env = dict(os.environ)
    env.update(cluster.driver_env())
    # What a user has: an address, and the token ray wrote to ~/.ray; no RAY_AUTH_MODE.
    env.pop("RAY_AUTH_MODE", None)
    journal = f"sqlite:///{tmp_path / 'journal.db'}"

    up = run_cli(cluster, "up", "--journal-url", journal, "--resize-cooldown", "2.5", env=env)
    assert up.returncode == 0, up.stderr
    assert f"resolute scheduler running on {cluster.address}" in up.stdout
    again = run_cli(cluster, "up", env=env)
    assert again.returncode == 0, again.stderr
    assert "already runs" in again.stdout

    # No address: the cluster that `ray start` recorded in RAY_TMPDIR ("auto").
    auto_env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    status = run_cli(cluster, "status", env=auto_env)
    assert status.returncode == 0, status.stderr
    assert f"cluster at {cluster.address}: 1 node(s) alive, 1 CPU slot(s), 0 in use" in (
        status.stdout
    )
    assert "scheduler: running (resize cool-down 2.5 s)" in status.stdout
    assert "experiments: none" in status.stdout

    down = run_cli(cluster, "down", env=env)
    assert down.returncode == 0, down.stderr
    assert f"resolute scheduler stopped on {cluster.address}" in down.stdout
    after = run_cli(cluster, "status", "--json", env=env)
    assert after.returncode == 0, after.stderr
    data = json.loads(after.stdout)
    assert data["scheduler"] == "not running: start it with `resolute cluster up`"
    assert data["address"] == cluster.address
    assert [n["head"] for n in data["nodes"]] == [True]
    gone = run_cli(cluster, "down", env=env)
    assert gone.returncode == 0 and "nothing to stop" in gone.stdout
    assert Path(tmp_path / "journal.db").exists(), "the scheduler used the journal it was given"


SLOW_TRIAL = """
import time


def train(ctx):
    for step in range(1, 200):
        time.sleep(0.25)
        ctx.report(step, {"loss": 1.0 / step})
        if ctx.should_stop():
            return
"""


@pytest.mark.integration
def test_status_shows_the_experiments_of_the_scheduler(
    autoscaling_cluster: FakeAutoscalingCluster, tmp_path: Path
) -> None:
    import ray
    import yaml

    from resolute.config import load_config
    from resolute.runtime import client

    env = dict(os.environ)
    env.update(autoscaling_cluster.driver_env())
    env.pop("RAY_AUTH_MODE", None)
    journal = f"sqlite:///{tmp_path / 'journal.db'}"
    up = run_cli(autoscaling_cluster, "up", "--journal-url", journal, env=env)
    assert up.returncode == 0, up.stderr

    (tmp_path / "slow.py").write_text(SLOW_TRIAL)
    (tmp_path / "exp.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "slow-single",
                "entrypoint": "slow:train",
                "storage": str(tmp_path / "storage"),
                "hyperparameters": {"x": 1},
                "searcher": {"name": "single", "metric": "loss", "max_time": 199},
                "tracking": {"tensorboard": False},
            }
        )
    )
    conn = client.connect(autoscaling_cluster.address)  # finds the scheduler `up` started
    exp_id = client.submit(conn, load_config(tmp_path / "exp.yaml"))
    deadline = time.monotonic() + 120
    while True:
        snap = ray.get(conn.scheduler.cluster_status.remote(), timeout=30)
        mine = [e for e in snap["experiments"] if e["id"] == exp_id]
        if mine and mine[0]["used_slots"] == 1 and mine[0]["running_trials"] == 1:
            break
        assert time.monotonic() < deadline, f"the trial never ran: {snap}"
        time.sleep(0.5)

    status = run_cli(autoscaling_cluster, "status", env=env)
    assert status.returncode == 0, status.stderr
    assert "1 node(s) alive, 1 CPU slot(s), 1 in use (100%)" in status.stdout
    row = next(line for line in status.stdout.splitlines() if "slow-single" in line)
    assert row.split() == [str(exp_id), "slow-single", "42", "1", "1", "1", "0"]

    down = run_cli(autoscaling_cluster, "down", env=env)
    assert down.returncode == 0, down.stderr
    assert f"pausing 1 active experiment(s): {exp_id} (slow-single)" in down.stdout
    assert f"`resolute experiment activate ID` for each of: {exp_id}" in down.stdout
    # Paused, not killed: its trial checkpointed, and a later scheduler resumes it.
    assert Journal(journal).get_experiment(exp_id).status.value == "PAUSED"
    with pytest.raises(ValueError):
        ray.get_actor("scheduler", namespace="resolute")
