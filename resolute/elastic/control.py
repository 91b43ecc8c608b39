"""Worker-side control state: what the group asked (target, stop, re-form) and what the
worker's user thread is doing (status), shared between the actor's control threads and the
thread that runs user code.

Lifecycle of one worker in one trial (``WorkerStatus.phase``)::

    idle -> running -> done
              |  ^
              v  |            (elastic only: a peer left or the group resizes)
          interrupted  -> done  (released from the group, or aborted)

Every change bumps ``version``; the group long-polls ``poll(since)`` to learn of it.
"""

from __future__ import annotations

import threading
import time
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
            self._cond.notify_all()

    def request_stop(self, *, pause: bool) -> None:
        with self._cond:
            self._d.stop = True
            self._d.pause = self._d.pause or pause
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
