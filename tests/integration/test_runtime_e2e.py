"""The runtime spine end to end on embedded Ray: real searcher, real worker actors, real
MLflow store (read back with MlflowClient), real journal and storage directory."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import mlflow
import pytest
import ray
import yaml

from resolute.config import load_config
from resolute.runtime import client
from resolute.runtime.journal import Journal
from resolute.runtime.storage import ExperimentStorage, default_tracking_uri

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def conn(ray_local, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    journal_url = f"sqlite:///{home / 'resolute.db'}"
    connection = client.connect(journal_url=journal_url)
    connection.journal_url = journal_url  # type: ignore[attr-defined]
    yield connection
    ray.get(connection.scheduler.shutdown.remote())
    ray.kill(connection.scheduler)


def write_config(tmp_path: Path, body: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def run(conn, path: Path) -> dict:
    config = load_config(path)
    exp_id = client.submit(conn, config)
    summary = client.follow(conn, exp_id, poll_s=0.5)
    return summary


def digits_config(tmp_path: Path, searcher: str, **extra: object) -> Path:
    # PBT clones load their donor's weights: architecture (width) must not vary under PBT.
    width = 64 if searcher == "pbt" else {"type": "categorical", "vals": [32, 64]}
    data = {
        "name": f"digits-{searcher}-test",
        "entrypoint": "examples.digits.train:train",
        "context_dir": str(REPO),
        "storage": str(tmp_path / "storage"),
        "seed": 7,
        "hyperparameters": {
            "lr": {"type": "log", "minval": -3, "maxval": -1.5},
            "width": width,
            "dropout": {"type": "double", "minval": 0.0, "maxval": 0.2},
            "weight_decay": {"type": "log", "minval": -5, "maxval": -3},
            "batch_size": 64,
        },
        "searcher": {"name": searcher, "metric": "val_loss", **extra},
        "resources": {"slots_per_trial": 1},
        "max_restarts": 0,
    }
    path = tmp_path / f"{searcher}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_asha_end_to_end_journal_mlflow_storage_agree(conn, tmp_path):
    path = digits_config(
        tmp_path, "asha", max_trials=8, max_time=16, divisor=4, max_concurrent_trials=2
    )
    summary = run(conn, path)
    assert summary["status"] == "COMPLETED", summary
    journal = Journal(conn.journal_url)
    exp = journal.get_experiment(summary["id"])
    trials = journal.list_trials(exp.id)
    assert len(trials) == 8
    assert {t.status for t in trials} <= {"COMPLETED", "STOPPED"}
    assert any(t.status == "COMPLETED" for t in trials)

    config = load_config(path)
    mc = mlflow.MlflowClient(tracking_uri=default_tracking_uri(config.storage))
    experiment = mc.get_experiment_by_name(config.name)
    runs = mc.search_runs([experiment.experiment_id], max_results=100)
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {
        int(r.data.tags["resolute.trial_id"]): r
        for r in runs
        if "mlflow.parentRunId" in r.data.tags
    }
    assert len(parent) == 1 and parent[0].info.run_id == exp.mlflow_run_id
    assert set(children) == {t.id for t in trials}
    storage = ExperimentStorage(config.storage, exp.id)
    for t in trials:
        run_ = children[t.id]
        assert run_.data.tags["resolute.status"] == t.status
        assert float(run_.data.params["lr"]) == pytest.approx(t.hparams["lr"])
        history = mc.get_metric_history(run_.info.run_id, "val_loss")
        steps = [m.step for m in history]
        assert steps == sorted(set(steps)), "every reported step exactly once"
        assert max(steps) == t.last_step
        best = min(m.value for m in history)
        assert best == pytest.approx(t.best_metric)
        assert storage.trial_log_path(t.id).exists()
    # the experiment's best trial is the trial with the smallest val_loss, and its checkpoint
    # exists on storage and is recorded in MLflow
    best_trial = min(trials, key=lambda t: t.best_metric if t.best_metric is not None else math.inf)
    assert exp.best_trial_id == best_trial.id
    assert best_trial.latest_checkpoint
    assert Path(best_trial.latest_checkpoint).exists()
    assert children[best_trial.id].data.tags["checkpoint"] == best_trial.latest_checkpoint
    assert (storage.root_path / "config.yaml").exists() if hasattr(storage, "root_path") else True


def test_asha_pause_mode_resumes_from_checkpoint(conn, tmp_path):
    """A trial paused at a rung and resumed later continues its step count and loss curve."""
    path = digits_config(
        tmp_path,
        "asha",
        max_trials=8,
        max_time=16,
        divisor=2,
        max_rungs=3,
        mode="aggressive",
        promotion="pause",
        max_concurrent_trials=2,
    )
    summary = run(conn, path)
    assert summary["status"] == "COMPLETED", summary
    config = load_config(path)
    journal = Journal(conn.journal_url)
    mc = mlflow.MlflowClient(tracking_uri=default_tracking_uri(config.storage))
    experiment = mc.get_experiment_by_name(config.name)
    runs = mc.search_runs([experiment.experiment_id], max_results=100)
    resumed = 0
    for r in runs:
        if "mlflow.parentRunId" not in r.data.tags:
            continue
        decisions = [v for k, v in r.data.tags.items() if k.startswith("decision.")]
        if not any(d.endswith(": pause") for d in decisions):
            continue
        history = mc.get_metric_history(r.info.run_id, "train_loss")
        steps = [m.step for m in history]
        if len(steps) <= 4:  # paused and never resumed
            continue
        resumed += 1
        # continues its step count: 1, 2, ..., n with no restart from 1
        assert steps == list(range(1, len(steps) + 1))
        # and its loss curve: the first epoch after the resume is not back at the start
        losses = [m.value for m in history]
        pause_at = 4 if len(steps) > 4 else len(steps)
        assert losses[pause_at] < losses[0] * 0.9
    assert resumed >= 1, "at least one trial was paused and resumed"
    trials = journal.list_trials(summary["id"])
    assert all(t.status in ("COMPLETED", "STOPPED") for t in trials)


def test_pbt_clones_start_from_donor_weights(conn, tmp_path):
    path = digits_config(
        tmp_path,
        "pbt",
        max_trials=10,
        max_time=12,
        population_size=4,
        perturb_every=4,
        truncate_fraction=0.25,
        max_concurrent_trials=2,
    )
    summary = run(conn, path)
    assert summary["status"] == "COMPLETED", summary
    config = load_config(path)
    journal = Journal(conn.journal_url)
    trials = {t.id: t for t in journal.list_trials(summary["id"])}
    clones = [t for t in trials.values() if t.clone_from is not None]
    assert clones, "PBT created clones"
    mc = mlflow.MlflowClient(tracking_uri=default_tracking_uri(config.storage))
    for clone in clones:
        run_id = trials[clone.id].mlflow_run_id
        history = mc.get_metric_history(run_id, "val_loss")
        first = min(history, key=lambda m: m.step)
        # the clone's first report continues from its donor's step
        assert first.step > 1
        donor_hist = mc.get_metric_history(trials[clone.clone_from].mlflow_run_id, "val_loss")
        donor_at = {m.step: m.value for m in donor_hist}
        # starting from trained weights: far better than a fresh network's first epoch
        assert first.value < max(donor_at.values())


def test_raising_trial_is_errored_and_experiment_continues(conn, tmp_path):
    code = tmp_path / "flaky.py"
    code.write_text(
        textwrap.dedent(
            """
            def train(ctx):
                if ctx.hparams["x"] == 2:
                    raise RuntimeError("boom at x=2")
                for step in range(1, 4):
                    ctx.report(step, {"loss": float(ctx.hparams["x"]) / step})
                    if ctx.should_stop():
                        return
            """
        )
    )
    path = write_config(
        tmp_path,
        f"""
        name: flaky
        entrypoint: flaky:train
        storage: {tmp_path / "storage"}
        hyperparameters:
          x: {{type: categorical, vals: [1, 2, 3]}}
        searcher: {{name: grid, metric: loss, max_time: 3}}
        max_restarts: 1
        """,
    )
    summary = run(conn, path)
    assert summary["status"] == "COMPLETED", summary
    journal = Journal(conn.journal_url)
    trials = {t.hparams["x"]: t for t in journal.list_trials(summary["id"])}
    assert trials[2].status == "ERRORED"
    assert trials[2].restarts == 1
    assert "boom at x=2" in (trials[2].error or "")
    assert trials[1].status == trials[3].status == "COMPLETED"
    storage = ExperimentStorage(str(tmp_path / "storage"), summary["id"])
    log_text = storage.trial_log_path(trials[2].id).read_text()
    assert "Traceback" in log_text and "boom at x=2" in log_text


def test_missing_entrypoint_fails_fast(conn, tmp_path):
    (tmp_path / "model.py").write_text("def fit(ctx):\n    pass\n")
    path = write_config(
        tmp_path,
        f"""
        name: missing
        entrypoint: model:train
        storage: {tmp_path / "storage"}
        hyperparameters: {{x: 1}}
        searcher: {{name: single, metric: loss, max_time: 1}}
        """,
    )
    summary = run(conn, path)
    assert summary["status"] == "ERRORED"
    assert "model" in summary["error"] and "train" in summary["error"]
    assert summary["elapsed"] < 30


def test_trial_that_can_never_fit_is_rejected_at_submit(conn, tmp_path):
    from resolute.errors import SchedulerError

    path = write_config(
        tmp_path,
        f"""
        name: too-big
        entrypoint: model:train
        storage: {tmp_path / "storage"}
        hyperparameters: {{x: 1}}
        searcher: {{name: single, metric: loss, max_time: 1}}
        resources: {{slots_per_trial: 64}}
        """,
    )
    (tmp_path / "model.py").write_text("def train(ctx):\n    pass\n")
    with pytest.raises(SchedulerError, match="can never give that"):
        client.submit(conn, load_config(path))
    assert not (tmp_path / "storage").exists()  # nothing written


def test_a_ranks_system_statistics_reach_mlflow_and_not_the_searcher(conn, tmp_path):
    # The real scheduler receives a rank's GPU statistics the way a GPU worker sends them
    # (Report(kind="system") to on_reports); no GPU here, so the report is made by hand.
    import time

    from resolute.elastic.spec import Report

    (tmp_path / "slow.py").write_text(
        textwrap.dedent(
            """
            import time

            def train(ctx):
                for step in range(1, 31):
                    time.sleep(0.1)
                    ctx.report(step, {"loss": 1.0 / step})
                    if ctx.should_stop():
                        return
            """
        )
    )
    path = write_config(
        tmp_path,
        f"""
        name: system-stats
        entrypoint: slow:train
        storage: {tmp_path / "storage"}
        hyperparameters: {{x: 1}}
        searcher: {{name: single, metric: loss, max_time: 30}}
        """,
    )
    config = load_config(path)
    exp_id = client.submit(conn, config)
    journal = Journal(conn.journal_url)
    deadline = time.monotonic() + 120
    while not any(t.status == "RUNNING" for t in journal.list_trials(exp_id)):
        assert time.monotonic() < deadline, "the trial never started"
        time.sleep(0.2)
    (trial,) = journal.list_trials(exp_id)
    stats = {"system/rank0/gpu0/utilization_pct": 87.0, "system/rank0/gpu0/memory_used_mb": 512.0}
    ray.get(conn.scheduler.on_reports.remote(trial.id, [Report("system", 2, 2.0, stats)]))
    summary = client.follow(conn, exp_id, poll_s=0.5)
    assert summary["status"] == "COMPLETED", summary
    (trial,) = journal.list_trials(exp_id)
    assert trial.last_step == 30, "the statistics did not stop or confuse the trial"
    mc = mlflow.MlflowClient(tracking_uri=default_tracking_uri(config.storage))
    run_id = journal.get_trial(trial.id).mlflow_run_id
    history = mc.get_metric_history(run_id, "system/rank0/gpu0/utilization_pct")
    assert [(m.step, m.value) for m in history] == [(2, 87.0)]
    assert [m.value for m in mc.get_metric_history(run_id, "loss")][-1] == pytest.approx(1 / 30)
