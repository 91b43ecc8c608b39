"""A scheduler that goes away and a new one that carries on: ``activate`` on the new
scheduler adopts the experiment from the journal and resumes its trials from their latest
checkpoints, into the same MLflow runs.

Two ways to go away: ``shutdown(pause=True)`` (what ``resolute cluster down`` does: the
running trial checkpoints first), and the scheduler actor killed mid-training (a crash:
the trial resumes from its last periodic checkpoint)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import pytest
import ray
import yaml

from resolute.config import parse_config
from resolute.errors import NotFound
from resolute.runtime import client
from resolute.runtime.journal import Journal
from resolute.runtime.storage import default_tracking_uri

from .helpers import start_scheduler, stop_scheduler, wait_until

USERFNS = Path(__file__).parent / "userfns"
STEPS = 60

pytestmark = pytest.mark.integration


def _config(tmp_path: Path, **changes):
    data = {
        "name": "recovery",
        "entrypoint": "recover_fn:steps",
        "context_dir": str(USERFNS),
        "storage": str(tmp_path / "storage"),
        "seed": 3,
        "hyperparameters": {"delay": 0.1, "every": 5},
        "searcher": {"name": "single", "metric": "loss", "max_time": STEPS},
        "resources": {"slots_per_trial": 1},
        "max_restarts": 0,
        **changes,
    }
    return parse_config(yaml.safe_load(yaml.safe_dump(data)), context_dir=tmp_path)


def _trained(journal: Journal, exp: int, steps: int, *, trial=None) -> bool:
    if trial is None:
        (trial,) = journal.list_trials(exp)
    ready = trial.latest_checkpoint is not None and trial.mlflow_run_id is not None
    return ready and (trial.last_step or 0) >= steps


def _crash(scheduler) -> None:
    """Kill the actor (no shutdown: its workers die with it) and wait until it is dead, so
    that nothing it still had in hand reaches the journal later."""
    ray.kill(scheduler)

    def dead() -> bool:
        try:
            ray.get(scheduler.list.remote(), timeout=10)
        except ray.exceptions.RayActorError:
            return True
        return False

    wait_until(dead, 60, "the scheduler's death")


def _mlflow(tmp_path: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=default_tracking_uri(str(tmp_path / "storage")))


def _logged_steps(tmp_path: Path, journal: Journal, exp: int) -> set[int]:
    (trial,) = journal.list_trials(exp)
    return {m.step for m in _mlflow(tmp_path).get_metric_history(trial.mlflow_run_id, "loss")}


def _finish_on_a_new_scheduler(
    tmp_path: Path, exp: int, journal: Journal, *, logged_before: set[int]
) -> None:
    """Activate ``exp`` on a new scheduler and check that it ends as if never interrupted.
    ``logged_before``: steps known to be in MLflow before the first scheduler went (a crash
    loses the metrics its tracker had not written yet; steps up to the checkpoint are not
    trained again)."""
    parent_before = journal.get_experiment(exp).mlflow_run_id
    (trial_before,) = journal.list_trials(exp)
    checkpoint_step = trial_before.latest_checkpoint_step
    assert checkpoint_step is not None and checkpoint_step >= 5

    second = start_scheduler(tmp_path)
    try:
        # An experiment the new scheduler has not adopted yet is named as such.
        with pytest.raises(NotFound, match=f"resolute experiment activate {exp}"):
            client.call(second, "status", exp)
        # Its code package's holder asks this: the package must stay for the adoption.
        assert ray.get(second.scheduler.experiment_over.remote(exp, 0.1)) is False
        summary = client.call(second, "activate", exp)
        assert summary["status"] == "ACTIVE"
        wait_until(lambda: client.call(second, "status", exp)["done"], 180, "the resumed run")
        summary = client.call(second, "status", exp)
        assert summary["status"] == "COMPLETED", summary
    finally:
        stop_scheduler(second)

    record = journal.get_experiment(exp)
    assert record.status.value == "COMPLETED"
    assert record.mlflow_run_id == parent_before  # the same parent run, continued
    (trial,) = journal.list_trials(exp)
    assert trial.status.value == "COMPLETED"
    assert trial.restarts == 0  # the scheduler went away, the user's code did not fail
    assert trial.last_step == STEPS
    assert trial.mlflow_run_id == trial_before.mlflow_run_id
    mc = _mlflow(tmp_path)
    steps = {m.step for m in mc.get_metric_history(trial.mlflow_run_id, "loss")}
    assert steps <= set(range(1, STEPS + 1))
    assert logged_before | set(range(checkpoint_step + 1, STEPS + 1)) <= steps
    resumed = mc.get_metric_history(trial.mlflow_run_id, "resumed_from")
    # Every step after the checkpoint was trained by the resumed code, which started there.
    after = {m.step: m.value for m in resumed if m.step > checkpoint_step and m.value > 0}
    assert set(after) == set(range(checkpoint_step + 1, STEPS + 1))
    assert set(after.values()) == {float(checkpoint_step)}
    assert mc.get_run(trial.mlflow_run_id).info.status == "FINISHED"


def _paused_and_gone(tmp_path: Path) -> tuple[str, Journal, int]:
    """An experiment trained a little, then paused by its scheduler's shutdown, as
    `resolute cluster down` does (the trial checkpoints), and the scheduler gone. Returns
    the journal's URL, the journal and the experiment's id."""
    first = start_scheduler(tmp_path)
    journal_url: str = first.journal_url  # type: ignore[attr-defined]
    journal = Journal(journal_url)
    exp = client.submit(first, _config(tmp_path))
    wait_until(lambda: _trained(journal, exp, 12), 120, "training before the shutdown")
    ray.get(first.scheduler.shutdown.remote(pause=True), timeout=120)
    _crash(first.scheduler)
    return journal_url, journal, exp


def test_a_paused_scheduler_shutdown_resumes_on_the_next_scheduler(ray_local, tmp_path):
    _, journal, exp = _paused_and_gone(tmp_path)
    assert journal.get_experiment(exp).status.value == "PAUSED"
    (trial,) = journal.list_trials(exp)
    assert trial.status.value == "PAUSED"
    assert trial.latest_checkpoint_step == trial.last_step  # checkpointed on the way out
    # Its tracker wrote everything before it went: nothing may be missing afterwards.
    logged = _logged_steps(tmp_path, journal, exp)
    assert logged == set(range(1, trial.last_step + 1))
    _finish_on_a_new_scheduler(tmp_path, exp, journal, logged_before=logged)


def test_a_crashed_scheduler_s_experiment_resumes_from_its_last_checkpoint(ray_local, tmp_path):
    first = start_scheduler(tmp_path)
    journal = Journal(first.journal_url)  # type: ignore[attr-defined]
    exp = client.submit(first, _config(tmp_path))
    wait_until(lambda: _trained(journal, exp, 17), 120, "training before the crash")
    logged = wait_until(lambda: _logged_steps(tmp_path, journal, exp), 60, "metrics in MLflow")
    _crash(first.scheduler)
    assert journal.get_experiment(exp).status.value == "ACTIVE"
    _finish_on_a_new_scheduler(tmp_path, exp, journal, logged_before=logged)


def test_an_ended_experiment_is_not_adopted(ray_local, tmp_path):
    first = start_scheduler(tmp_path)
    exp = client.submit(first, _config(tmp_path))
    client.call(first, "kill", exp)
    wait_until(lambda: client.call(first, "status", exp)["done"], 60, "the kill")
    stop_scheduler(first)
    second = start_scheduler(tmp_path)
    try:
        with pytest.raises(NotFound, match="has ended"):
            client.call(second, "activate", exp)
        assert ray.get(second.scheduler.experiment_over.remote(exp, 0.1)) is True
    finally:
        stop_scheduler(second)


def test_a_searcher_snapshot_behind_the_trials_is_caught_up(ray_local, tmp_path):
    # The searcher's snapshot is written just after the trial rows of its decision: a crash
    # in between leaves a snapshot that missed a trial's end and the next trial's creation.
    # Here the snapshot is rolled back to the first decision's on purpose: trial 1 has ended
    # since, and trial 2 runs, unknown to that snapshot.
    searcher = {
        "name": "random",
        "metric": "loss",
        "max_trials": 2,
        "max_concurrent_trials": 1,
        "max_time": 20,
    }
    hyperparameters = {
        "delay": 0.1,
        "every": 5,
        "x": {"type": "double", "minval": 0.0, "maxval": 1.0},
    }
    config = _config(tmp_path, searcher=searcher, hyperparameters=hyperparameters)
    first = start_scheduler(tmp_path)
    journal = Journal(first.journal_url)  # type: ignore[attr-defined]
    exp = client.submit(first, config)
    early = journal.load_searcher_snapshot(exp)

    def second_trial_trained() -> bool:
        trials = journal.list_trials(exp)
        return len(trials) == 2 and _trained(journal, exp, 7, trial=trials[1])

    wait_until(second_trial_trained, 120, "the second trial")
    _crash(first.scheduler)
    one, two = journal.list_trials(exp)
    assert one.status.value == "COMPLETED" and two.status.value == "RUNNING"
    journal.save_searcher_snapshot(exp, early)

    second = start_scheduler(tmp_path)
    try:
        client.call(second, "activate", exp)
        wait_until(lambda: client.call(second, "status", exp)["done"], 180, "the resumed run")
        assert client.call(second, "status", exp)["status"] == "COMPLETED"
    finally:
        stop_scheduler(second)
    rows = journal.list_trials(exp)
    # The restored searcher created trial 2 again, with the same draws, onto its own row.
    assert [(r.id, r.searcher_trial_id) for r in rows] == [(one.id, 1), (two.id, 2)]
    assert rows[1].hparams == two.hparams
    assert [r.status.value for r in rows] == ["COMPLETED", "COMPLETED"]
    assert rows[1].last_step == 20
    resumed = _mlflow(tmp_path).get_metric_history(rows[1].mlflow_run_id, "resumed_from")
    assert max(m.value for m in resumed) == float(two.latest_checkpoint_step)


def test_activate_without_a_cluster_resumes_in_an_embedded_ray(ray_local, tmp_path):
    # A laptop: the experiment's embedded Ray is gone with the command that ran it.
    # `resolute experiment activate ID` with no cluster runs it in a new embedded Ray.
    journal_url, journal, exp = _paused_and_gone(tmp_path)
    ray_local.shutdown()  # the command starts its own Ray; the next module gets a fresh one

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RESOLUTE_JOURNAL_URL"] = journal_url
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rs-", dir="/tmp")
    done = subprocess.run(
        [sys.executable, "-m", "resolute.cli", "experiment", "activate", str(exp)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"experiment {exp} (recovery) COMPLETED" in done.stdout
    (trial,) = journal.list_trials(exp)
    assert (trial.status.value, trial.last_step, trial.restarts) == ("COMPLETED", STEPS, 0)
    assert journal.get_experiment(exp).status.value == "COMPLETED"
