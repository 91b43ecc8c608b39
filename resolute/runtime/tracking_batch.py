"""The background writer of a ``Tracker``, and the conversions MLflow needs.

A ``Tracker`` turns each call into an ``_Op`` and hands it to ``BatchWriter.enqueue`` (any
thread). One thread writes the ops in the order they came: metrics gathered for
``flush_interval_s`` (or until 1000 are waiting) and sent with ``log_batch``, the rest
(params, tags, artifacts, run ends) one by one, each run's metrics before its end.
TensorBoard scalars are written by the same thread. A ``call`` op runs a function there, in
its place in the order: the Tracker connects to MLflow and creates runs that way, so the
scheduler never waits for MLflow. An op that names a trial but no run id gets the trial's
run id when it is written (its run may have been created after the op was queued). MLflow calls that fail are retried a
few times when the error may pass, then dropped and logged; nothing is raised.
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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

# MLflow's own limits (mlflow.utils.validation; a test checks they still agree). Not imported
# from there: importing any part of mlflow takes seconds, and the scheduler process imports
# this module before its first trial starts, so mlflow is imported on the writer thread.
MAX_ENTITY_KEY_LENGTH = 250
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VAL_LENGTH = 6000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_TAG_VAL_LENGTH = 8000

# A run id for an op queued before its run existed: the trial's (an int) or, for None, the
# experiment's parent run.
RunResolver = Callable[[int | None], str | None]

log = logging.getLogger("resolute.tracking")

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
    from mlflow.entities import RunTag

    return [RunTag(mlflow_key(k), _truncate(str(v), MAX_TAG_VAL_LENGTH)) for k, v in tags.items()]


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Op:
    """One queued write. ``kind``: metrics | params | tags | text | end | flush | call
    (``data`` is a function of no arguments, run on the writer thread)."""

    kind: str
    run_id: str | None = None
    trial_id: int | None = None
    step: int = 0
    when_ms: int = 0
    data: Any = None
    seq: int = field(default=0)


class BatchWriter:
    """Writes queued ``_Op``s on its own thread; see the module docstring. ``client`` None:
    MLflow is unusable, so only TensorBoard is written. ``name`` names the thread and the
    log messages."""

    def __init__(
        self,
        *,
        client: MlflowClient | None,
        name: str,
        tensorboard_root: Callable[[int], Path] | None,
        flush_interval_s: float,
        resolve_run: RunResolver | None = None,
    ) -> None:
        self._client = client
        self._resolve_run = resolve_run
        self._name = name
        self._tb_root = tensorboard_root
        self._interval = flush_interval_s
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
            target=self._run, name=f"resolute-tracking-{name}", daemon=True
        )
        self._thread.start()

    def enqueue(self, op: _Op, *, metrics: int = 0, urgent: bool = False) -> int:
        """Queue ``op`` and return its sequence number. ``metrics``: how many metric values it
        carries (a full batch is written at once); ``urgent``: write without gathering."""
        with self._cond:
            if self._closed:
                log.warning("tracking of %s is closed; dropped a %s", self._name, op.kind)
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

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything queued so far is written (TensorBoard files flushed too).
        False if ``timeout`` passed first."""
        with self._cond:
            if not self._thread.is_alive():
                return not self._ops
        target = self.enqueue(_Op("flush"), urgent=True)
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

    def set_client(self, client: MlflowClient | None) -> None:
        """The client to write with from now on (set by a ``call`` op that connected)."""
        self._client = client

    def write_inline(self, ops: Iterable[_Op]) -> None:
        """Write ``ops`` now; only from the writer thread (inside a ``call`` op), so that
        what a call queues lands before a ``flush`` queued after the call."""
        self._write(ops)

    def _run_id(self, op: _Op) -> str | None:
        if op.run_id is not None or self._resolve_run is None:
            return op.run_id
        if op.kind in ("flush", "call"):
            return None
        return self._resolve_run(op.trial_id)

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
        from mlflow.entities import Metric, Param

        metrics: dict[str, list[Metric]] = {}
        for op in batch:
            op.run_id = self._run_id(op)
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
            elif op.kind == "call":
                try:
                    op.data()
                except Exception:  # one failed call must not lose the batch around it
                    log.exception("tracking: a deferred MLflow call of %s failed", self._name)
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
