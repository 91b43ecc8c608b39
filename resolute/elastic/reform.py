"""How a ``WorkerGroup`` re-forms: after a lost rank, or to grow or shrink in place.

A mixin of ``WorkerGroup`` (``group.py``), kept apart because it is the one intricate part:
announce the new generation, wait until every live rank has left the old process group
(killing ranks stuck in a collective of the departed generation), pick the survivor with
the newest commit as rank 0, hand out the new worlds, and refill lost slots later.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from resolute.elastic.launch import POLL_S, Launcher, Member, Rendezvous
from resolute.elastic.plan import order_by_node
from resolute.elastic.pool import PooledWorker
from resolute.errors import ResourcesUnavailable

STUCK_PROBE_S = 2.0


class Reformation(Launcher):
    """Re-formation steps of ``WorkerGroup``; the attributes below are the group's."""

    reform_timeout_s: float
    _leaving: list[Member]
    _target: int
    _reformations: int
    _deferred: list[tuple[Any, ...]]
    _refill: asyncio.Task[None] | None

    @property
    def size(self) -> int:
        return len(self._members)

    @property
    def finished(self) -> bool:
        return self._outcome is not None and self._outcome.done()

    def _apply(self, event: tuple[Any, ...]) -> bool:
        raise NotImplementedError

    async def _end_all(self) -> None:
        raise NotImplementedError

    async def _finish(self) -> None:
        raise NotImplementedError

    async def _reform(
        self,
        *,
        add: list[Member],
        drop: int,
        reason: str,
        marks: dict[str, float] | None = None,
        rendezvous: Rendezvous | None = None,
    ) -> bool:
        """Move every live rank into a new generation: announce it, wait until each one has
        left the old process group (or finished, or died), then hand out the new worlds.
        ``add`` are warmed (ideally prepared) newcomers; ``rendezvous`` may be opened
        ahead for the expected rank 0."""
        generation = self._generation + 1
        for name, at in (marks or {}).items():
            self._mark(generation, name, at)
        planned = bool(add) or drop > 0
        live = [m for m in self._members if not m.done]
        for m in live:
            m.worker.handle.announce_reform.remote(self._key, generation, planned)
        self._mark(generation, "announced")
        await self._settle(self._members, unplanned=not planned)
        self._mark(generation, "settled")
        if any(
            m.status.outcome == "errored" and m.status.error_kind == "user" for m in self._members
        ):
            await self._release_members(add)
            await self._end_all()
            return False
        interrupted = [m for m in self._members if not m.lost and m.status.phase == "interrupted"]
        if any(m.status.phase == "done" and not m.lost for m in self._members):
            # The run finished on some rank meanwhile: nothing to re-form.
            await self._release_members(add)
            for m in interrupted:
                m.worker.handle.release.remote(self._key)
            await self._settle(self._members)
            await self._finish()
            return False
        by_rank = sorted(interrupted, key=lambda m: m.status.rank)
        dropped = by_rank[len(by_rank) - drop :] if drop > 0 else []
        survivors = [m for m in by_rank if m not in dropped]
        if not survivors:
            await self._release_members(add)
            await self._end_all()
            return False
        if len(survivors) + len(add) < self.min_workers:
            extra = await self._try_acquire(self.min_workers - len(survivors) - len(add))
            add = add + [Member(worker=w) for w in extra]
        if len(survivors) + len(add) < self.min_workers:
            self._event(f"only {len(survivors)} rank(s) left, below min_workers={self.min_workers}")
            await self._release_members(add)
            await self._end_all()
            return False
        chief = min(survivors, key=lambda m: (-m.status.commits, m.status.rank))
        everyone = [chief] + [m for m in survivors if m is not chief] + add
        order = order_by_node([m.worker.node_id for m in everyone], first=0)
        members = [everyone[i] for i in order]
        for m in dropped:
            self._leaving.append(m)
            m.worker.handle.release.remote(self._key)
        old = self.size
        await self._launch(
            members, generation=generation, survivors=survivors, rendezvous=rendezvous
        )
        self._members = members
        for m in add:
            m.watcher = asyncio.create_task(self._watch(m))
        self._reformations += 1
        self._event(
            f"re-formed generation {generation} ({reason}): {old} -> {len(members)} rank(s) "
            f"on {self._num_nodes()} node(s), restored commit {chief.status.commits} "
            f"(step {chief.status.step})"
        )
        if self._target > self.size:
            self._start_refill()
        return True

    async def _release_members(self, members: list[Member]) -> None:
        await self._return([m.worker for m in members])

    async def _settle(self, members: list[Member], *, unplanned: bool = False) -> None:
        """Consume status events until every member is interrupted, done or lost; a member
        that does not get there within ``reform_timeout_s`` is killed and counted lost.

        After an unplanned loss, a rank can stay blocked in a collective with a peer that
        has already left (gloo closes a departed peer's sockets only once its process
        group is freed), and no collective of the old generation can complete any more.
        Such ranks are found by their stack and killed at once; the refill replaces them.
        Horovod's ranks are left alone: its Gloo timeout wakes them (a collective fails once
        a peer stays silent that long), and killing one that is about to wake would lose
        a healthy rank."""
        deadline = time.monotonic() + self.reform_timeout_s
        next_probe = time.monotonic() + STUCK_PROBE_S
        unplanned = unplanned and self.spec.backend != "horovod"
        while not all(m.settled for m in members):
            now = time.monotonic()
            if now >= deadline:
                for m in members:
                    if not m.settled:
                        why = f"did not leave the group within {self.reform_timeout_s:.0f}s"
                        self._apply(("lost", m, why))
                break
            if unplanned and now >= next_probe:
                await self._kill_blocked_in_collectives([m for m in members if not m.settled])
                next_probe = time.monotonic() + STUCK_PROBE_S
                continue
            left = min(deadline, next_probe if unplanned else deadline) - now
            try:
                event = await asyncio.wait_for(self._events.get(), timeout=max(left, 0.01))
            except asyncio.TimeoutError:
                continue
            if not self._apply(event):
                self._deferred.append(event)

    async def _kill_blocked_in_collectives(self, members: list[Member]) -> None:
        import ray

        for m in members:
            try:
                stack: str = await asyncio.wait_for(m.worker.handle.stack.remote(self._key), POLL_S)
            except ray.exceptions.RayActorError as exc:
                self._apply(("lost", m, exc))
                continue
            except (asyncio.TimeoutError, ray.exceptions.RayError):
                continue  # busy: the re-formation deadline decides about it
            innermost = stack.rsplit('  File "', 1)[-1]
            if "torch/distributed/" in innermost or "horovod/" in innermost:
                self._log.info(
                    "rank %d is blocked in a collective of the departed generation:\n%s",
                    m.status.rank,
                    stack,
                )
                self._apply(("lost", m, "blocked in a collective of the departed generation"))

    async def _try_acquire(self, n: int) -> list[PooledWorker]:
        try:
            workers = await self._acquire(n, timeout_s=2.0)
        except ResourcesUnavailable:
            return []
        try:
            await self._warm(workers, joining=True)
        except Exception:  # noqa: BLE001 - it warmed before; a failure now means no refill
            await self._return(workers, reuse=False)
            return []
        return workers

    def _start_refill(self) -> None:
        if self._refill is not None and not self._refill.done():
            return
        self._refill = asyncio.create_task(self._refill_loop())

    async def _refill_loop(self) -> None:
        """After a loss, wait for slots to come back (a node rejoins, the autoscaler adds
        one) and grow back to the target size: all missing ranks at once when they fit,
        else one at a time as slots appear."""
        while not self.finished and self.size < self._target:
            missing = self._target - self.size
            workers: list[PooledWorker] = []
            for n, timeout in ((missing, 2.0), (1, None)):
                try:
                    workers = await self._acquire(n, timeout_s=timeout)
                    break
                except ResourcesUnavailable:
                    continue
            if not workers:
                continue
            marks = {"decided": time.time()}
            newcomers = [Member(worker=w) for w in workers]
            try:
                await self._warm(workers, joining=True)
                await self._prepare(newcomers)
            except asyncio.CancelledError:
                await asyncio.shield(self._return(workers))
                raise
            except Exception:  # noqa: BLE001 - retry with other workers
                await self._return(workers, reuse=False)
                continue
            if self.finished:
                await self._return(workers)
                return
            marks["warmed"] = time.time()
            self._events.put_nowait(("grow", newcomers, None, self._target, marks))
            return
