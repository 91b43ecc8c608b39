"""``WorkerGroup``: the ranks of one trial, driven from the scheduler's async actor.

Every method is a coroutine or fire-and-forget; none blocks the event loop. One supervisor
task owns the group's membership: it consumes events (a worker's status changed, a worker
was lost, a resize was asked for) one at a time, so decisions never race each other.

Lifecycle: ``start`` -> running -> (``resize`` / a rank lost -> re-formed)* -> ``wait``
returns the ``TrialOutcome`` -> ``shutdown``. Workers go back to the pool as soon as the
run ends (before ``wait`` returns), so their slots are free for the next trial.

Membership events reach the control plane as ``Report(kind="event")`` through the sink,
and the trial's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import replace
from typing import Any

from resolute.elastic.launch import Member
from resolute.elastic.placement import Shape
from resolute.elastic.plan import TrialOutcome, decide_outcome, order_by_node
from resolute.elastic.pool import WorkerPool
from resolute.elastic.reform import Reformation
from resolute.elastic.spec import TrialSpec

# How long a resize waits for ranks that just joined to re-enter the elastic loop (their
# import and restore after a re-formation) before it answers that it cannot resize.
ELASTIC_WAIT_S = 30.0

__all__ = ["TrialOutcome", "WorkerGroup"]


class WorkerGroup(Reformation):
    def __init__(
        self,
        *,
        spec: TrialSpec,
        sink: Any,
        pool: WorkerPool,
        min_workers: int = 1,
        max_workers: int | None = None,
        reform_timeout_s: float = 60.0,
    ) -> None:
        if min_workers < 1 or (max_workers is not None and max_workers < min_workers):
            raise ValueError(
                f"need 1 <= min_workers <= max_workers, got {min_workers}, {max_workers}"
            )
        # This run's name on its workers (see TrialWorker): unique per group.
        self.spec = replace(spec, run_key=f"{spec.trial_id}-{uuid.uuid4().hex[:10]}")
        self.min_workers = min_workers
        self.max_workers = max_workers if max_workers is not None else min_workers
        self.reform_timeout_s = reform_timeout_s
        self._sink = sink
        self._pool = pool
        self._shape = Shape.for_spec(spec)
        self._members: list[Member] = []
        self._leaving: list[Member] = []
        self._generation = 0
        self._target = 0
        self._until = spec.until
        self._stop = False
        self._pause = False
        self._lost = 0
        self._reformations = 0
        self._last_step: int | None = None
        self._events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._deferred: list[tuple[Any, ...]] = []
        self._supervisor: asyncio.Task[None] | None = None
        self._refill: asyncio.Task[None] | None = None
        self._outcome: asyncio.Future[TrialOutcome] | None = None
        self._marks: dict[int, dict[str, float]] = {}
        self._log = self._open_log()

    # -- public API ---------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def worker_pids(self) -> list[int]:
        return [m.worker.pid for m in self._members]

    async def start(self, n_workers: int) -> None:
        """Acquire ``n_workers`` workers, warm them (import the entrypoint: a broken one
        raises ``EntrypointError`` here), form the process group and launch ``train(ctx)``.
        Raises ``ResourcesUnavailable`` when the workers cannot be placed."""
        if self._outcome is not None:
            raise RuntimeError("a WorkerGroup runs one trial once; create a new one")
        self._check_size(n_workers)
        self._target = n_workers
        workers = await self._acquire(n_workers)
        self._outcome = asyncio.get_running_loop().create_future()
        try:
            if n_workers == 1:
                self._members = [Member(worker=workers[0])]
                await self._start_single(self._members[0])
            else:
                await self._warm(workers)
                order = order_by_node([w.node_id for w in workers])
                self._members = [Member(worker=workers[i]) for i in order]
                await self._launch(self._members, generation=0, survivors=[])
        except BaseException as exc:
            self._outcome = None
            self._members = []
            await self._give_back(workers, exc)
            raise
        for m in self._members:
            m.watcher = asyncio.create_task(self._watch(m))
        self._supervisor = asyncio.create_task(self._supervise())
        self._event(f"started with {n_workers} rank(s) on {self._num_nodes()} node(s)")

    def set_target(self, until: float) -> None:
        """Let the trial train until ``until`` time units (answers a chief waiting at its
        target; may also come early)."""
        self._until = until
        for m in self._members:
            m.worker.handle.set_target.remote(self._key, until)

    def request_stop(self, *, pause: bool, ending: bool = False) -> None:
        """Ask user code to stop (``should_stop()`` turns True); with ``pause`` the outcome is
        ``paused`` (the code is expected to save a checkpoint first).

        ``ending``: the code waits at its target for this very answer, so it returns at
        once; its workers are offered to a trial that starts meanwhile (``WorkerPool.offer``)."""
        self._stop = True
        self._pause = self._pause or pause
        for m in self._members:
            m.worker.handle.request_stop.remote(self._key, pause)
        if ending and self.spec.reuse_workers and self._supervisor is not None:
            self._pool.offer([m.worker for m in self._members if not m.lost], owner=self._key)

    async def wait(self) -> TrialOutcome:
        if self._outcome is None:
            raise RuntimeError("start() the group before waiting for it")
        return await asyncio.shield(self._outcome)

    async def resize(self, n: int) -> bool:
        """Grow or shrink to ``n`` ranks (``min_workers <= n <= max_workers``) without
        restarting the trial. New ranks are placed and warmed before the running ranks
        pause to re-form. Returns False, changing nothing, when the user code does not use
        ``ctx.elastic_state`` (the caller may checkpoint and restart instead) or the run
        has ended. Raises ``ResourcesUnavailable`` when new ranks cannot be placed."""
        self._check_size(n)
        if self.finished or self._supervisor is None:
            return False
        if not all(m.status.elastic for m in self._members):
            # A rank that joined in the last re-formation may not have re-entered the
            # elastic loop yet; the trial is elastic if any rank is, so wait for it.
            if not any(m.status.elastic for m in self._members):
                return False
            if not await self._all_elastic(timeout_s=ELASTIC_WAIT_S):
                return False
        if n == self.size:
            self._target = n
            if self._refill is not None:
                self._refill.cancel()
            return True
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        decided = time.time()
        if n > self.size:
            workers = await self._acquire(
                n - self.size, prefer_nodes=[m.worker.node_id for m in self._members]
            )
            newcomers = [Member(worker=w) for w in workers]
            try:
                # Everything but joining the process group happens now, while the running
                # ranks train on: process start, imports, the trial's context.
                await self._warm(workers, joining=True)
                await self._prepare(newcomers)
            except BaseException as exc:
                await self._give_back(workers, exc)
                raise
            marks = {"decided": decided, "warmed": time.time()}
            self._events.put_nowait(("grow", newcomers, fut, n, marks))
        else:
            self._events.put_nowait(("shrink", n, fut, {"decided": decided}))
        return await fut

    async def _all_elastic(self, *, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not all(m.status.elastic for m in self._members):
            if self.finished or time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def shutdown(self, *, grace_s: float = 0.0) -> None:
        """End the run: with ``grace_s`` > 0, ask user code to stop and wait that long; then
        kill what still runs. Healthy workers go back to the pool. Idempotent."""
        if self._refill is not None:
            self._refill.cancel()
        if self._outcome is None:
            return
        if not self.finished and grace_s > 0:
            self.request_stop(pause=False)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._outcome), timeout=grace_s)
        if not self.finished:
            if self._supervisor is not None:
                self._supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._supervisor
            for m in self._members + self._leaving:
                if m.watcher is not None:
                    m.watcher.cancel()
            await self._pool.discard([m.worker for m in self._members + self._leaving])
            self._members, self._leaving = [], []
            self._stop = True
            self._event("run ended: stopped (shut down)")
            self._close_log()
            self._finalize_with(
                TrialOutcome(
                    status="stopped",
                    last_step=self._last_step,
                    workers_lost=self._lost,
                    reformations=self._reformations,
                )
            )

    # -- supervising ---------------------------------------------------------------------

    async def _supervise(self) -> None:
        try:
            while not self.finished:
                if self._deferred:
                    event = self._deferred.pop(0)
                else:
                    event = await self._events.get()
                await self._handle(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a supervisor bug must not hang the trial
            self._log.exception("worker group supervisor failed")
            await self._end_all()
            self._finalize_with(
                TrialOutcome(
                    status="errored",
                    error=f"worker group supervisor failed: {type(exc).__name__}: {exc}",
                    counts_as_restart=False,
                    workers_lost=self._lost,
                )
            )

    def _apply(self, event: tuple[Any, ...]) -> bool:
        """Update member state for a status/lost event; False for other kinds."""
        kind = event[0]
        if kind == "status":
            member, status = event[1], event[2]
            member.status = status
            if status.last_step is not None:
                self._last_step = max(self._last_step or 0, status.last_step)
            if member in self._leaving and status.phase == "done":
                self._leaving.remove(member)
                asyncio.create_task(self._return([member.worker]))
            return True
        if kind == "lost":
            member = event[1]
            if not member.lost:
                member.lost = True
                self._lost += 1
                self._event(f"rank {member.status.rank} (pid {member.worker.pid}) lost: {event[2]}")
                self._pool_forget(member)
            return True
        return False

    async def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if self._apply(event):
            member: Member = event[1]
            if member not in self._members:
                return
            failed_user_code = (
                member.status.phase == "done"
                and member.status.outcome == "errored"
                and member.status.error_kind == "user"
            )
            if failed_user_code:
                await self._end_all()
                return
            needs_reform = member.lost or (
                member.status.phase == "interrupted"
                and member.status.interrupt_kind == "failure"
                and member.status.generation == self._generation
            )
            if needs_reform and any(m.status.elastic for m in self._members):
                await self._reform(add=[], drop=0, reason="a rank was lost")
            elif member.lost:
                await self._end_all()
            if all(m.done for m in self._members):
                await self._finish()
            return
        if kind == "grow":
            _, newcomers, fut, n, marks = event
            if fut is None:
                # A refill, queued before a shrink may have lowered the target: grow back
                # to the target as it stands now, not as it stood when the refill began.
                keep = max(0, self._target - self.size)
                await self._release_members(newcomers[keep:])
                newcomers, n = newcomers[:keep], self.size + keep
                if not newcomers:
                    return
            self._target = max(self._target, n)
            ok = await self._reform(add=newcomers, drop=0, reason=f"grow to {n}", marks=marks)
            if fut is not None and not fut.done():
                fut.set_result(ok)
        elif kind == "shrink":
            _, n, fut, marks = event
            self._target = n
            if self._refill is not None:
                self._refill.cancel()  # the ranks it waits for are no longer wanted
            ok = await self._reform(
                add=[], drop=self.size - n, reason=f"shrink to {n}", marks=marks
            )
            if not fut.done():
                fut.set_result(ok)

    # -- ending -------------------------------------------------------------------------

    async def _end_all(self) -> None:
        """Stop every live rank (a rank failed for good): wake and abort them, wait for them
        to finish, kill the ones that do not, then settle the outcome."""
        for m in self._members:
            if not m.done:
                m.worker.handle.request_stop.remote(self._key, False)
                m.worker.handle.abort.remote(self._key)
        deadline = time.monotonic() + self.reform_timeout_s
        while not all(m.done for m in self._members):
            left = deadline - time.monotonic()
            if left <= 0:
                for m in self._members:
                    if not m.done:
                        self._apply(("lost", m, "did not stop after its peers failed"))
                break
            try:
                event = await asyncio.wait_for(self._events.get(), timeout=left)
            except asyncio.TimeoutError:
                continue
            if not self._apply(event):
                self._deferred.append(event)
        await self._finish()

    async def _finish(self) -> None:
        if self.finished:
            return
        if self._refill is not None:
            self._refill.cancel()
        outcome = decide_outcome(
            [None if m.lost else m.status for m in self._members],
            stop_requested=self._stop,
            pause_requested=self._pause,
            workers_lost=self._lost,
            reformations=self._reformations,
            last_step=self._last_step,
            checkpoint_uri=None,
        )
        healthy = [m.worker for m in self._members if not m.lost]
        await self._return(healthy)
        while not self._events.empty():
            self._deferred.append(self._events.get_nowait())
        for event in self._deferred:
            if event[0] == "grow":
                await self._release_members(event[1])
                if event[2] is not None and not event[2].done():
                    event[2].set_result(False)
            elif event[0] == "shrink" and not event[2].done():
                event[2].set_result(False)
        self._deferred.clear()
        if outcome.status == "errored":
            self._log.error("trial run errored: %s", outcome.error)
        self._event(f"run ended: {outcome.status}")
        self._finalize_with(outcome)
        self._close_log()

    def _finalize_with(self, outcome: TrialOutcome) -> None:
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_result(outcome)

    def _pool_forget(self, member: Member) -> None:
        asyncio.create_task(self._pool.discard([member.worker]))
