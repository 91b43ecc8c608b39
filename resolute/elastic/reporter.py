"""The chief's path to the control plane: reports batched by a background flusher.

Reports are sent in order, one batch at a time (a batch is sent only after the previous one
was accepted), as ``sink.on_reports.remote(trial_id, [Report, ...])``. A report that carries
the searcher metric at a time at or past the current target is a decision point: it is
flushed at once and the caller blocks until the group relays the control plane's answer.
That answer (a new target, or stop) is what the caller waits for, not the batch's
acknowledgement, which comes after the control plane has also journaled the report: the
next flush collects it.

``agree_stop`` is ``ctx.should_stop()`` on a worker: the ranks agree on the chief's answer
through one small collective, but only at the calls a ``CheckSchedule`` picks (every ~0.1 s of
training at most), and always at the first call after a report that may have been a decision
point, so a stop decided there takes effect at that very step.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from resolute.elastic.control import CheckSchedule, TrialControl
from resolute.elastic.spec import Report, TrialSpec

if TYPE_CHECKING:
    from resolute.elastic.subcontexts import DistributedContext

# Each flush is a Ray call that costs the training process ~1-2 ms of CPU: at 0.2 s it took
# ~4% of a 2-rank CPU DDP benchmark's time. Decision points are flushed at once anyway.
FLUSH_INTERVAL_S = 1.0
SINK_TIMEOUT_S = 60.0
MAX_HELD = 100_000
_INT_LIMIT = 2**62  # targets travel as int64; inf (no target) as this


def _target_as_int(target: float) -> int:
    # Rounded down, so ``step_time >= agreed`` holds whenever ``step_time >= target`` does.
    if math.isnan(target) or target >= _INT_LIMIT:
        return _INT_LIMIT
    if target <= -_INT_LIMIT:
        return -_INT_LIMIT
    return math.floor(target)


class SinkReporter:
    def __init__(
        self,
        *,
        spec: TrialSpec,
        sink: Any,
        control: TrialControl,
        log: logging.Logger,
    ) -> None:
        self._spec = spec
        self._sink = sink
        self._control = control
        self._log = log
        self._buffer: list[Report] = []
        self._buffer_lock = threading.Lock()
        self._send_lock = threading.Lock()  # one batch in flight, so batches stay in order
        # The batch sent and not yet acknowledged: (ref, batch, asked_at), asked_at being the
        # control's answer count when it went as a decision point (None: an ordinary flush).
        # An answer after it means the control plane has taken that batch in.
        self._in_flight: tuple[Any, list[Report], int | None] | None = None
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_step: int | None = None
        # The newest metrics step the sink has acknowledged (chief), and this rank's own
        # copy of the reports it held as a non-chief since then: if the chief dies with
        # reports still in its buffer, the next chief replays them from here.
        self.delivered_step = 0
        self._held: collections.deque[Report] = collections.deque(maxlen=MAX_HELD)
        # should_stop agreement: the schedule of checks, the chief's target as of the last
        # check (the same on every rank, unlike each rank's live target), and the
        # generation in which the ranks agreed to stop.
        self._stop_checks = CheckSchedule()
        self._agreed_target = -_INT_LIMIT
        self._stopped_in: int | None = None

    def _ensure_flusher(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._flush_loop, name=f"resolute-flush-{self._spec.trial_id}", daemon=True
            )
            self._thread.start()

    @property
    def stop_requested(self) -> bool:
        return self._control.stop_requested

    @property
    def pause_requested(self) -> bool:
        return self._control.pause_requested

    def time_of(self, step: int, metrics: Mapping[str, float]) -> float:
        name = self._spec.time_metric
        if name is None:
            return float(step)
        if name not in metrics:
            raise KeyError(
                f"report(step={step}) lacks the experiment's time_metric {name!r}; "
                f"include it in every report (got {sorted(metrics)})"
            )
        return float(metrics[name])

    def report(self, step: int, metrics: Mapping[str, float]) -> None:
        clean = {str(k): float(v) for k, v in metrics.items()}
        t = self.time_of(step, clean)
        self.emit(Report(kind="metrics", step=int(step), time=t, metrics=clean))
        self.last_step = int(step)
        self._note_decision_point(t, clean)
        if self._spec.metric in clean and t >= self._control.target:
            self.flush(asked_at=self._control.answers)
            self._control.wait_at_target(t)

    def hold(self, step: int, metrics: Mapping[str, float]) -> None:
        """A non-chief rank's report: nothing is sent, but at a decision point the rank
        waits here with the chief (in Python, not inside a collective that could time out),
        released by the same answer that the group relays to every rank."""
        clean = {str(k): float(v) for k, v in metrics.items()}
        t = self.time_of(step, clean)
        self._held.append(Report(kind="metrics", step=int(step), time=t, metrics=clean))
        self._note_decision_point(t, clean)
        if self._spec.metric in clean and t >= self._control.target:
            self._control.wait_at_target(t)

    def _note_decision_point(self, t: float, metrics: Mapping[str, float]) -> None:
        # Decided from values every rank shares (the report and the agreed target, which
        # is never above the chief's live one), so every rank forces the same check.
        if self._spec.metric in metrics and t >= self._agreed_target:
            self._stop_checks.force()

    def agree_stop(self, dist: DistributedContext) -> bool:
        """``ctx.should_stop()``: the chief's stop flag, agreed by every rank at a check;
        False between checks. Called on every rank, the same number of times."""
        world = dist.world
        if world.world_size == 1:
            return self._control.stop_requested
        if self._stopped_in == world.generation:
            return True
        if not self._stop_checks.due(world.generation):
            return False
        if world.rank == 0:
            proposal = [
                int(self._control.stop_requested),
                self._stop_checks.propose_gap(),
                _target_as_int(self._control.target),
            ]
        else:
            proposal = [0, 0, 0]
        stop, gap, target = dist.broadcast_ints(proposal)
        self._stop_checks.agreed(gap)
        self._agreed_target = target
        if stop:
            self._stopped_in = world.generation
        return bool(stop)

    def prune_held(self, delivered_step: int) -> None:
        """Forget held reports the sink has already received (told by the chief)."""
        while self._held and self._held[0].step <= delivered_step:
            self._held.popleft()

    def replay_held(self, *, delivered_step: int, up_to_step: int) -> int:
        """As the new chief after the old one was lost: send the held reports the sink may
        not have received (after ``delivered_step``) up to the restored commit; later
        steps will be trained and reported again. Returns how many were replayed."""
        replay = [r for r in self._held if delivered_step < r.step <= up_to_step]
        self._held.clear()
        for report in replay:
            self.emit(report)
        if replay:
            self.last_step = replay[-1].step
            self.flush()
        return len(replay)

    def emit(self, report: Report) -> None:
        with self._buffer_lock:
            self._buffer.append(report)
        self._ensure_flusher()

    def flush(self, *, asked_at: int | None = None) -> None:
        """Send what is buffered and wait until the control plane has accepted it; with
        ``asked_at`` (a decision point: the control's answer count now), return once it is
        sent and let the next flush collect the acknowledgement."""
        with self._send_lock:
            self._settle()
            with self._buffer_lock:
                batch, self._buffer = self._buffer, []
            if not batch:
                return
            try:
                ref = self._sink.on_reports.remote(self._spec.trial_id, batch)
            except Exception as exc:  # noqa: BLE001 - the trial goes on; the log says why
                self._undelivered(batch, exc)
                return
            self._in_flight = (ref, batch, asked_at)
            if asked_at is None:
                self._settle()

    def _settle(self) -> None:
        """Wait for the batch in flight to be accepted (the send lock is held)."""
        if self._in_flight is None:
            return
        import ray

        ref, batch, _ = self._in_flight
        self._in_flight = None
        try:
            ray.get(ref, timeout=SINK_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - the trial goes on; the log says why
            self._undelivered(batch, exc)
            return
        steps = [r.step for r in batch if r.kind == "metrics"]
        if steps:
            self.delivered_step = max(self.delivered_step, *steps)

    def _undelivered(self, batch: list[Report], exc: BaseException) -> None:
        self._log.warning(
            "could not deliver %d report(s) to the control plane: %s", len(batch), exc
        )

    def _flush_loop(self) -> None:
        while not self._closed.wait(FLUSH_INTERVAL_S):
            self.flush()

    def close(self) -> None:
        """Stop the flusher and send what is left. A decision point already answered (the
        run ends on that answer) is not waited for: the control plane took it in before it
        answered, and only its journal write is left, so the slot is not held for it."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=SINK_TIMEOUT_S)
            self._thread = None
        with self._send_lock:
            with self._buffer_lock:
                empty = not self._buffer
            asked_at = self._in_flight[2] if self._in_flight is not None else None
            if empty and asked_at is not None and self._control.answers > asked_at:
                self._in_flight = None
                return
        self.flush()
