"""Worker-side control state: what the group asked (target, stop, re-form) and what the
worker's user thread is doing (status), shared between the actor's control threads and the
thread that runs user code.

Lifecycle of one worker in one trial (``WorkerStatus.phase``)::

    idle -> running -> done
              |  ^
              v  |            (elastic only: a peer left or the group resizes)
          interrupted  -> done  (released from the group, or aborted)

Every change bumps ``version``; the group long-polls ``poll(since)`` to learn of it.

``CheckSchedule`` decides at which calls the ranks agree on these decisions (one small
collective), so that a training loop that asks every step does not pay a collective every
step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from resolute.elastic.backends.base import WorldInfo


class Reform(BaseException):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside user code when the group re-forms. A BaseException so that a user's
    ``except Exception`` around a training step does not swallow it."""

    def __init__(self, *, planned: bool, cause: BaseException | None = None) -> None:
        super().__init__("planned resize" if planned else f"peer lost: {cause}")
        self.planned = planned
        self.cause = cause


class Released(BaseException):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside user code on a rank that a shrink removes from the group."""


@dataclass(frozen=True)
class WorkerStatus:
    phase: str = "idle"  # idle | running | interrupted | done
    version: int = 0
    generation: int = 0
    rank: int = -1
    elastic: bool = False  # user code runs inside ElasticState.run, so it can re-form
    commits: int = 0  # ElasticState commits so far (the group picks the newest as rank 0)
    lazy_imports: bool = False  # its user code made torch import torch._dynamo (see warm)
    step: int = 0  # ElasticState step at the last commit
    last_step: int | None = None  # last step reported by this rank as chief
    checkpoint_uri: str | None = None  # latest durable checkpoint written by this worker
    outcome: str | None = None  # done: completed | errored | released
    error: str | None = None
    error_kind: str | None = None  # "user" | "collective"
    traceback: str | None = None
    interrupt_kind: str | None = None  # interrupted: "planned" | "failure"


@dataclass
class _Decisions:
    target: float = float("inf")
    stop: bool = False
    pause: bool = False
    pending_generation: int = 0  # a planned re-formation announced by the group
    wake_generation: int = 0  # an unplanned one: wake Python-level waits now
    next_world: WorldInfo | None = None
    released: bool = False
    aborted: bool = False
    answers: int = 0  # decisions received (a new target, or stop)
    extra: dict[str, Any] = field(default_factory=dict)


class TrialControl:
    """Thread-safe; one per trial run on a worker."""

    def __init__(self, *, until: float, generation: int) -> None:
        self._cond = threading.Condition()
        self._d = _Decisions(target=until)
        self._status = WorkerStatus(phase="idle", generation=generation)

    # -- decisions, from the group (control threads) --------------------------------------

    def set_target(self, until: float) -> None:
        with self._cond:
            self._d.target = until
            self._d.answers += 1
            self._cond.notify_all()

    def request_stop(self, *, pause: bool) -> None:
        with self._cond:
            self._d.stop = True
            self._d.pause = self._d.pause or pause
            self._d.answers += 1
            self._cond.notify_all()

    def announce_reform(self, generation: int, *, planned: bool) -> None:
        with self._cond:
            self._d.pending_generation = max(self._d.pending_generation, generation)
            if not planned:
                self._d.wake_generation = max(self._d.wake_generation, generation)
            self._cond.notify_all()

    def give_world(self, world: WorldInfo) -> None:
        with self._cond:
            self._d.next_world = world
            self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self._d.released = True
            self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            self._d.aborted = True
            self._cond.notify_all()

    # -- questions, from the user thread ---------------------------------------------------

    @property
    def stop_requested(self) -> bool:
        with self._cond:
            return self._d.stop

    @property
    def pause_requested(self) -> bool:
        with self._cond:
            return self._d.pause

    @property
    def answers(self) -> int:
        """How many decisions (a new target, or stop) have arrived so far."""
        with self._cond:
            return self._d.answers

    @property
    def target(self) -> float:
        with self._cond:
            return self._d.target

    def pending_generation(self) -> int:
        with self._cond:
            return self._d.pending_generation

    def wait_at_target(self, time_units: float) -> None:
        """Block while ``time_units`` has reached the target and nobody has decided yet.

        Returns when the target moves past ``time_units`` or a stop is requested. Raises
        ``Reform`` when the group must re-form meanwhile (a peer was lost, or a resize)."""
        with self._cond:
            while True:
                if self._d.stop or time_units < self._d.target:
                    return
                if self._d.pending_generation > self._status.generation:
                    raise Reform(planned=self._d.wake_generation < self._d.pending_generation)
                self._cond.wait()

    def wait_for_world(self, *, timeout_s: float) -> WorldInfo:
        """Block (interrupted) until the group hands this worker its place in the next
        generation. Raises ``Released`` when a shrink removes it, ``TimeoutError`` when the
        group never answers, ``Aborted`` when the group gives up on the trial."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                if self._d.released:
                    raise Released()
                if self._d.aborted:
                    raise Aborted()
                world = self._d.next_world
                if world is not None and world.generation > self._status.generation:
                    self._d.next_world = None
                    return world
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"the worker group did not re-form within {timeout_s:.0f}s; "
                        "check the scheduler's log for the group's supervisor errors"
                    )
                self._cond.wait(timeout=left)

    # -- status, written by the user thread and read by the group --------------------------

    def update(self, **changes: Any) -> WorkerStatus:
        with self._cond:
            self._status = replace(self._status, version=self._status.version + 1, **changes)
            self._cond.notify_all()
            return self._status

    def note_commit(self, *, commits: int, step: int) -> None:
        """Record a commit without waking pollers: the group reads it when it needs it (at a
        re-formation), and a version bump per training step would flood it with polls."""
        with self._cond:
            self._status = replace(self._status, commits=commits, step=step)

    @property
    def status(self) -> WorkerStatus:
        with self._cond:
            return self._status

    def poll(self, since: int, timeout_s: float) -> WorkerStatus:
        """Long poll: the status once its version passes ``since``, or the current one after
        ``timeout_s`` (so a caller also learns that the worker is alive)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._status.version <= since:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(timeout=left)
            return self._status


class Aborted(BaseException):  # noqa: N818 - a control-flow signal, not an error
    """Raised on an interrupted worker when the group gives up re-forming (the trial ends)."""


# A check (one tiny collective) may cost up to this share of the training time between checks...
CHECK_COST_SHARE = 0.005
# ...but checks are never further apart than this much training, so that a stop or a resize
# waits at most about this long for the ranks to agree on it.
MAX_CHECK_GAP_S = 0.1
MAX_CHECK_GAP_CALLS = 10_000


class CheckSchedule:
    """Which calls of a per-step question (``commit``, ``should_stop``) are checks, where the
    ranks agree on the answer through a collective; the calls in between answer at once.

    Every rank must check at the same calls, or the collective deadlocks: so no rank decides
    from its own clock. Rank 0 proposes the gap to the next check (``propose_gap``, from its
    timing) and broadcasts it with the answer; every rank adopts it (``agreed``). A new world
    (a new ``generation`` passed to ``due``) checks at its first call, so newcomers and
    survivors start in step.
    """

    def __init__(self, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._generation: int | None = None
        self._calls_left = 0  # calls to answer at once before the next check
        self._calls_since = 0  # calls since the last check ended, this one included
        self._last_check_end: float | None = None
        self._last_cost: float | None = None
        self._check_start = 0.0
        self.checks = 0  # checks agreed so far

    def due(self, generation: int) -> bool:
        """Count a call; True when this call must be a check."""
        if generation != self._generation:
            self._generation = generation
            self._calls_left = 0
            self._calls_since = 0
            self._last_check_end = None
            self._last_cost = None
        self._calls_since += 1
        if self._calls_left > 0:
            self._calls_left -= 1
            return False
        self._check_start = self._clock()
        return True

    def force(self) -> None:
        """Make the next call a check (a caller forces on every rank alike)."""
        self._calls_left = 0

    def propose_gap(self) -> int:
        """Rank 0, at the start of a check: how many calls to answer at once before the next
        check, so that a check costs about ``CHECK_COST_SHARE`` of the time between checks,
        and checks stay within ``MAX_CHECK_GAP_S`` of each other."""
        if self._last_check_end is None or self._last_cost is None or self._calls_since <= 0:
            return 0  # no timing yet: check again at the next call
        per_call = (self._check_start - self._last_check_end) / self._calls_since
        gap_s = min(MAX_CHECK_GAP_S, self._last_cost / CHECK_COST_SHARE)
        if per_call <= 0.0:
            return MAX_CHECK_GAP_CALLS
        # The epsilon keeps an exact ratio (20 ms / 10 ms) from rounding down to one less.
        return max(0, min(MAX_CHECK_GAP_CALLS, int(gap_s / per_call + 1e-9) - 1))

    def agreed(self, gap: int) -> None:
        """Every rank, once the check's collective returned: answer the next ``gap`` calls at
        once."""
        end = self._clock()
        self.checks += 1
        self._last_cost = max(0.0, end - self._check_start)
        self._last_check_end = end
        self._calls_since = 0
        self._calls_left = max(0, int(gap))
