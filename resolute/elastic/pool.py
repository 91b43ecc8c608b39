"""Warm worker actors kept per resource shape and reused across trials.

A trial that starts on a warm worker costs no new Python process: the worker's imports and
its ``WorkerCache`` (datasets) are already there. New workers are created in a placement
group with the ``PACK`` strategy, so the ranks created together land on the fewest nodes.
A worker keeps its placement-group bundle (its slot) while idle; the group is removed
when its last worker is killed. Idle workers beyond ``max_idle`` are killed, oldest first.

Workers are kept apart by ``Shape``, which holds the Ray ``runtime_env`` a worker was created
with as well as its resources: a worker whose process carries one experiment's code (its
working_dir package), pip packages and environment variables is never handed to a trial
that needs another.

A worker whose trial was told to stop at a decision point (it returns from ``train`` within
milliseconds) is *offered* by its group: a trial that starts meanwhile may claim it. The
worker is then the successor's, and its start call waits on the worker for the old run to
end (``TrialWorker.warm(after=...)``): the slot passes from one trial to the next without a
round trip through the scheduler. Each worker records the group that holds it (``owner``,
the group's run key), so the old group's later ``release`` of a claimed worker is a no-op,
and a successor that fails to start hands a claimed worker back to the old group.

Used from an async context (the scheduler actor): every method that waits is a coroutine.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from resolute.elastic.placement import (
    Shape,
    first_lines,
    free_resources_hold,
    is_runtime_env_failure,
    ready_or,
)
from resolute.elastic.worker import worker_actor_class
from resolute.errors import ResourcesUnavailable, RuntimeEnvError

log = logging.getLogger(__name__)

INFO_TIMEOUT_S = 30.0
FINISH_TIMEOUT_S = 30.0


RETRY_S = 1.0  # how long one placement attempt waits before idle workers are looked at again


@dataclass
class PooledWorker:
    handle: Any
    shape: Shape
    pid: int
    node_id: str
    node_ip: str
    pg_key: int
    serial: int = 0
    trials: int = field(default=0)
    owner: str | None = None  # run key of the group it is lent to (None: idle or unnamed)
    after: str | None = None  # claimed while this run of its old group was still ending
    previous_done: bool = False  # the old group has let go of it (claimed workers)


class WorkerPool:
    def __init__(self, *, max_idle: int = 8, acquire_timeout_s: float = 120.0) -> None:
        self.max_idle = max_idle
        self.acquire_timeout_s = acquire_timeout_s
        self._idle: dict[Shape, list[PooledWorker]] = {}
        self._offered: dict[Shape, list[PooledWorker]] = {}  # lent, their trial is ending
        self._pgs: dict[int, Any] = {}
        self._pg_live: Counter[int] = Counter()
        self._serial = itertools.count(1)
        self._live: dict[int, PooledWorker] = {}  # every worker started and not yet killed
        self.created = 0
        self.reused = 0
        self.handed_over = 0  # workers claimed from a trial that was ending
        # Set whenever slots come back (a worker goes idle or is killed): an acquire waiting
        # for a placement group looks at the idle workers again at once.
        self._freed: asyncio.Event | None = None

    # -- inspecting ---------------------------------------------------------------------

    def idle_count(self, shape: Shape | None = None) -> int:
        if shape is not None:
            return len(self._idle.get(shape, []))
        return sum(len(ws) for ws in self._idle.values())

    def idle_slots(self) -> dict[Shape, int]:
        return {s: len(ws) for s, ws in self._idle.items() if ws}

    # -- acquiring ----------------------------------------------------------------------

    async def acquire(
        self,
        *,
        shape: Shape,
        n: int,
        reuse: bool = True,
        prefer_nodes: Sequence[str] = (),
        timeout_s: float | None = None,
        owner: str | None = None,
    ) -> list[PooledWorker]:
        """``n`` workers of ``shape`` for the group ``owner``: warm idle ones first (those on
        ``prefer_nodes``, then on the nodes with the most idle workers), then ones offered by
        an ending trial (their ``after`` names the run to wait for), new ones for the rest.

        Raises ``ResourcesUnavailable`` when the new ones cannot be placed in time."""
        if n <= 0:
            return []
        taken = await self._gather(shape, n, reuse, prefer_nodes, timeout_s, owner)
        for worker in taken:
            worker.owner = owner
        return taken

    async def _gather(
        self,
        shape: Shape,
        n: int,
        reuse: bool,
        prefer_nodes: Sequence[str],
        timeout_s: float | None,
        owner: str | None,
    ) -> list[PooledWorker]:
        timeout = self.acquire_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        taken = await self._take_idle(shape, n, prefer_nodes) if reuse else []
        if reuse and owner is not None:
            taken += self._take_offered(shape, n - len(taken), prefer_nodes, owner)
        freed = self._freed_event()
        try:
            while True:
                freed.clear()
                # Wait for new slots in short rounds: workers that go idle meanwhile (a trial
                # ending, or being preempted for this one) hold exactly the slots a pending
                # placement group waits for, so take them instead of waiting past them.
                left = deadline - time.monotonic()
                try:
                    fresh = await self._create(
                        shape, n - len(taken), max(min(RETRY_S, left), 0), interrupt=freed
                    )
                    break
                except ResourcesUnavailable:
                    if left <= RETRY_S:
                        raise
                if reuse:
                    taken += await self._take_idle(shape, n - len(taken), prefer_nodes)
                    if owner is not None:
                        taken += self._take_offered(shape, n - len(taken), prefer_nodes, owner)
                else:
                    await self.trim(keep=0, shape=shape)
                if len(taken) == n:
                    fresh = []
                    break
        except BaseException:
            await self.release(taken, reuse=True, owner=owner)
            raise
        self.reused += len(taken)
        return taken + fresh

    def offer(self, workers: Iterable[PooledWorker], *, owner: str) -> None:
        """``owner``'s trial was told to stop and is about to return: its workers may go
        straight to a trial that starts meanwhile. Wakes an ``acquire`` waiting for slots."""
        offered = False
        for worker in workers:
            if worker.owner == owner and worker.serial in self._live:
                pending = self._offered.setdefault(worker.shape, [])
                if worker not in pending:
                    pending.append(worker)
                    offered = True
        if offered:
            self._slots_freed()

    def _take_offered(
        self, shape: Shape, n: int, prefer_nodes: Sequence[str], owner: str
    ) -> list[PooledWorker]:
        offered = self._offered.get(shape, [])
        preferred = set(prefer_nodes)
        offered.sort(key=lambda w: (w.node_id not in preferred, w.serial))
        taken: list[PooledWorker] = []
        while offered and len(taken) < n:
            worker = offered.pop(0)
            worker.after, worker.owner, worker.previous_done = worker.owner, owner, False
            taken.append(worker)
        self.handed_over += len(taken)
        return taken

    def confirm(self, workers: Iterable[PooledWorker]) -> None:
        """The new owner has started on these workers: the runs they followed are over."""
        for worker in workers:
            worker.after = None

    async def _take_idle(
        self, shape: Shape, n: int, prefer_nodes: Sequence[str]
    ) -> list[PooledWorker]:
        idle = self._idle.get(shape, [])
        per_node = Counter(w.node_id for w in idle)
        preferred = set(prefer_nodes)
        idle.sort(key=lambda w: (w.node_id not in preferred, -per_node[w.node_id], w.node_id))
        taken: list[PooledWorker] = []
        while idle and len(taken) < n:
            worker = idle.pop(0)
            if await self._alive(worker):
                taken.append(worker)
            else:
                self._forget(worker)
        return taken

    async def _alive(self, worker: PooledWorker) -> bool:
        try:
            await asyncio.wait_for(worker.handle.info.remote(), timeout=INFO_TIMEOUT_S)
            return True
        except Exception:  # noqa: BLE001 - any failure means the idle worker is unusable
            return False

    def _freed_event(self) -> asyncio.Event:
        if self._freed is None:
            self._freed = asyncio.Event()
        return self._freed

    def _slots_freed(self) -> None:
        if self._freed is not None:
            self._freed.set()

    async def _create(
        self,
        shape: Shape,
        k: int,
        timeout_s: float | None,
        *,
        interrupt: asyncio.Event | None = None,
    ) -> list[PooledWorker]:
        if k <= 0:
            return []
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        timeout = self.acquire_timeout_s if timeout_s is None else timeout_s
        pg = placement_group([shape.bundle() for _ in range(k)], strategy="PACK")
        try:
            ready = await self._wait_ready(pg, shape, timeout, interrupt)
        except BaseException:
            # Cancelled while waiting: a pending group would grab its slots once they free
            # up, for nobody.
            remove_placement_group(pg)
            raise
        if not ready:
            remove_placement_group(pg)
            raise ResourcesUnavailable(
                f"could not place {k} worker(s) of {shape.cpus} CPU / {shape.gpus} GPU within "
                f"{timeout:.0f}s; the cluster lacks free slots. Lower the trial's slots, free "
                "resources, or let the autoscaler add nodes"
            )
        key = next(self._serial)
        self._pgs[key] = pg
        cls = worker_actor_class()
        handles = [
            cls.options(
                num_cpus=shape.cpus,
                num_gpus=shape.gpus,
                max_restarts=0,
                runtime_env=shape.actor_runtime_env(),
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=i
                ),
            ).remote()
            for i in range(k)
        ]
        self._pg_live[key] += k
        infos = await asyncio.gather(*(h.info.remote() for h in handles), return_exceptions=True)
        workers: list[PooledWorker] = []
        failed: BaseException | None = None
        for handle, info in zip(handles, infos, strict=True):
            if isinstance(info, BaseException):
                failed = info
                self._kill_handle(handle, key)
                continue
            workers.append(
                PooledWorker(
                    handle=handle,
                    shape=shape,
                    pid=int(info["pid"]),
                    node_id=str(info["node_id"]),
                    node_ip=str(info["node_ip"]),
                    pg_key=key,
                    serial=next(self._serial),
                )
            )
        for worker in workers:
            self._live[worker.serial] = worker
        if failed is not None:
            await self.discard(workers)
            if is_runtime_env_failure(failed):
                raise RuntimeEnvError(
                    f"a worker's runtime_env could not be set up: {first_lines(failed)}. Check "
                    "environment.pip and that the uploaded context_dir is intact; Ray's full "
                    "log is runtime_env_setup-*.log in the node's session logs"
                )
            raise ResourcesUnavailable(
                f"a new worker failed to start ({failed}); check the Ray worker logs"
            )
        self.created += len(workers)
        return workers

    async def _wait_ready(
        self, pg: Any, shape: Shape, timeout: float, interrupt: asyncio.Event | None
    ) -> bool:
        """True once the placement group is placed; False after ``timeout`` or as soon as
        ``interrupt`` fires (slots came back: the caller takes idle workers instead)."""
        first = min(1.0, timeout)
        if await ready_or(pg, first, interrupt):
            return True
        if interrupt is not None and interrupt.is_set():
            return False
        # Idle workers of other shapes hold slots; give them up before waiting long. Only
        # when the free resources cannot hold the group: on a busy machine placing a group
        # may take longer than the first wait, and killing warm workers then wins nothing.
        others = [s for s in self._idle if s != shape and self._idle[s]]
        if others and not await asyncio.to_thread(free_resources_hold, pg.bundle_specs):
            for other in others:
                await self.trim(keep=0, shape=other)
        return await ready_or(pg, max(0.0, timeout - first), interrupt)

    # -- giving back --------------------------------------------------------------------

    async def release(
        self, workers: Iterable[PooledWorker], *, reuse: bool, owner: str | None = None
    ) -> None:
        """Return workers after a trial: reset and kept idle when ``reuse`` and they reset
        cleanly, killed otherwise.

        ``owner`` (the releasing group's run key) settles hand-overs: a worker another trial
        has claimed from ``owner`` is that trial's now and is left alone; a claimed worker
        that its claimant returns before the old run let go of it goes back to that run."""
        workers = [w for w in workers if self._settle_owner(w, owner)]
        if not workers:
            return
        if not reuse:
            await self.discard(workers)
            return
        results = await asyncio.gather(
            *(asyncio.wait_for(w.handle.finish.remote(), FINISH_TIMEOUT_S) for w in workers),
            return_exceptions=True,
        )
        for worker, clean in zip(workers, results, strict=True):
            if clean is True:
                worker.trials += 1
                self._idle.setdefault(worker.shape, []).append(worker)
            else:
                self._kill(worker)
        self._slots_freed()
        await self._enforce_cap()

    def _settle_owner(self, worker: PooledWorker, owner: str | None) -> bool:
        """Whether ``owner`` releasing ``worker`` really returns it to the pool."""
        if owner is not None and worker.owner is not None and worker.owner != owner:
            if worker.after == owner:
                worker.previous_done = True  # claimed from us: the claimant's now
            return False
        for ws in self._offered.values():
            if worker in ws:
                ws.remove(worker)
        if worker.after is not None and not worker.previous_done:
            # The claimant gives it back while the run it was to follow may still hold it
            # (that run did not end in time, or the claimant failed): that run's group has
            # it again and releases it when the run is over.
            worker.owner, worker.after = worker.after, None
            return False
        worker.owner = worker.after = None
        return True

    async def discard(self, workers: Iterable[PooledWorker]) -> None:
        for worker in workers:
            self._kill(worker)

    async def trim(self, *, keep: int = 0, shape: Shape | None = None) -> int:
        """Kill idle workers (of ``shape``, or all) until at most ``keep`` remain; returns how
        many were killed. The scheduler calls it when idle slots are needed elsewhere."""
        shapes = [shape] if shape is not None else list(self._idle)
        killed = 0
        for s in shapes:
            idle = self._idle.get(s, [])
            idle.sort(key=lambda w: w.serial)
            while len(idle) > keep:
                self._kill(idle.pop(0))
                killed += 1
        return killed

    async def _enforce_cap(self) -> None:
        everyone = sorted((w for ws in self._idle.values() for w in ws), key=lambda w: w.serial)
        excess = len(everyone) - self.max_idle
        for worker in everyone[: max(0, excess)]:
            self._idle[worker.shape].remove(worker)
            self._kill(worker)

    async def close(self) -> None:
        """End every worker this pool started, idle or still lent to a trial (a trial that
        was not shut down must not keep its slots after the pool is gone)."""
        await self.trim(keep=0)
        for worker in list(self._live.values()):
            self._kill(worker)

    def _kill(self, worker: PooledWorker) -> None:
        for ws in (*self._idle.values(), *self._offered.values()):
            if worker in ws:
                ws.remove(worker)
        self._forget(worker)

    def _forget(self, worker: PooledWorker) -> None:
        if self._live.pop(worker.serial, None) is not None:
            self._kill_handle(worker.handle, worker.pg_key)

    def _kill_handle(self, handle: Any, pg_key: int) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        with contextlib.suppress(Exception):  # already dead is fine
            ray.kill(handle, no_restart=True)
        self._slots_freed()
        self._pg_live[pg_key] -= 1
        if self._pg_live[pg_key] <= 0:
            pg = self._pgs.pop(pg_key, None)
            self._pg_live.pop(pg_key, None)
            if pg is not None:
                # A placement group on a lost node is gone already.
                with contextlib.suppress(Exception):
                    remove_placement_group(pg)
