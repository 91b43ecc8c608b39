"""MLflow and TensorBoard for one experiment, written off the scheduler's hot path.

One MLflow parent run per experiment, one nested run per trial (tag ``mlflow.parentRunId``,
name ``trial-<id>``). ``MlflowClient`` is used, never the fluent API: the scheduler tracks
several experiments in one process.

Threading. ``start_experiment``, ``start_trial`` and ``attach_experiment`` talk to MLflow
directly, since they return a run id (tens of milliseconds; the first call on a new SQLite
store runs MLflow's migrations, seconds). A scheduler cannot wait that long between a
searcher's decision and a trial's start, so it uses ``Tracker(connect_now=False)`` (the
store is opened on the background thread) and ``start_experiment_later`` /
``start_trial_later``, which create the runs on that thread, in order, and hand the run id
to a callback. Everything else only enqueues: one background thread writes
metrics with ``log_batch`` (at most 1000 per call) every ``flush_interval_s`` or as soon as
1000 are waiting, plus tags, params, artifacts, run ends and TensorBoard scalars, in the
order they were asked for (``tracking_batch``). Every method is safe to call from any thread.

Failures never propagate: a tracking error is logged (``logging``), retried a few times
when it may pass, then dropped. Metric values are converted to float; values that are not
numbers are skipped and NaN/inf are passed on (MLflow stores them), each with one warning
per trial and metric.
"""

from __future__ import annotations

import gc
import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from resolute.runtime.lifecycle import ExperimentStatus, TrialStatus
from resolute.runtime.tracking_batch import (
    BatchWriter,
    _now_ms,
    _Op,
    _tags,
    flatten_params,
    mlflow_key,
)

if TYPE_CHECKING:  # mlflow itself is imported on first use: it takes seconds
    from mlflow import MlflowClient

__all__ = [
    "EXPERIMENT_RUN_STATUS",
    "TRIAL_RUN_STATUS",
    "Tracker",
    "flatten_params",
    "mlflow_key",
]

log = logging.getLogger("resolute.tracking")

TRIAL_RUN_STATUS = {
    TrialStatus.COMPLETED: "FINISHED",
    TrialStatus.STOPPED: "FINISHED",  # early stopping is a normal end; resolute.status tells
    TrialStatus.KILLED: "KILLED",
    TrialStatus.ERRORED: "FAILED",
}
EXPERIMENT_RUN_STATUS = {
    ExperimentStatus.COMPLETED: "FINISHED",
    ExperimentStatus.STOPPED: "KILLED",
    ExperimentStatus.ERRORED: "FAILED",
}


class Tracker:
    """MLflow + TensorBoard writer for one experiment; see the module docstring.

    ``tensorboard_root(trial_id)`` gives a trial's event-file directory (None: no
    TensorBoard). ``artifact_location`` defaults, for a SQLite store, to ``mlartifacts``
    next to the database (MLflow would otherwise use the process's working directory).
    """

    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment_name: str,
        tensorboard_root: Callable[[int], Path] | None = None,
        artifact_location: str | None = None,
        flush_interval_s: float = 0.5,
        connect_now: bool = True,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self._artifact_location = artifact_location
        if artifact_location is None and tracking_uri.startswith("sqlite:///"):
            db = Path(tracking_uri[len("sqlite:///") :])
            safe = re.sub(r"[^\w.\-]", "_", experiment_name)
            self._artifact_location = str(db.parent / "mlartifacts" / safe)
        self._client: MlflowClient | None = None
        self._connected = False
        self._connect_lock = threading.Lock()
        self.mlflow_experiment_id: str | None = None
        self.experiment_run_id: str | None = None
        self._trial_runs: dict[int, str] = {}
        self._runs_lock = threading.Lock()
        self._batch = BatchWriter(
            client=None,
            name=experiment_name,
            tensorboard_root=tensorboard_root,
            flush_interval_s=flush_interval_s,
            resolve_run=self._run_of,
        )
        if connect_now:
            self._ensure_client()
        else:
            self._batch.enqueue(_Op("call", data=self._ensure_client))

    def _ensure_client(self) -> MlflowClient | None:
        """Open the MLflow store once (a new SQLite store is created/migrated here)."""
        with self._connect_lock:
            if not self._connected:
                self._connected = True
                try:
                    from mlflow import MlflowClient

                    self._client = MlflowClient(self.tracking_uri)
                    # mlflow and SQLAlchemy just added a large heap that lives as long as
                    # the process: kept out of later full collections, which otherwise
                    # stall the scheduler's event loop for 0.2-0.3 s each.
                    gc.freeze()
                except Exception:
                    log.exception(
                        "MLflow: cannot use tracking uri %s, so experiment %s is not tracked "
                        "in MLflow (TensorBoard still is); fix tracking.mlflow_uri in the "
                        "experiment config",
                        self.tracking_uri,
                        self.experiment_name,
                    )
                self._batch.set_client(self._client)
            return self._client

    def _run_of(self, trial_id: int | None) -> str | None:
        return self.experiment_run_id if trial_id is None else self.trial_run_id(trial_id)

    # --- runs (synchronous: they return ids) -------------------------------------------

    def _experiment_id(self, client: MlflowClient) -> str:
        from mlflow.exceptions import MlflowException

        if self.mlflow_experiment_id is None:
            found = client.get_experiment_by_name(self.experiment_name)
            if found is not None:
                self.mlflow_experiment_id = found.experiment_id
            else:
                try:
                    self.mlflow_experiment_id = client.create_experiment(
                        self.experiment_name, artifact_location=self._artifact_location
                    )
                except MlflowException:  # another process created it meanwhile
                    again = client.get_experiment_by_name(self.experiment_name)
                    if again is None:
                        raise
                    self.mlflow_experiment_id = again.experiment_id
        return self.mlflow_experiment_id

    def start_experiment(
        self,
        config: Mapping[str, Any],
        searcher_name: str,
        tags: Mapping[str, Any] | None = None,
        *,
        run_name: str | None = None,
        config_yaml: str | None = None,
    ) -> str | None:
        """Create the parent run: flattened config as params, the config as
        ``config.yaml`` artifact. Returns its run id, or None if MLflow failed (logged)."""
        return self._start_experiment(
            config, searcher_name, tags, run_name=run_name, config_yaml=config_yaml, inline=False
        )

    def _start_experiment(
        self,
        config: Mapping[str, Any],
        searcher_name: str,
        tags: Mapping[str, Any] | None,
        *,
        run_name: str | None,
        config_yaml: str | None,
        inline: bool,
    ) -> str | None:
        all_tags = {"resolute.role": "experiment", "resolute.searcher": searcher_name}
        all_tags |= dict(tags or {})
        client = self._ensure_client()
        if client is None:
            return None
        try:
            run = client.create_run(
                self._experiment_id(client),
                run_name=run_name or self.experiment_name,
                tags={t.key: t.value for t in _tags(all_tags)},
            )
        except Exception:
            log.exception("MLflow: could not start the run of experiment %s", self.experiment_name)
            return None
        self.experiment_run_id = run.info.run_id
        text = config_yaml if config_yaml is not None else yaml.safe_dump(dict(config))
        self._queue_or_write(
            [
                _Op("params", run_id=self.experiment_run_id, data=flatten_params(config)),
                _Op("text", run_id=self.experiment_run_id, data=("config.yaml", text)),
            ],
            inline=inline,
        )
        return self.experiment_run_id

    def start_experiment_later(
        self,
        config: Mapping[str, Any],
        searcher_name: str,
        tags: Mapping[str, Any] | None = None,
        *,
        on_started: Callable[[str], None] | None = None,
        config_yaml: str | None = None,
    ) -> None:
        """``start_experiment`` on the background thread; ``on_started(run_id)`` is called
        there once the run exists (not at all if MLflow failed, which is logged)."""

        def start() -> None:
            run_id = self._start_experiment(
                config, searcher_name, tags, run_name=None, config_yaml=config_yaml, inline=True
            )
            if run_id is not None and on_started is not None:
                on_started(run_id)

        self._batch.enqueue(_Op("call", data=start))

    def start_trial(
        self,
        trial_id: int,
        hparams: Mapping[str, Any],
        tags: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Create the trial's nested run (hparams as dotted params). Its run id, or None."""
        return self._start_trial(trial_id, hparams, tags, inline=False)

    def _start_trial(
        self,
        trial_id: int,
        hparams: Mapping[str, Any],
        tags: Mapping[str, Any] | None,
        *,
        inline: bool,
    ) -> str | None:
        all_tags: dict[str, Any] = {"resolute.trial_id": str(trial_id), "resolute.role": "trial"}
        if self.experiment_run_id is not None:
            all_tags["mlflow.parentRunId"] = self.experiment_run_id
        all_tags |= dict(tags or {})
        client = self._ensure_client()
        if client is None:
            return None
        try:
            run = client.create_run(
                self._experiment_id(client),
                run_name=f"trial-{trial_id}",
                tags={t.key: t.value for t in _tags(all_tags)},
            )
        except Exception:
            log.exception("MLflow: could not start the run of trial %s", trial_id)
            return None
        run_id: str = run.info.run_id
        with self._runs_lock:
            self._trial_runs[trial_id] = run_id
        self._queue_or_write(
            [_Op("params", run_id=run_id, data=flatten_params(hparams))], inline=inline
        )
        return run_id

    def start_trial_later(
        self,
        trial_id: int,
        hparams: Mapping[str, Any],
        tags: Mapping[str, Any] | None = None,
        *,
        on_started: Callable[[str], None] | None = None,
    ) -> None:
        """``start_trial`` on the background thread, after everything queued before (the
        parent run first); the trial's metrics, tags and end queued meanwhile go to the run
        once it exists. ``on_started(run_id)`` is called on that thread."""

        def start() -> None:
            run_id = self._start_trial(trial_id, hparams, tags, inline=True)
            if run_id is not None and on_started is not None:
                on_started(run_id)

        self._batch.enqueue(_Op("call", data=start))

    def _queue_or_write(self, ops: list[_Op], *, inline: bool = False) -> None:
        if inline:
            self._batch.write_inline(ops)
        else:
            for op in ops:
                self._batch.enqueue(op)

    def attach_experiment(self, run_id: str) -> bool:
        """Continue an existing parent run (a restarted scheduler). False if unusable."""
        client = self._ensure_client()
        if client is None:
            return False
        try:
            run = client.get_run(run_id)
        except Exception:
            log.exception("MLflow: cannot attach to run %s", run_id)
            return False
        self.mlflow_experiment_id = run.info.experiment_id
        self.experiment_run_id = run_id
        return True

    def attach_trial(self, trial_id: int, run_id: str) -> None:
        """Continue the trial's existing nested run (no request is made)."""
        with self._runs_lock:
            self._trial_runs[trial_id] = run_id

    def trial_run_id(self, trial_id: int) -> str | None:
        with self._runs_lock:
            return self._trial_runs.get(trial_id)

    # --- queued writes -----------------------------------------------------------------

    def log_metrics(self, trial_id: int, step: int, metrics: Mapping[str, Any]) -> None:
        """Queue one report's metrics for MLflow and TensorBoard."""
        op = _Op("metrics", trial_id=trial_id, step=int(step), when_ms=_now_ms())
        op.data = dict(metrics)
        op.run_id = self.trial_run_id(trial_id)
        self._batch.enqueue(op, metrics=len(op.data))

    def set_trial_tags(self, trial_id: int, tags: Mapping[str, Any]) -> None:
        """Tag the trial's run (searcher decisions: ``{"decision.step_64": "continue"}``)."""
        op = _Op("tags", run_id=self.trial_run_id(trial_id), trial_id=trial_id, data=dict(tags))
        self._batch.enqueue(op)

    def log_checkpoint(self, trial_id: int, uri: str, step: int) -> None:
        """Tag the trial's run with its latest checkpoint."""
        self.set_trial_tags(trial_id, {"checkpoint": uri, "checkpoint.step": str(step)})

    def end_trial(self, trial_id: int, status: TrialStatus) -> None:
        """Close the trial's run (FINISHED / KILLED / FAILED, tag ``resolute.status``) and its
        TensorBoard writer. ``status`` must be final."""
        if status not in TRIAL_RUN_STATUS:
            raise ValueError(f"end_trial needs a final status, not {status.value}")
        op = _Op("end", run_id=self.trial_run_id(trial_id), trial_id=trial_id)
        op.data = (TRIAL_RUN_STATUS[status], {"resolute.status": status.value})
        op.when_ms = _now_ms()
        self._batch.enqueue(op)

    def end_experiment(
        self,
        status: ExperimentStatus,
        best_trial_id: int | None = None,
        best_metric: float | None = None,
        best_hparams: Mapping[str, Any] | None = None,
    ) -> None:
        """Close the parent run, tagging the outcome and the best trial. ``status`` must be
        final."""
        if status not in EXPERIMENT_RUN_STATUS:
            raise ValueError(f"end_experiment needs a final status, not {status.value}")
        tags: dict[str, Any] = {"resolute.status": status.value}
        if best_trial_id is not None:
            tags["best.trial_id"] = str(best_trial_id)
        if best_metric is not None:
            tags["best.metric"] = repr(float(best_metric))
        if best_hparams is not None:
            tags["best.hparams"] = json.dumps(dict(best_hparams), sort_keys=True, default=str)
        op = _Op("end", run_id=self.experiment_run_id, when_ms=_now_ms())
        op.data = (EXPERIMENT_RUN_STATUS[status], tags)
        self._batch.enqueue(op)

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything queued so far is written (TensorBoard files flushed too).
        False if ``timeout`` passed first."""
        return self._batch.flush(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Write what is queued, then stop the background thread. Idempotent."""
        self._batch.close(timeout)
