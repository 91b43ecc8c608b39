"""Tracker against a real MLflow SQLite store and real TensorBoard event files.

One store per module: MLflow's first open of a SQLite store runs its migrations (seconds).
Each test uses its own MLflow experiment name, and reads back with ``MlflowClient``.
"""

from __future__ import annotations

import logging
import math
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.integration

mlflow = pytest.importorskip("mlflow")

from mlflow import MlflowClient  # noqa: E402

from resolute.runtime.lifecycle import ExperimentStatus, TrialStatus  # noqa: E402
from resolute.runtime.tracking import Tracker, flatten_params, mlflow_key  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # pay the migrations once, here
    return uri, root


@pytest.fixture(scope="module")
def client(store: tuple[str, Path]) -> MlflowClient:
    return MlflowClient(store[0])


@pytest.fixture
def make_tracker(store: tuple[str, Path], request: pytest.FixtureRequest) -> Iterator:
    made: list[Tracker] = []

    def make(tb_root: Path | None = None, name: str | None = None) -> Tracker:
        tracker = Tracker(
            tracking_uri=store[0],
            experiment_name=name or request.node.name,
            tensorboard_root=(lambda t: tb_root / f"trial-{t}") if tb_root else None,
        )
        made.append(tracker)
        return tracker

    yield make
    for tracker in made:
        tracker.close()


def _read_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Parse TFRecord event files (length, crc, payload, crc) into {tag: [(step, value)]}."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_parent_and_nested_runs(make_tracker, client: MlflowClient, store) -> None:
    tracker = make_tracker()
    config = {
        "name": "mnist",
        "searcher": {"name": "asha", "max_time": 64, "metric": "val/loss"},
        "hyperparameters": {"lr": {"type": "log", "min": 1e-4, "max": 0.1}},
        "milestones": [1, 2, 4],
        "notes": "x" * 7000,
    }
    parent = tracker.start_experiment(config, "asha", {"resolute.experiment_id": "12"})
    assert parent is not None and tracker.experiment_run_id == parent
    trial_run = tracker.start_trial(
        3, {"lr": 0.01, "opt": {"name": "adam", "betas": [0.9, 0.99]}}, {"resolute.x": "y"}
    )
    assert trial_run is not None and tracker.trial_run_id(3) == trial_run
    assert tracker.flush(timeout=30)

    p = client.get_run(parent)
    assert p.data.params["searcher.name"] == "asha"
    assert p.data.params["searcher.max_time"] == "64"
    assert p.data.params["hyperparameters.lr.min"] == "0.0001"
    assert p.data.params["milestones"] == "[1, 2, 4]"
    assert len(p.data.params["notes"]) == 6000 and p.data.params["notes"].endswith("...")
    assert p.data.tags["resolute.searcher"] == "asha"
    assert p.data.tags["resolute.experiment_id"] == "12"
    assert p.info.status == "RUNNING"
    # The config travels as an artifact, next to the store (not in the working directory).
    assert p.info.artifact_uri.startswith(str(store[1] / "mlartifacts"))
    local = mlflow.artifacts.download_artifacts(
        run_id=parent, artifact_path="config.yaml", tracking_uri=store[0]
    )
    assert yaml.safe_load(Path(local).read_text()) == config

    t = client.get_run(trial_run)
    assert t.info.run_name == "trial-3"
    assert t.data.tags["mlflow.parentRunId"] == parent
    assert t.data.tags["resolute.trial_id"] == "3" and t.data.tags["resolute.x"] == "y"
    assert t.data.params == {"lr": "0.01", "opt.name": "adam", "opt.betas": "[0.9, 0.99]"}
    children = client.search_runs(
        [p.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    assert [r.info.run_id for r in children] == [trial_run]


def test_2500_metrics_arrive_in_full_with_steps(
    make_tracker, client: MlflowClient, tmp_path: Path
) -> None:
    tracker = make_tracker(tb_root=tmp_path / "tb")
    tracker.start_experiment({"a": 1}, "random")
    run_a = tracker.start_trial(1, {"lr": 0.1})
    run_b = tracker.start_trial(2, {"lr": 0.2})
    start = time.monotonic()
    for step in range(1250):
        tracker.log_metrics(1, step, {"loss": 1.0 / (step + 1), "acc": step / 1250})
    for step in range(0, 100, 10):
        tracker.log_metrics(2, step, {"loss": float(step)})
    queued_in = time.monotonic() - start
    assert queued_in < 1.0, f"log_metrics blocked the caller: {queued_in:.2f}s for 1260 calls"
    assert tracker.flush(timeout=60)

    loss = sorted(client.get_metric_history(run_a, "loss"), key=lambda m: m.step)
    acc = client.get_metric_history(run_a, "acc")
    assert len(loss) + len(acc) == 2500
    assert [m.step for m in loss] == list(range(1250))
    assert [m.value for m in loss] == [1.0 / (s + 1) for s in range(1250)]
    assert sorted(m.step for m in acc) == list(range(1250))
    other = sorted((m.step, m.value) for m in client.get_metric_history(run_b, "loss"))
    assert other == [(s, float(s)) for s in range(0, 100, 10)]

    scalars = _read_scalars(tmp_path / "tb" / "trial-1")
    assert [s for s, _ in scalars["loss"]] == list(range(1250))
    assert scalars["acc"][-1] == (1249, pytest.approx(1249 / 1250))
    assert [s for s, _ in _read_scalars(tmp_path / "tb" / "trial-2")["loss"]] == list(
        range(0, 100, 10)
    )


def test_statuses_and_outcome_tags(make_tracker, client: MlflowClient, tmp_path: Path) -> None:
    tracker = make_tracker(tb_root=tmp_path / "tb")
    parent = tracker.start_experiment({"a": 1}, "grid")
    expected = {
        TrialStatus.COMPLETED: "FINISHED",
        TrialStatus.STOPPED: "FINISHED",
        TrialStatus.KILLED: "KILLED",
        TrialStatus.ERRORED: "FAILED",
    }
    runs = {}
    for i, status in enumerate(expected):
        runs[status] = tracker.start_trial(i, {"i": i})
        tracker.log_metrics(i, 0, {"loss": 1.0})
        tracker.end_trial(i, status)
    with pytest.raises(ValueError, match="final"):
        tracker.end_trial(0, TrialStatus.PAUSED)
    with pytest.raises(ValueError, match="final"):
        tracker.end_experiment(ExperimentStatus.PAUSED)
    tracker.end_experiment(ExperimentStatus.COMPLETED, 2, 0.125, {"lr": 0.1, "opt": "adam"})
    assert tracker.flush(timeout=30)

    for status, run_id in runs.items():
        run = client.get_run(run_id)
        assert run.info.status == expected[status], status
        assert run.data.tags["resolute.status"] == status.value
        assert run.info.end_time is not None
        assert len(client.get_metric_history(run_id, "loss")) == 1  # metrics land before the end
    p = client.get_run(parent)
    assert p.info.status == "FINISHED"
    assert p.data.tags["resolute.status"] == "COMPLETED"
    assert p.data.tags["best.trial_id"] == "2"
    assert float(p.data.tags["best.metric"]) == 0.125
    assert p.data.tags["best.hparams"] == '{"lr": 0.1, "opt": "adam"}'

    killed = make_tracker(name=f"{tracker.experiment_name}-killed")
    run_id = killed.start_experiment({}, "random")
    killed.end_experiment(ExperimentStatus.STOPPED)
    killed.flush(timeout=30)
    assert client.get_run(run_id).info.status == "KILLED"


def test_tags_and_checkpoints(make_tracker, client: MlflowClient) -> None:
    tracker = make_tracker()
    tracker.start_experiment({}, "asha")
    run_id = tracker.start_trial(5, {})
    tracker.set_trial_tags(5, {"decision.step_64": "continue"})
    tracker.log_checkpoint(5, "/ck/step-1", 1)
    tracker.log_checkpoint(5, "/ck/step-2", 2)
    assert tracker.flush(timeout=30)
    tags = client.get_run(run_id).data.tags
    assert tags["decision.step_64"] == "continue"
    assert (tags["checkpoint"], tags["checkpoint.step"]) == ("/ck/step-2", "2")


def test_values_are_converted_or_skipped_with_one_warning(
    make_tracker, client: MlflowClient, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = make_tracker()
    tracker.start_experiment({}, "random")
    run_id = tracker.start_trial(1, {})
    weird = {
        "f32": np.float32(1.5),
        "int": 3,
        "flag": True,
        "nan": math.nan,
        "text": "abc",
        "vector": [1.0, 2.0],
        "acc@1": 0.5,
    }
    with caplog.at_level(logging.WARNING, logger="resolute.tracking"):
        tracker.log_metrics(1, 0, weird)
        tracker.log_metrics(1, 1, weird)
        assert tracker.flush(timeout=30)
    metrics = client.get_run(run_id).data.metrics
    assert metrics["f32"] == 1.5 and metrics["int"] == 3.0 and metrics["flag"] == 1.0
    assert math.isnan(metrics["nan"])
    assert metrics["acc_1"] == 0.5
    assert "text" not in metrics and "vector" not in metrics
    assert len(client.get_metric_history(run_id, "f32")) == 2
    text_warnings = [r for r in caplog.records if "'text'" in r.getMessage()]
    nan_warnings = [r for r in caplog.records if "'nan'" in r.getMessage()]
    assert len(text_warnings) == 1 and len(nan_warnings) == 1


def test_a_failing_run_does_not_stop_the_others(
    make_tracker, client: MlflowClient, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = make_tracker()
    tracker.start_experiment({}, "random")
    doomed = tracker.start_trial(1, {})
    healthy = tracker.start_trial(2, {})
    client.delete_run(doomed)  # writes to it now fail in MLflow itself
    with caplog.at_level(logging.ERROR, logger="resolute.tracking"):
        tracker.log_metrics(1, 0, {"loss": 1.0})
        tracker.log_metrics(2, 0, {"loss": 2.0})
        tracker.end_trial(1, TrialStatus.COMPLETED)
        tracker.end_trial(2, TrialStatus.COMPLETED)
        assert tracker.flush(timeout=30)
    assert any("dropped" in r.getMessage() for r in caplog.records)
    assert [m.value for m in client.get_metric_history(healthy, "loss")] == [2.0]
    assert client.get_run(healthy).info.status == "FINISHED"


def test_an_unreachable_server_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        tracker = Tracker(tracking_uri=f"http://127.0.0.1:{port}", experiment_name="nowhere")
        try:
            assert tracker.start_experiment({"a": 1}, "random") is None
            assert tracker.start_trial(1, {}) is None
            tracker.log_metrics(1, 0, {"loss": 1.0})
            tracker.end_trial(1, TrialStatus.ERRORED)
            tracker.end_experiment(ExperimentStatus.ERRORED)
            assert tracker.flush(timeout=30)
        finally:
            tracker.close()
    tracker.log_metrics(1, 1, {"loss": 1.0})  # after close: dropped, not raised


def test_an_unusable_uri_still_writes_tensorboard(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="resolute.tracking"):
        tracker = Tracker(
            tracking_uri="nosuchscheme://x",
            experiment_name="typo",
            tensorboard_root=lambda t: tmp_path / f"trial-{t}",
        )
    try:
        assert any("tracking.mlflow_uri" in r.getMessage() for r in caplog.records)
        assert tracker.start_experiment({}, "random") is None
        assert tracker.start_trial(1, {}) is None
        assert not tracker.attach_experiment("abc")
        tracker.log_metrics(1, 3, {"loss": 0.5})
        tracker.end_trial(1, TrialStatus.COMPLETED)
        assert tracker.flush(timeout=30)
        assert _read_scalars(tmp_path / "trial-1") == {"loss": [(3, 0.5)]}
    finally:
        tracker.close()


def test_a_restarted_scheduler_attaches_to_its_runs(make_tracker, client: MlflowClient) -> None:
    first = make_tracker()
    parent = first.start_experiment({}, "pbt")
    run_id = first.start_trial(4, {"lr": 0.1})
    first.log_metrics(4, 10, {"loss": 1.0})
    first.close()
    first.close()  # idempotent

    second = make_tracker(name=first.experiment_name)
    assert second.attach_experiment(parent)
    second.attach_trial(4, run_id)
    second.log_metrics(4, 20, {"loss": 0.5})
    second.end_trial(4, TrialStatus.COMPLETED)
    second.end_experiment(ExperimentStatus.COMPLETED, 4, 0.5, {"lr": 0.1})
    assert second.flush(timeout=30)
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == [10, 20]
    assert client.get_run(parent).info.status == "FINISHED"
    assert not second.attach_experiment("0" * 32)


def test_keys_and_params_are_made_acceptable() -> None:
    assert mlflow_key("val/loss") == "val/loss"
    assert mlflow_key("acc@1 (top)") == "acc_1 _top_"
    assert mlflow_key("/abs") == "_abs" and mlflow_key("a//b") == "a__b"
    assert mlflow_key("..") == "_.." and mlflow_key("a/./b") == "a_._b"
    assert len(mlflow_key("k" * 400)) == 250
    from mlflow.utils.validation import _validate_metric_name

    for key in ("/abs", "a//b", "..", "a/./b", "acc@1 (top)", "x/"):
        _validate_metric_name(mlflow_key(key))  # raises if MLflow would refuse it
    flat = flatten_params({"a": {"b": {"c": 1}}, "l": (1, "x"), "n": None})
    assert flat == {"a.b.c": "1", "l": '[1, "x"]', "n": "None"}
