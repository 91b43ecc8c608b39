"""MLflow and TensorBoard for one experiment, written off the scheduler's hot path.

One MLflow parent run per experiment, one nested run per trial (tag ``mlflow.parentRunId``,
name ``trial-<id>``). ``MlflowClient`` is used, never the fluent API: the scheduler tracks
several experiments in one process.

Threading. ``start_experiment``, ``start_trial`` and ``attach_experiment`` talk to MLflow
directly, since they return a run id (tens of milliseconds; the first call on a new SQLite
store runs MLflow's migrations, seconds: call them through ``asyncio.to_thread`` from an
event loop if that matters). Everything else only enqueues: one background thread writes
metrics with ``log_batch`` (at most 1000 per call) every ``flush_interval_s`` or as soon as
1000 are waiting, plus tags, params, artifacts, run ends and TensorBoard scalars, in the
order they were asked for. Every method is safe to call from any thread.

Failures never propagate: a tracking error is logged (``logging``), retried a few times
when it may pass, then dropped. Metric values are converted to float; values that are not
numbers are skipped and NaN/inf are passed on (MLflow stores them), each with one warning
per trial and metric.
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import (
    MAX_ENTITY_KEY_LENGTH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from resolute.runtime.lifecycle import ExperimentStatus, TrialStatus

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
_PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS"}
_RETRY_DELAYS_S = (0.2, 1.0, 3.0)
_DOWN_S = 30.0


def mlflow_key(key: str) -> str:
    """``key`` made acceptable to MLflow as a metric, param or tag name."""
    key = re.sub(r"[^/\w.\- :]", "_", str(key)) or "_"
    if posixpath.normpath(key) != key or key.startswith("/"):
        key = key.replace("/", "_")  # MLflow refuses names that resolve to other paths
    if key in (".", ".."):
        key = "_" + key
    return key[:MAX_ENTITY_KEY_LENGTH]


def _truncate(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings as dotted keys, values as MLflow param strings (lists as JSON)."""
    out: dict[str, str] = {}
    for name, value in config.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=f"{key}."))
        else:
            text = (
                json.dumps(value, default=str) if isinstance(value, (list, tuple)) else str(value)
            )
            out[mlflow_key(key)] = _truncate(text, MAX_PARAM_VAL_LENGTH)
    return out


def _tags(tags: Mapping[str, Any]) -> list[RunTag]:
    return [RunTag(mlflow_key(k), _truncate(str(v), MAX_TAG_VAL_LENGTH)) for k, v in tags.items()]


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Op:
    """One queued write. ``kind``: metrics | params | tags | text | end | flush."""

    kind: str
    run_id: str | None = None
    trial_id: int | None = None
    step: int = 0
    when_ms: int = 0
    data: Any = None
    seq: int = field(default=0)


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
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self._tb_root = tensorboard_root
        self._artifact_location = artifact_location
        if artifact_location is None and tracking_uri.startswith("sqlite:///"):
            db = Path(tracking_uri[len("sqlite:///") :])
            safe = re.sub(r"[^\w.\-]", "_", experiment_name)
            self._artifact_location = str(db.parent / "mlartifacts" / safe)
        self._interval = flush_interval_s
        self._client: MlflowClient | None = None
        try:
            self._client = MlflowClient(tracking_uri)  # a SQLite store is created/migrated here
        except Exception:
            log.exception(
                "MLflow: cannot use tracking uri %s, so experiment %s is not tracked in MLflow "
                "(TensorBoard still is); fix tracking.mlflow_uri in the experiment config",
                tracking_uri,
                experiment_name,
            )
        self.mlflow_experiment_id: str | None = None
        self.experiment_run_id: str | None = None
        self._trial_runs: dict[int, str] = {}
        self._warned: set[tuple[int, str, str]] = set()
        self._down_until = 0.0
        self._writers: dict[int, Any] = {}  # only the background thread touches these
        self._cond = threading.Condition()
        self._ops: list[_Op] = []
        self._pending_metrics = 0
        self._seq = 0
        self._done_seq = 0
        self._urgent = False
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name=f"resolute-tracking-{experiment_name}", daemon=True
        )
        self._thread.start()

    # --- runs (synchronous: they return ids) -------------------------------------------

    def _experiment_id(self, client: MlflowClient) -> str:
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
        all_tags = {"resolute.role": "experiment", "resolute.searcher": searcher_name}
        all_tags |= dict(tags or {})
        if self._client is None:
            return None
        try:
            run = self._client.create_run(
                self._experiment_id(self._client),
                run_name=run_name or self.experiment_name,
                tags={t.key: t.value for t in _tags(all_tags)},
            )
        except Exception:
            log.exception("MLflow: could not start the run of experiment %s", self.experiment_name)
            return None
        self.experiment_run_id = run.info.run_id
        self._enqueue(_Op("params", run_id=self.experiment_run_id, data=flatten_params(config)))
        text = config_yaml if config_yaml is not None else yaml.safe_dump(dict(config))
        self._enqueue(_Op("text", run_id=self.experiment_run_id, data=("config.yaml", text)))
        return self.experiment_run_id

    def start_trial(
        self, trial_id: int, hparams: Mapping[str, Any], tags: Mapping[str, Any] | None = None
    ) -> str | None:
        """Create the trial's nested run (hparams as dotted params). Its run id, or None."""
        all_tags: dict[str, Any] = {"resolute.trial_id": str(trial_id), "resolute.role": "trial"}
        if self.experiment_run_id is not None:
            all_tags["mlflow.parentRunId"] = self.experiment_run_id
        all_tags |= dict(tags or {})
        if self._client is None:
            return None
        try:
            run = self._client.create_run(
                self._experiment_id(self._client),
                run_name=f"trial-{trial_id}",
                tags={t.key: t.value for t in _tags(all_tags)},
            )
        except Exception:
            log.exception("MLflow: could not start the run of trial %s", trial_id)
            return None
        run_id: str = run.info.run_id
        with self._cond:
            self._trial_runs[trial_id] = run_id
        self._enqueue(_Op("params", run_id=run_id, data=flatten_params(hparams)))
        return run_id

    def attach_experiment(self, run_id: str) -> bool:
        """Continue an existing parent run (a restarted scheduler). False if unusable."""
        if self._client is None:
            return False
        try:
            run = self._client.get_run(run_id)
        except Exception:
            log.exception("MLflow: cannot attach to run %s", run_id)
            return False
        self.mlflow_experiment_id = run.info.experiment_id
        self.experiment_run_id = run_id
        return True

    def attach_trial(self, trial_id: int, run_id: str) -> None:
        """Continue the trial's existing nested run (no request is made)."""
        with self._cond:
            self._trial_runs[trial_id] = run_id

    def trial_run_id(self, trial_id: int) -> str | None:
        with self._cond:
            return self._trial_runs.get(trial_id)

    # --- queued writes -----------------------------------------------------------------

    def log_metrics(self, trial_id: int, step: int, metrics: Mapping[str, Any]) -> None:
        """Queue one report's metrics for MLflow and TensorBoard."""
        op = _Op("metrics", trial_id=trial_id, step=int(step), when_ms=_now_ms())
        op.data = dict(metrics)
        op.run_id = self.trial_run_id(trial_id)
        self._enqueue(op, metrics=len(op.data))

    def set_trial_tags(self, trial_id: int, tags: Mapping[str, Any]) -> None:
        """Tag the trial's run (searcher decisions: ``{"decision.step_64": "continue"}``)."""
        self._enqueue(_Op("tags", run_id=self.trial_run_id(trial_id), data=dict(tags)))

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
        self._enqueue(op)

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
        self._enqueue(op)

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything queued so far is written (TensorBoard files flushed too).
        False if ``timeout`` passed first."""
        with self._cond:
            if not self._thread.is_alive():
                return not self._ops
        target = self._enqueue(_Op("flush"), urgent=True)
        with self._cond:
            return self._cond.wait_for(lambda: self._done_seq >= target, timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Write what is queued, then stop the background thread. Idempotent."""
        if self._closed:
            return
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _enqueue(self, op: _Op, *, metrics: int = 0, urgent: bool = False) -> int:
        with self._cond:
            if self._closed:
                log.warning("tracking of %s is closed; dropped a %s", self.experiment_name, op.kind)
                return self._seq
            self._seq += 1
            op.seq = self._seq
            self._ops.append(op)
            self._pending_metrics += metrics
            if urgent or self._pending_metrics >= MAX_METRICS_PER_BATCH:
                self._urgent = True
                self._cond.notify_all()
            elif len(self._ops) == 1:
                self._cond.notify_all()
            return op.seq

    # --- the background thread ---------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._closed or self._urgent or self._ops):
                    self._cond.wait()
                # Let a batch gather from the first write on, unless one is full already.
                deadline = time.monotonic() + self._interval
                while not (self._closed or self._urgent):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch, self._ops = self._ops, []
                self._pending_metrics, self._urgent = 0, False
                if self._closed and not batch:
                    break
            try:
                self._write(batch)
            except Exception:  # the thread must outlive any bug in one batch
                log.exception("tracking: a batch of %d writes was lost", len(batch))
            with self._cond:
                self._done_seq = batch[-1].seq
                self._cond.notify_all()
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def _write(self, batch: Iterable[_Op]) -> None:
        metrics: dict[str, list[Metric]] = {}
        for op in batch:
            if op.kind == "metrics":
                values = self._clean(op)
                self._tensorboard(op, values)
                if op.run_id is not None:
                    metrics.setdefault(op.run_id, []).extend(
                        Metric(k, v, op.when_ms, op.step) for k, v in values.items()
                    )
                continue
            self._write_metrics(metrics)  # keep order: a run's metrics land before its end
            metrics = {}
            if op.kind == "flush":
                for writer in self._writers.values():
                    writer.flush()
            elif op.kind == "end" and op.trial_id is not None and op.trial_id in self._writers:
                self._writers.pop(op.trial_id).close()
            if op.run_id is None:
                continue
            if op.kind == "params":
                params = [Param(k, v) for k, v in op.data.items()]
                self._log_in_chunks("log params", op.run_id, "params", params)
            elif op.kind == "tags":
                self._log_in_chunks("set tags", op.run_id, "tags", _tags(op.data))
            elif op.kind == "text":
                name, text = op.data
                self._call("log artifact", "log_text", op.run_id, text, name)
            elif op.kind == "end":
                run_status, tags = op.data
                self._call(
                    "set tags",
                    "log_batch",
                    op.run_id,
                    tags=_tags(tags),
                    synchronous=True,
                )
                self._call("end run", "set_terminated", op.run_id, run_status, op.when_ms)
        self._write_metrics(metrics)

    def _log_in_chunks(self, what: str, run_id: str, kind: str, items: list[Any]) -> None:
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            chunk = items[i : i + MAX_PARAMS_TAGS_PER_BATCH]
            self._call(what, "log_batch", run_id, synchronous=True, **{kind: chunk})

    def _write_metrics(self, metrics: Mapping[str, list[Metric]]) -> None:
        for run_id, items in metrics.items():
            for i in range(0, len(items), MAX_METRICS_PER_BATCH):
                chunk = items[i : i + MAX_METRICS_PER_BATCH]
                self._call("log metrics", "log_batch", run_id, metrics=chunk, synchronous=True)

    def _call(self, what: str, method: str, run_id: str, *args: Any, **kw: Any) -> None:
        if self._client is None:
            return
        fn = getattr(self._client, method)
        # While MLflow looks down, try once instead of retrying, so flush() stays bounded.
        delays = _RETRY_DELAYS_S if time.monotonic() >= self._down_until else ()
        for attempt, delay in enumerate((*delays, None)):
            try:
                fn(run_id, *args, **kw)
                self._down_until = 0.0
                return
            except Exception as e:
                if delay is None or getattr(e, "error_code", None) in _PERMANENT:
                    if delay is None and delays:
                        self._down_until = time.monotonic() + _DOWN_S
                    log.error(
                        "MLflow: %s for run %s failed (%d attempt(s)), dropped: %s",
                        what,
                        run_id,
                        attempt + 1,
                        e,
                    )
                    return
                time.sleep(delay)

    def _clean(self, op: _Op) -> dict[str, float]:
        out: dict[str, float] = {}
        trial = op.trial_id if op.trial_id is not None else -1
        for key, value in op.data.items():
            number: float | None = None
            if not isinstance(value, (str, bytes)):
                try:
                    number = float(value)  # ints, numpy scalars, one-element tensors
                except Exception:
                    number = None
            if number is None:
                self._warn_once(trial, key, "skip", f"value {value!r} is not a number; skipped")
                continue
            if not math.isfinite(number):
                self._warn_once(trial, key, "nonfinite", f"is {number} at step {op.step}")
            out[mlflow_key(key)] = number
        return out

    def _warn_once(self, trial_id: int, key: str, why: str, message: str) -> None:
        if (trial_id, key, why) not in self._warned:
            self._warned.add((trial_id, key, why))
            log.warning("trial %s metric %r: %s (warned once)", trial_id, key, message)

    def _tensorboard(self, op: _Op, values: Mapping[str, float]) -> None:
        if self._tb_root is None or op.trial_id is None or not values:
            return
        writer = self._writers.get(op.trial_id)
        if writer is None:
            try:
                from tensorboardX import SummaryWriter

                logdir = self._tb_root(op.trial_id)
                writer = SummaryWriter(logdir=str(logdir), flush_secs=10)
            except Exception:
                self._warn_once(op.trial_id, "*", "tb", "cannot open a TensorBoard writer")
                log.debug("TensorBoard writer failure", exc_info=True)
                return
            self._writers[op.trial_id] = writer
        for key, value in values.items():
            writer.add_scalar(key, value, op.step, walltime=op.when_ms / 1000)
